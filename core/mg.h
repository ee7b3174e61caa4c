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

/* The value of hex digit c (either case), or -1. */
static inline int mg_hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* xorshift64*: a thread's own generator (*s is its state; 0 is replaced by a
 * fixed seed); quality enough to spread picks and jitter waits. */
static inline uint64_t mg_rand(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545f4914f6cdd1dull;
}

/* A 64-bit hash of len bytes, 8 at a time (a multiply-and-shift mix per word),
 * chained from seed: for hash tables and consistent hashing, not against an
 * adversary (unkeyed). The same in every process. */
static inline uint64_t mg_hash_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}
static inline uint64_t mg_hash_bytes(const void *p, size_t len, uint64_t seed) {
  const unsigned char *b = len ? (const unsigned char *)p : (const unsigned char *)"";
  uint64_t h = seed ^ ((uint64_t)len * 0x9e3779b97f4a7c15ull), w;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    memcpy(&w, b + i, 8);
    h = mg_hash_mix(h ^ w) + 0x6d61676c65766b79ull;
  }
  if (i < len) {
    w = 0;
    memcpy(&w, b + i, len - i);
    h = mg_hash_mix(h ^ w ^ ((uint64_t)(len - i) << 56)) + 0x6d61676c65766b79ull;
  }
  return mg_hash_mix(h);
}

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
