/* core/arena.c and core/buf.c: the per-request allocator and output queues. */
#include <stdint.h>

#include "../arena.h"
#include "../buf.h"
#include "test.h"

static void arena_aligns_and_spans_chunks(void) {
  mg_arena_t a;
  mg_arena_init(&a);
  char *p = mg_arena_alloc(&a, 3);
  char *q = mg_arena_alloc(&a, 5);
  CHECK(p && q && ((uintptr_t)q % 8) == 0 && q - p == 8);
  char *big = mg_arena_alloc(&a, 100000); /* larger than a chunk */
  CHECK(big != NULL);
  memset(big, 1, 100000);
  char *s = mg_arena_strdup(&a, "hello", 5);
  CHECK(s && strcmp(s, "hello") == 0);
  mg_arena_reset(&a);
  CHECK(mg_arena_alloc(&a, 16) != NULL);
  mg_arena_dispose(&a);
  CHECK(a.head == NULL);
}

static void outq_appends_moves_and_counts(void) {
  mg_outq_t a, b;
  mg_outq_init(&a, NULL, NULL);
  mg_outq_init(&b, NULL, NULL);
  char big[40000];
  memset(big, 'x', sizeof(big));
  CHECK(mg_outq_append(&a, "head", 4) == 0);
  CHECK(mg_outq_append(&a, big, sizeof(big)) == 0);
  CHECK(mg_outq_size(&a) == 40004);
  CHECK(mg_outq_append(&b, "42-x", 4) == 0);
  mg_outq_move(&b, &a);
  CHECK(mg_outq_size(&a) == 0 && a.head == NULL);
  CHECK(mg_outq_size(&b) == 40008);
  /* the bytes come out in order */
  size_t off = 0;
  char first[9] = { 0 };
  for (mg_block_t *k = b.head; k && off < 8; k = k->next)
    for (size_t i = 0; i < k->len && off < 8; i++) first[off++] = k->data[i];
  CHECK(strcmp(first, "42-xhead") == 0);
  CHECK(mg_outq_flush(&b) == 0); /* no stream: nothing submitted */
  CHECK(mg_outq_size(&b) == 40008);
  mg_outq_dispose(&b);
  CHECK(mg_outq_size(&b) == 0);
}

static void outq_flags_high_water(void) {
  mg_outq_t q;
  mg_outq_init(&q, NULL, NULL);
  static char chunk[MG_HIGH_WATER];
  CHECK(mg_outq_append(&q, chunk, sizeof(chunk)) == 0);
  CHECK(!mg_outq_full(&q));
  CHECK(mg_outq_append(&q, "x", 1) == 0);
  CHECK(mg_outq_full(&q));
  mg_outq_dispose(&q);
}

static void outq_appends_decimals(void) {
  mg_outq_t q;
  mg_outq_init(&q, NULL, NULL);
  CHECK(mg_outq_append_uint(&q, 0) == 0);
  CHECK(mg_outq_append(&q, ",", 1) == 0);
  CHECK(mg_outq_append_uint(&q, 7) == 0);
  CHECK(mg_outq_append(&q, ",", 1) == 0);
  CHECK(mg_outq_append_uint(&q, 1234567890123ULL) == 0);
  CHECK(mg_outq_append(&q, ",", 1) == 0);
  CHECK(mg_outq_append_uint(&q, UINT64_MAX) == 0);
  const char *want = "0,7,1234567890123,18446744073709551615";
  CHECK(q.head && q.head->len == strlen(want) && memcmp(q.head->data, want, strlen(want)) == 0);
  mg_outq_dispose(&q);
}

int main(void) {
  static const t_case_t cases[] = {
    T(arena_aligns_and_spans_chunks), T(outq_appends_moves_and_counts), T(outq_flags_high_water),
    T(outq_appends_decimals),
  };
  return t_run("arena+buf", cases, sizeof(cases) / sizeof(cases[0]));
}
