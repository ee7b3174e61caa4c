/* The HTTP/1 codec (core/h1.h) as upstream.c drives it over an upstream's
 * response stream, the upstream closing at the end: see h1_driver.h for what is
 * checked. Both runs, whole and cut, must agree event for event.
 *
 * fuzz-options: -max_len=8192 -dict=spec/fuzz/http.dict */
#include "h1_driver.h"

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) { return h1d_fuzz(p, n, 1); }
