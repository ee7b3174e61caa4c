/* Compiled regular expressions (PCRE2, 8-bit, JIT when the platform has it) for the
 * policies (issue 14: the headers policy's path rewrite; the WAF's rules later).
 *
 * A pattern is compiled once, at config load, and matched per request. Each object
 * owns its match data, so one object is used by one thread at a time (a worker's
 * Lua state builds its own at load, as for core/cidr.h). A leaf: mg.h and libpcre2-8. */
#ifndef MG_RX_H
#define MG_RX_H

#include <stddef.h>

typedef struct mg_rx_s mg_rx_t;

/* Compiles `pat` (len bytes; NUL bytes allowed) with PCRE2_UTF off and the given
 * option bits (MG_RX_CASELESS). Returns the object (the caller owns it: mg_rx_free)
 * or NULL: then `err` holds PCRE2's message (NUL-ended, cut to errlen) and *erroff
 * the byte offset in the pattern where it failed (0 when out of memory). */
#define MG_RX_CASELESS 1u
mg_rx_t *mg_rx_new(const char *pat, size_t len, unsigned flags, char *err, size_t errlen, size_t *erroff);
void mg_rx_free(mg_rx_t *rx);
/* The number of capture groups (not counting group 0). */
int mg_rx_groups(const mg_rx_t *rx);
/* 1 when the JIT compiled it (else it runs in PCRE2's interpreter). */
int mg_rx_jit(const mg_rx_t *rx);
/* Matches `s` (len bytes). On a match returns how many groups were set plus one
 * (group 0 counts) and fills ovec[2*i], ovec[2*i+1] with the start/end offsets of
 * group i for i < min(groups + 1, n_pairs) (an unset group: both SIZE_MAX). 0: no
 * match. Negative: a PCRE2 error (match limit and the like). */
int mg_rx_match(mg_rx_t *rx, const char *s, size_t len, size_t *ovec, size_t n_pairs);

#endif
