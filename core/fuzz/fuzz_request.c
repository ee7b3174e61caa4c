/* The HTTP/1 codec (core/h1.h) as conn.c drives it over a client's request
 * stream: see h1_driver.h for what is checked. A client's bytes arrive cut
 * anywhere, so the stream is parsed whole and cut at points the input chooses,
 * and both runs must agree event for event.
 *
 * fuzz-options: -max_len=8192 -dict=spec/fuzz/http.dict */
#include "h1_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) { return h1d_fuzz(p, n, 0); }
