/* Types shared by every component of the core: slices, error codes, limits.
 * Types only (plus tiny inline helpers) so that any header may include it. */
#ifndef MG_H
#define MG_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A slice: not NUL-terminated, owned by whoever owns the memory it points into
 * (the request arena, the config, a static string). Same layout as the FFI type. */
typedef struct {
  const char *p;
  size_t len;
} mg_str_t;

#define MG_STR(lit) ((mg_str_t){ (lit), sizeof(lit) - 1 })

static inline int mg_str_eq(mg_str_t a, mg_str_t b) {
  return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}
int mg_str_caseeq(mg_str_t a, mg_str_t b); /* ASCII case-insensitive */

/* Error codes: 0 or negative. libuv's UV_E* values pass through unchanged; ours are
 * below -10000 so they never collide with errno-based codes. */
enum {
  MG_OK = 0,
  MG_ENOMEM = -10001,
  MG_ECONFIG = -10002,
  MG_EPARSE = -10003,
  MG_ELIMIT = -10004,
  MG_EINVAL = -10005, /* malformed input (a path, a Host, an address): the caller answers 400 */
};

typedef struct mg_worker_s mg_worker_t;
typedef struct mg_conn_s mg_conn_t;
typedef struct mg_req_s mg_req_t;
typedef struct mg_upconn_s mg_upconn_t;
typedef struct mg_gen_s mg_gen_t;
typedef struct mg_pool_s mg_pool_t;

/* Read buffer size: each worker owns one, shared by every read it does (the data is
 * parsed or copied before the read callback returns), so an idle connection holds
 * no buffer at all. */
#define MG_READ_BUF (64 * 1024)
/* A side whose peer has more than this queued for writing stops reading. */
#define MG_HIGH_WATER (256 * 1024)
#define MG_LOW_WATER (64 * 1024)

/* v in decimal, written at the end of d (MG_U64_DEC bytes): where the digits
 * start (they end at d + MG_U64_DEC). No printf on the request path. */
#define MG_U64_DEC 20
static inline char *mg_u64_dec(char *d, uint64_t v) {
  char *p = d + MG_U64_DEC;
  do {
    *--p = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  return p;
}

#endif
