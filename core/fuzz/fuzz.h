/* Shared by the libFuzzer targets in core/fuzz/ (one executable per fuzz_*.c, built
 * with MG_FUZZ by `scripts/build fuzz` and run by scripts/fuzz). A target asserts
 * properties of the real core functions with FUZZ_CHECK: a failed property aborts,
 * and libFuzzer keeps the input as a crash artifact.
 *
 * A target may carry one line "fuzz-options: <libFuzzer flags>" in a comment
 * (-max_len=..., -dict=spec/fuzz/...); scripts/fuzz passes them on. */
#ifndef MG_FUZZ_H
#define MG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                          \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                    \
    }                                                                             \
  } while (0)

/* A copy of p[0..n) in a block of exactly n bytes (at least 1 allocated), so that
 * ASan reports a read past the end of a slice, not only past the end of the whole
 * input. The caller frees it. */
static inline char *fz_dup(const void *p, size_t n) {
  char *c = malloc(n ? n : 1);
  FUZZ_CHECK(c != NULL);
  if (n) memcpy(c, p, n);
  return c;
}

/* A growable byte string: what a run saw, written out so two runs over the same
 * bytes can be compared with one memcmp. */
typedef struct {
  unsigned char *p;
  size_t len, cap;
} fz_buf_t;

static inline void fz_put(fz_buf_t *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    unsigned char *q = realloc(b->p, cap);
    FUZZ_CHECK(q != NULL);
    b->p = q;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, p, n);
  b->len += n;
}

static inline void fz_put_u64(fz_buf_t *b, uint64_t v) { fz_put(b, &v, sizeof(v)); }

/* A length, then the bytes: a transcript with no ambiguity between fields. */
static inline void fz_put_str(fz_buf_t *b, const void *p, size_t n) {
  fz_put_u64(b, n);
  fz_put(b, p, n);
}

static inline int fz_eq(const fz_buf_t *a, const fz_buf_t *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static inline void fz_free(fz_buf_t *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

/* The control bytes at the front of an input (split points, flags): taken one at a
 * time, 0 once the input is used up. */
typedef struct {
  const uint8_t *p;
  size_t n;
} fz_in_t;

static inline uint8_t fz_u8(fz_in_t *in) {
  if (in->n == 0) return 0;
  in->n--;
  return *in->p++;
}

static inline uint16_t fz_u16(fz_in_t *in) {
  uint16_t lo = fz_u8(in);
  return (uint16_t)(lo | (uint16_t)fz_u8(in) << 8);
}

#endif
