/* core/shdict.c: values, add/incr/delete, TTL, LRU eviction, limits, the registry and
 * concurrent use. Dicts smaller than 2 * MG_SHDICT_MIN_SHARD_BYTES have one shard, so
 * the eviction tests below know exactly which entries share an LRU list. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../shdict.h"
#include "test.h"

#define SMALL 1000 /* one shard */
#define BIG (1 << 20)

static void sleep_s(double s) {
  struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
  while (nanosleep(&ts, &ts) != 0) {}
}

static int get_num(mg_shdict_t *d, const char *k, size_t klen, double *num) {
  int type = -1;
  CHECK(mg_shdict_get(d, k, klen, &type, num, NULL, 0, NULL) == 0);
  return type;
}

static void stores_and_reads_numbers_and_strings(void) {
  mg_shdict_t *d = mg_shdict_open("values", BIG);
  CHECK(d != NULL);
  int ev = -1, type = -1;
  double num = -1;
  char buf[64];
  size_t len = 99;

  CHECK(mg_shdict_set(d, "n", 1, MG_SHD_NUMBER, 3.5, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 0);
  CHECK(mg_shdict_get(d, "n", 1, &type, &num, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_NUMBER && num == 3.5 && len == 0);

  CHECK(mg_shdict_set(d, "s", 1, MG_SHD_STRING, 0, "hello", 5, 0, NULL) == 0);
  CHECK(mg_shdict_get(d, "s", 1, &type, &num, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 5 && memcmp(buf, "hello", 5) == 0);

  CHECK(mg_shdict_set(d, "e", 1, MG_SHD_STRING, 0, "", 0, 0, NULL) == 0);
  len = 99;
  CHECK(mg_shdict_get(d, "e", 1, &type, &num, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 0);

  /* binary keys: a NUL inside, and keys that differ only after it */
  CHECK(mg_shdict_set(d, "a\0b", 3, MG_SHD_STRING, 0, "x\0y", 3, 0, NULL) == 0);
  CHECK(mg_shdict_set(d, "a\0c", 3, MG_SHD_NUMBER, 7, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_get(d, "a\0b", 3, &type, &num, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 3 && memcmp(buf, "x\0y", 3) == 0);
  CHECK(get_num(d, "a\0c", 3, &num) == MG_SHD_NUMBER && num == 7);
  CHECK(get_num(d, "a", 1, &num) == MG_SHD_NIL && num == 0);

  /* overwrite: number -> string -> longer string -> number, and a miss */
  CHECK(mg_shdict_set(d, "n", 1, MG_SHD_STRING, 0, "abc", 3, 0, NULL) == 0);
  CHECK(mg_shdict_get(d, "n", 1, &type, &num, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 3 && memcmp(buf, "abc", 3) == 0);
  char long_val[200];
  memset(long_val, 'z', sizeof(long_val));
  CHECK(mg_shdict_set(d, "n", 1, MG_SHD_STRING, 0, long_val, 200, 0, NULL) == 0);
  char big[256];
  CHECK(mg_shdict_get(d, "n", 1, &type, &num, big, sizeof(big), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 200 && memcmp(big, long_val, 200) == 0);
  CHECK(mg_shdict_set(d, "n", 1, MG_SHD_NUMBER, -1, NULL, 0, 0, NULL) == 0);
  CHECK(get_num(d, "n", 1, &num) == MG_SHD_NUMBER && num == -1);
  CHECK(get_num(d, "missing", 7, &num) == MG_SHD_NIL);

  /* set with type NIL deletes */
  CHECK(mg_shdict_set(d, "s", 1, MG_SHD_NIL, 0, NULL, 0, 0, NULL) == 0);
  CHECK(get_num(d, "s", 1, &num) == MG_SHD_NIL);
  CHECK(mg_shdict_count(d) == 4); /* n, e, a\0b, a\0c */
}

static void get_with_small_buffer_reports_full_length(void) {
  mg_shdict_t *d = mg_shdict_open("smallbuf", BIG);
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_STRING, 0, "hello world", 11, 0, NULL) == 0);
  char buf[5] = { 0 };
  int type = -1;
  size_t len = 0;
  CHECK(mg_shdict_get(d, "k", 1, &type, NULL, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 11 && memcmp(buf, "hello", 5) == 0);
  len = 0;
  CHECK(mg_shdict_get(d, "k", 1, &type, NULL, NULL, 0, &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 11);
}

static void add_refuses_a_live_key(void) {
  mg_shdict_t *d = mg_shdict_open("add", BIG);
  double num = 0;
  CHECK(mg_shdict_add(d, "k", 1, MG_SHD_NUMBER, 1, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_add(d, "k", 1, MG_SHD_NUMBER, 2, NULL, 0, 0, NULL) == MG_SHDICT_EEXISTS);
  CHECK(mg_shdict_add(d, "k", 1, MG_SHD_STRING, 0, "x", 1, 0, NULL) == MG_SHDICT_EEXISTS);
  CHECK(get_num(d, "k", 1, &num) == MG_SHD_NUMBER && num == 1);
  CHECK(mg_shdict_delete(d, "k", 1) == 0);
  CHECK(mg_shdict_add(d, "k", 1, MG_SHD_NUMBER, 3, NULL, 0, 0, NULL) == 0);
  CHECK(get_num(d, "k", 1, &num) == MG_SHD_NUMBER && num == 3);
}

static void incr_adds_and_creates_only_with_init(void) {
  mg_shdict_t *d = mg_shdict_open("incr", BIG);
  double out = -1, num = 0;
  CHECK(mg_shdict_incr(d, "c", 1, 1, 0, 0, 0, &out) == MG_SHDICT_ENOTFOUND);
  CHECK(out == -1);
  CHECK(get_num(d, "c", 1, &num) == MG_SHD_NIL);
  CHECK(mg_shdict_incr(d, "c", 1, 2, 1, 10, 0, &out) == 0);
  CHECK(out == 12);
  CHECK(mg_shdict_incr(d, "c", 1, 5, 0, 0, 0, &out) == 0);
  CHECK(out == 17);
  CHECK(mg_shdict_incr(d, "c", 1, -20, 1, 100, 0, &out) == 0); /* init ignored: exists */
  CHECK(out == -3);
  CHECK(mg_shdict_incr(d, "c", 1, 0.5, 0, 0, 0, &out) == 0);
  CHECK(out == -2.5);
  CHECK(get_num(d, "c", 1, &num) == MG_SHD_NUMBER && num == -2.5);
}

static void incr_on_a_string_is_etype(void) {
  mg_shdict_t *d = mg_shdict_open("incr-type", BIG);
  double out = -1;
  char buf[8];
  size_t len = 0;
  int type = -1;
  CHECK(mg_shdict_set(d, "s", 1, MG_SHD_STRING, 0, "12", 2, 0, NULL) == 0);
  CHECK(mg_shdict_incr(d, "s", 1, 1, 0, 0, 0, &out) == MG_SHDICT_ETYPE);
  CHECK(mg_shdict_incr(d, "s", 1, 1, 1, 0, 0, &out) == MG_SHDICT_ETYPE);
  CHECK(out == -1);
  CHECK(mg_shdict_get(d, "s", 1, &type, NULL, buf, sizeof(buf), &len) == 0);
  CHECK(type == MG_SHD_STRING && len == 2 && memcmp(buf, "12", 2) == 0);
}

static void delete_removes_and_reports_absent_keys(void) {
  mg_shdict_t *d = mg_shdict_open("delete", BIG);
  double num;
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_NUMBER, 1, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_set(d, "j", 1, MG_SHD_NUMBER, 2, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_delete(d, "k", 1) == 0);
  CHECK(get_num(d, "k", 1, &num) == MG_SHD_NIL);
  CHECK(mg_shdict_delete(d, "k", 1) == MG_SHDICT_ENOTFOUND);
  CHECK(get_num(d, "j", 1, &num) == MG_SHD_NUMBER && num == 2);
  CHECK(mg_shdict_count(d) == 1);
  mg_shdict_flush_all(d);
  CHECK(mg_shdict_count(d) == 0);
  CHECK(get_num(d, "j", 1, &num) == MG_SHD_NIL);
  CHECK(mg_shdict_set(d, "j", 1, MG_SHD_NUMBER, 3, NULL, 0, 0, NULL) == 0); /* usable after */
  CHECK(get_num(d, "j", 1, &num) == MG_SHD_NUMBER && num == 3);
}

static void entries_expire_after_their_ttl(void) {
  mg_shdict_t *d = mg_shdict_open("ttl", BIG);
  double num = 0, out = 0;
  CHECK(mg_shdict_set(d, "t", 1, MG_SHD_NUMBER, 1, NULL, 0, 0.05, NULL) == 0);
  CHECK(mg_shdict_set(d, "forever", 7, MG_SHD_NUMBER, 2, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_incr(d, "c", 1, 1, 1, 0, 0.05, &out) == 0 && out == 1);
  CHECK(mg_shdict_incr(d, "c", 1, 1, 0, 0, 0, &out) == 0 && out == 2); /* keeps its ttl */
  CHECK(get_num(d, "t", 1, &num) == MG_SHD_NUMBER && num == 1);
  CHECK(mg_shdict_count(d) == 3);
  sleep_s(0.1);
  CHECK(get_num(d, "t", 1, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "c", 1, &num) == MG_SHD_NIL);
  CHECK(mg_shdict_incr(d, "c", 1, 1, 0, 0, 0, &out) == MG_SHDICT_ENOTFOUND);
  CHECK(get_num(d, "forever", 7, &num) == MG_SHD_NUMBER && num == 2);
  CHECK(mg_shdict_count(d) == 1);
  /* expired entries do not block add, and a later set clears the ttl */
  CHECK(mg_shdict_set(d, "t2", 2, MG_SHD_NUMBER, 1, NULL, 0, 0.05, NULL) == 0);
  sleep_s(0.1);
  CHECK(mg_shdict_add(d, "t2", 2, MG_SHD_NUMBER, 5, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_delete(d, "forever", 7) == 0);
  CHECK(mg_shdict_set(d, "t3", 2, MG_SHD_NUMBER, 1, NULL, 0, 0.05, NULL) == 0);
  CHECK(mg_shdict_set(d, "t3", 2, MG_SHD_NUMBER, 2, NULL, 0, 0, NULL) == 0);
  sleep_s(0.1);
  CHECK(get_num(d, "t2", 2, &num) == MG_SHD_NUMBER && num == 5);
  CHECK(get_num(d, "t3", 2, &num) == MG_SHD_NUMBER && num == 2);
}

static void evicts_least_recently_used_entries(void) {
  /* keys "k0".."k13", numbers: each costs OVERHEAD + 2; SMALL holds `fit` of them */
  mg_shdict_t *d = mg_shdict_open("lru", SMALL);
  const size_t cost = MG_SHDICT_ENTRY_OVERHEAD + 2;
  const int fit = (int)(SMALL / cost);
  CHECK(fit >= 5 && fit <= 20);
  char k[8];
  double num;
  int ev = -1;
  for (int i = 0; i < fit; i++) {
    snprintf(k, sizeof(k), "k%c", 'a' + i);
    CHECK(mg_shdict_set(d, k, 2, MG_SHD_NUMBER, i, NULL, 0, 0, &ev) == 0);
    CHECK(ev == 0);
  }
  CHECK(mg_shdict_count(d) == (size_t)fit);
  CHECK(get_num(d, "ka", 2, &num) == MG_SHD_NUMBER && num == 0); /* ka is now the newest */
  /* two more: kb then kc (the least recently used) make room */
  CHECK(mg_shdict_set(d, "y1", 2, MG_SHD_NUMBER, 100, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 1);
  CHECK(mg_shdict_set(d, "y2", 2, MG_SHD_NUMBER, 101, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 1);
  CHECK(mg_shdict_count(d) == (size_t)fit);
  CHECK(get_num(d, "kb", 2, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "kc", 2, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "ka", 2, &num) == MG_SHD_NUMBER && num == 0);
  CHECK(get_num(d, "kd", 2, &num) == MG_SHD_NUMBER && num == 3);
  CHECK(get_num(d, "y1", 2, &num) == MG_SHD_NUMBER && num == 100);
  CHECK(get_num(d, "y2", 2, &num) == MG_SHD_NUMBER && num == 101);
  /* overwriting an existing key evicts nothing */
  CHECK(mg_shdict_set(d, "y1", 2, MG_SHD_NUMBER, 102, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 0);
  /* a string needing three entries' room evicts the three least recent (ke, kf, kg) */
  char v[3 * MG_SHDICT_ENTRY_OVERHEAD];
  memset(v, 'v', sizeof(v));
  size_t slen = 2 * cost; /* costs OVERHEAD + 2 + slen = 3 * cost */
  CHECK(mg_shdict_set(d, "zz", 2, MG_SHD_STRING, 0, v, slen, 0, &ev) == 0);
  CHECK(ev == 1);
  CHECK(mg_shdict_count(d) == (size_t)fit - 2);
  CHECK(get_num(d, "ke", 2, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "kf", 2, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "kg", 2, &num) == MG_SHD_NIL);
  CHECK(get_num(d, "kh", 2, &num) == MG_SHD_NUMBER && num == 7);
}

static void expired_entries_are_reclaimed_without_an_eviction(void) {
  mg_shdict_t *d = mg_shdict_open("lru-ttl", SMALL);
  const int fit = (int)(SMALL / (MG_SHDICT_ENTRY_OVERHEAD + 2));
  char k[8];
  int ev = -1;
  for (int i = 0; i < fit; i++) {
    snprintf(k, sizeof(k), "k%c", 'a' + i);
    CHECK(mg_shdict_set(d, k, 2, MG_SHD_NUMBER, i, NULL, 0, i < 2 ? 0.05 : 0, &ev) == 0);
  }
  sleep_s(0.1);
  CHECK(mg_shdict_set(d, "y1", 2, MG_SHD_NUMBER, 1, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 0); /* the write first reclaimed expired ka and kb from the tail */
  CHECK(mg_shdict_set(d, "y2", 2, MG_SHD_NUMBER, 1, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 0);
  CHECK(mg_shdict_set(d, "y3", 2, MG_SHD_NUMBER, 1, NULL, 0, 0, &ev) == 0);
  CHECK(ev == 1); /* kc was live */
  CHECK(mg_shdict_count(d) == (size_t)fit);
}

static void refuses_entries_bigger_than_a_shard(void) {
  mg_shdict_t *d = mg_shdict_open("toobig", SMALL);
  static char v[BIG / 8];
  memset(v, 'x', sizeof(v));
  double out;
  int ev = -1;
  CHECK(mg_shdict_set(d, "a", 1, MG_SHD_NUMBER, 1, NULL, 0, 0, NULL) == 0);
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_STRING, 0, v, SMALL, 0, &ev) == MG_SHDICT_ETOOBIG);
  CHECK(mg_shdict_add(d, "k", 1, MG_SHD_STRING, 0, v, SMALL - MG_SHDICT_ENTRY_OVERHEAD, 0,
                      &ev) == MG_SHDICT_ETOOBIG);
  CHECK(ev == 0);
  CHECK(mg_shdict_count(d) == 1);
  /* exactly one shard's worth fits, evicting everything else */
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_STRING, 0, v, SMALL - MG_SHDICT_ENTRY_OVERHEAD - 1,
                      0, &ev) == 0);
  CHECK(ev == 1);
  CHECK(mg_shdict_count(d) == 1);
  /* a key alone can be too big for incr too */
  CHECK(mg_shdict_incr(d, v, SMALL, 1, 1, 0, 0, &out) == MG_SHDICT_ETOOBIG);
  /* a 1 MiB dict has 16 shards of 64 KiB: capacity is per shard */
  mg_shdict_t *b = mg_shdict_open("toobig-sharded", BIG);
  CHECK(mg_shdict_set(b, "k", 1, MG_SHD_STRING, 0, v, BIG / 16, 0, NULL) == MG_SHDICT_ETOOBIG);
  CHECK(mg_shdict_set(b, "k", 1, MG_SHD_STRING, 0, v, BIG / 32, 0, NULL) == 0);
}

static void rejects_invalid_arguments(void) {
  mg_shdict_t *d = mg_shdict_open("inval", BIG);
  double out;
  CHECK(mg_shdict_set(d, "k", 1, 7, 0, NULL, 0, 0, NULL) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_NUMBER, 0, NULL, 0, -1, NULL) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_STRING, 0, NULL, 3, 0, NULL) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_incr(d, "k", 1, 1, 1, 0, -0.5, &out) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_count(d) == 0);
  CHECK(strcmp(mg_shdict_strerror(MG_SHDICT_ETOOBIG), "too big") == 0);
  CHECK(strcmp(mg_shdict_strerror(-1), "unknown error") == 0);
}

static void open_twice_returns_the_same_dict_and_find_looks_up_by_name(void) {
  mg_shdict_t *d = mg_shdict_open("reg", BIG);
  CHECK(d != NULL);
  double num;
  CHECK(mg_shdict_set(d, "k", 1, MG_SHD_NUMBER, 42, NULL, 0, 0, NULL) == 0);
  mg_shdict_t *again = mg_shdict_open("reg", 10); /* a reload: capacity ignored */
  CHECK(again == d);
  CHECK(get_num(again, "k", 1, &num) == MG_SHD_NUMBER && num == 42);
  CHECK(mg_shdict_set(again, "big", 3, MG_SHD_STRING, 0, "0123456789", 10, 0, NULL) == 0);
  CHECK(mg_shdict_find("reg", 3) == d);
  CHECK(mg_shdict_find("regX", 3) == d); /* a slice: only len bytes count */
  CHECK(mg_shdict_find("re", 2) == NULL);
  CHECK(mg_shdict_find("nope", 4) == NULL);
  mg_shdict_t *other = mg_shdict_open("reg2", BIG);
  CHECK(other != NULL && other != d);
  CHECK(mg_shdict_find("reg2", 4) == other);
  CHECK(get_num(other, "k", 1, &num) == MG_SHD_NIL);
}

/* ---- threads ----------------------------------------------------------------------- */

#define THREADS 4
#define INCRS 100000

static void *incr_loop(void *arg) {
  mg_shdict_t *d = arg;
  double out;
  for (int i = 0; i < INCRS; i++) {
    if (mg_shdict_incr(d, "hits", 4, 1, 1, 0, 0, &out) != 0) return (void *)1;
  }
  return NULL;
}

static void concurrent_incr_counts_exactly(void) {
  mg_shdict_t *d = mg_shdict_open("threads", BIG);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, incr_loop, d) == 0);
  for (int i = 0; i < THREADS; i++) {
    void *r = (void *)1;
    CHECK(pthread_join(t[i], &r) == 0);
    CHECK(r == NULL);
  }
  double num = 0;
  CHECK(get_num(d, "hits", 4, &num) == MG_SHD_NUMBER && num == THREADS * INCRS);
}

/* ---- token bucket (mg_shdict_gcra) ------------------------------------------------ */

static void gcra_gives_the_burst_then_one_token_per_interval(void) {
  mg_shdict_t *d = mg_shdict_open("gcra", BIG);
  double wait = -1, rem = -1;
  /* 3 tokens, one every 0.2 s */
  for (int i = 0; i < 3; i++) {
    CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 3, &wait, &rem) == 0);
    CHECK(rem == 2 - i);
    CHECK(wait > 0.2 * (i + 1) - 0.01 && wait <= 0.2 * (i + 1) + 0.01); /* full again in */
  }
  CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 3, &wait, &rem) == 1);
  CHECK(rem == 0 && wait > 0.18 && wait <= 0.2 + 0.01); /* the next token */
  CHECK(mg_shdict_gcra(d, "other", 5, 0.2, 3, &wait, &rem) == 0); /* keys apart */
  sleep_s(0.25);
  CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 3, &wait, &rem) == 0);
  CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 3, &wait, &rem) == 1);
  /* a string under the key, bad arguments */
  CHECK(mg_shdict_set(d, "s", 1, MG_SHD_STRING, 0, "x", 1, 0, NULL) == 0);
  CHECK(mg_shdict_gcra(d, "s", 1, 0.2, 3, &wait, &rem) == MG_SHDICT_ETYPE);
  CHECK(mg_shdict_gcra(d, "k", 1, 0, 3, &wait, &rem) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 0.5, &wait, &rem) == MG_SHDICT_EINVAL);
  CHECK(mg_shdict_gcra(d, "k", 1, 0.2, 3, NULL, &rem) == MG_SHDICT_EINVAL);
}

#define GCRA_BURST 1000
static void *gcra_loop(void *arg) {
  mg_shdict_t *d = arg;
  double wait, rem;
  intptr_t allowed = 0;
  for (int i = 0; i < 20000; i++) {
    int rc = mg_shdict_gcra(d, "bucket", 6, 3600, GCRA_BURST, &wait, &rem);
    if (rc < 0) return (void *)-1;
    if (rc == 0) allowed++;
  }
  return (void *)allowed;
}

static void concurrent_gcra_never_gives_more_than_the_bucket_holds(void) {
  mg_shdict_t *d = mg_shdict_open("gcra_threads", BIG);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, gcra_loop, d) == 0);
  intptr_t total = 0;
  for (int i = 0; i < THREADS; i++) {
    void *r = NULL;
    CHECK(pthread_join(t[i], &r) == 0);
    CHECK((intptr_t)r >= 0);
    total += (intptr_t)r;
  }
  CHECK(total == GCRA_BURST); /* one token an hour: none comes back meanwhile */
}

typedef struct {
  mg_shdict_t *d;
  unsigned seed;
  int bad;
} mixed_arg_t;

static void *mixed_loop(void *arg) {
  mixed_arg_t *a = arg;
  char key[16], val[300], buf[64];
  memset(val, 'v', sizeof(val));
  unsigned x = a->seed;
  for (int i = 0; i < 20000; i++) {
    x = x * 1103515245u + 12345u;
    int klen = snprintf(key, sizeof(key), "key%u", (x >> 8) % 500);
    int type = 0, ev;
    double num, out;
    size_t len;
    switch ((x >> 4) % 6) {
    case 0:
      if (mg_shdict_set(a->d, key, (size_t)klen, MG_SHD_STRING, 0, val, (x >> 12) % 300,
                        (x & 1) ? 0.01 : 0, &ev) != 0)
        a->bad++;
      break;
    case 1:
      if (mg_shdict_get(a->d, key, (size_t)klen, &type, &num, buf, sizeof(buf), &len) != 0)
        a->bad++;
      if (type == MG_SHD_STRING && (len >= 300 || (len && buf[0] != 'v'))) a->bad++;
      break;
    case 2: {
      int rc = mg_shdict_incr(a->d, key, (size_t)klen, 1, 1, 0, 0, &out);
      if (rc != 0 && rc != MG_SHDICT_ETYPE) a->bad++;
      break;
    }
    case 3: mg_shdict_delete(a->d, key, (size_t)klen); break;
    case 4:
      mg_shdict_add(a->d, key, (size_t)klen, MG_SHD_NUMBER, 1, NULL, 0, 0, &ev);
      break;
    default:
      if (i % 1000 == 0) mg_shdict_count(a->d);
      else mg_shdict_set(a->d, key, (size_t)klen, MG_SHD_NUMBER, i, NULL, 0, 0, &ev);
    }
  }
  return NULL;
}

static void concurrent_mixed_operations_stay_consistent(void) {
  /* 64 KiB over 16 shards: 500 keys with up to 300-byte values do not fit, so
   * threads evict each other's entries all the time */
  mg_shdict_t *d = mg_shdict_open("mixed", 64 * 1024);
  pthread_t t[THREADS];
  mixed_arg_t a[THREADS];
  for (int i = 0; i < THREADS; i++) {
    a[i] = (mixed_arg_t){ d, (unsigned)i * 7919u + 1, 0 };
    CHECK(pthread_create(&t[i], NULL, mixed_loop, &a[i]) == 0);
  }
  for (int i = 0; i < THREADS; i++) {
    CHECK(pthread_join(t[i], NULL) == 0);
    CHECK(a[i].bad == 0);
  }
  size_t n = mg_shdict_count(d);
  CHECK(n > 0 && n <= 64 * 1024 / (MG_SHDICT_ENTRY_OVERHEAD + 4));
}

/* ---- a value that grows and shrinks while another thread reads it ------------------ */

/* Three sizes around a 4 KiB first buffer (the Lua wrapper's), each filled with its
 * own byte: a read that mixed two values, or took bytes from beyond one, shows. */
static const size_t grow_sizes[] = { 100, 4000, 4097, 9000, 60000 };
#define GROW_SIZES (sizeof(grow_sizes) / sizeof(grow_sizes[0]))
#define GROW_ROUNDS 20000

typedef struct {
  mg_shdict_t *d;
  _Atomic int stop;
  long reads, retries, bad;
} grow_arg_t;

static void *grow_writer(void *arg) {
  grow_arg_t *a = arg;
  char *v = malloc(60000);
  for (int i = 0; i < GROW_ROUNDS && v; i++) {
    size_t k = (size_t)i % GROW_SIZES; /* small to big, then back to small */
    memset(v, 'a' + (int)k, grow_sizes[k]);
    if (mg_shdict_set(a->d, "v", 1, MG_SHD_STRING, 0, v, grow_sizes[k], 0, NULL) != 0) a->bad++;
  }
  free(v);
  a->stop = 1;
  return NULL;
}

/* A whole value: one of grow_sizes, every byte its fill byte. */
static int whole(const char *p, size_t len) {
  for (size_t k = 0; k < GROW_SIZES; k++) {
    if (len != grow_sizes[k]) continue;
    for (size_t i = 0; i < len; i++)
      if (p[i] != 'a' + (int)k) return 0;
    return 1;
  }
  return 0;
}

/* The reader does what the Lua wrapper does: a 4 KiB buffer first, and while the
 * reported length is bigger than the buffer, again with one of that length. Every
 * buffer is malloc'd to its exact size, so under ASan a copy past it is a report. */
static void *grow_reader(void *arg) {
  grow_arg_t *a = arg;
  while (!a->stop) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int type = -1;
    for (;;) {
      if (!buf || mg_shdict_get(a->d, "v", 1, &type, NULL, buf, cap, &len) != 0) {
        a->bad++;
        break;
      }
      if (type != MG_SHD_STRING) break; /* not set yet */
      if (len <= cap) {
        a->reads++;
        if (!whole(buf, len)) a->bad++;
        break;
      }
      /* did not fit: what was copied is the start of the value, exactly cap bytes */
      if (buf[0] < 'a' || buf[cap - 1] != buf[0]) a->bad++;
      a->retries++;
      free(buf);
      cap = len;
      buf = malloc(cap);
    }
    free(buf);
  }
  return NULL;
}

static void get_is_whole_while_another_thread_grows_the_value(void) {
  mg_shdict_t *d = mg_shdict_open("grow", BIG);
  grow_arg_t a = { .d = d };
  pthread_t w, r;
  CHECK(pthread_create(&r, NULL, grow_reader, &a) == 0);
  CHECK(pthread_create(&w, NULL, grow_writer, &a) == 0);
  CHECK(pthread_join(w, NULL) == 0);
  CHECK(pthread_join(r, NULL) == 0);
  CHECK(a.bad == 0);
  CHECK(a.reads > 0);
  printf("     (%ld whole reads, %ld retries with a bigger buffer)\n", a.reads, a.retries);
}

/* ---- keys chosen to collide ---------------------------------------------------------- */

/* The hash shdict.c used before SipHash, kept here only to show that the keys below
 * collide under it for every seed. Per 8-byte word w: x = h ^ f(w) with
 * f(w) = rotl(w * C1, 31) * C2, then h = rotl(x, 27) * 5 + C3. */
#define OLD_C1 0x87c37b91114253d5ULL
#define OLD_C2 0x4cf5ad432745937fULL
static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static uint64_t old_f(uint64_t w) { return rotl64(w * OLD_C1, 31) * OLD_C2; }

static uint64_t old_hash(uint64_t seed, const unsigned char *p, size_t len) {
  uint64_t h = seed ^ ((uint64_t)len * 0x9e3779b97f4a7c15ULL), w;
  for (; len >= 8; p += 8, len -= 8) {
    memcpy(&w, p, 8);
    h ^= old_f(w);
    h = rotl64(h, 27) * 5 + 0x52dce729;
  }
  if (len) {
    w = 0;
    memcpy(&w, p, len);
    h ^= old_f(w);
    h = rotl64(h, 27) * 5 + 0x52dce729;
  }
  h ^= h >> 33; /* fmix64 */
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

static uint64_t inverse_odd(uint64_t c) { /* c * inverse_odd(c) == 1 mod 2^64 */
  uint64_t x = c; /* right in the low 3 bits; each Newton step doubles that */
  for (int i = 0; i < 5; i++) x *= 2 - c * x;
  return x;
}

static uint64_t old_f_inverse(uint64_t y) {
  y *= inverse_odd(OLD_C2);
  return rotl64(y, 64 - 31) * inverse_odd(OLD_C1);
}

/* Why they collide: f is a bijection, so for any word a there is a' with
 * f(a') = f(a) ^ 2^36, whatever h is. Then x and x' differ in bit 36 only,
 * rotl(x, 27) and rotl(x', 27) in bit 63 only, and flipping bit 63 is adding 2^63,
 * which "* 5 + C3" keeps: the states after a and after a' differ in bit 63 exactly.
 * A word b' with f(b') = f(b) ^ 2^63 cancels that. So the 16-byte blocks (a, b) and
 * (a', b') leave any state the same, and a key of COLLIDE_BLOCKS blocks, each one
 * picked from its pair by one bit of the key's number, has 2^COLLIDE_BLOCKS
 * spellings with one hash, for every seed. */
#define COLLIDE_BLOCKS 14 /* 16,384 >= COLLIDE_KEYS */
#define COLLIDE_KEYLEN (COLLIDE_BLOCKS * 16)
#define COLLIDE_KEYS 10000

static void colliding_key(unsigned n, unsigned char *out) {
  for (int i = 0; i < COLLIDE_BLOCKS; i++) {
    uint64_t a = 0x6b65790000000000ULL + (uint64_t)i, b = 0x626c6f636b000000ULL + (uint64_t)i;
    if (n >> i & 1) {
      a = old_f_inverse(old_f(a) ^ (1ULL << 36));
      b = old_f_inverse(old_f(b) ^ (1ULL << 63));
    }
    memcpy(out + 16 * i, &a, 8);
    memcpy(out + 16 * i + 8, &b, 8);
  }
}

static void keys_that_collide_under_the_old_hash_spread_over_shards_and_buckets(void) {
  static unsigned char keys[COLLIDE_KEYS][COLLIDE_KEYLEN];
  for (unsigned n = 0; n < COLLIDE_KEYS; n++) colliding_key(n, keys[n]);
  /* the construction is right: distinct keys, one old hash for any seed */
  CHECK(memcmp(keys[0], keys[1], COLLIDE_KEYLEN) != 0);
  CHECK(memcmp(keys[1], keys[2], COLLIDE_KEYLEN) != 0);
  const uint64_t seeds[] = { 0, 1, 0x0123456789abcdefULL, (uint64_t)time(NULL) * 2654435761u };
  for (size_t s = 0; s < sizeof(seeds) / sizeof(seeds[0]); s++) {
    uint64_t h0 = old_hash(seeds[s], keys[0], COLLIDE_KEYLEN);
    int same = 1;
    for (unsigned n = 1; n < COLLIDE_KEYS; n++)
      same &= old_hash(seeds[s], keys[n], COLLIDE_KEYLEN) == h0;
    CHECK(same);
  }

  /* 16 MiB: 16 shards of 1 MiB, 8192 buckets each. An entry costs 80 + 224 bytes,
   * so a shard holds about 3400 of them and the 10,000 fit in the dict only spread */
  mg_shdict_t *d = mg_shdict_open("collide", 16 << 20);
  int ev, evictions = 0;
  for (unsigned n = 0; n < COLLIDE_KEYS; n++) {
    CHECK(mg_shdict_set(d, (const char *)keys[n], COLLIDE_KEYLEN, MG_SHD_NUMBER, n, NULL, 0, 0,
                        &ev) == 0);
    evictions += ev;
  }
  CHECK(evictions == 0);
  CHECK(mg_shdict_count(d) == COLLIDE_KEYS);
  int all_back = 1;
  for (unsigned n = 0; n < COLLIDE_KEYS; n++) {
    double num = -1;
    all_back &= get_num(d, (const char *)keys[n], COLLIDE_KEYLEN, &num) == MG_SHD_NUMBER &&
                num == n;
  }
  CHECK(all_back);

  /* Bounds for a keyed PRF, where these keys are as good as random ones. Per shard:
   * binomial(10000, 1/16), mean 625, sd 24.2; [450, 800] is 7 sd either way, so a
   * false failure has odds below 1e-10 per run. Per bucket: about 625 keys in 8192
   * buckets (load 0.08); a chain of 9 has odds about C(625, 9) / 8192^9 per bucket,
   * under 1e-10 over all 131,072 buckets. The old hash put all 10,000 keys in one
   * shard and one chain (after evicting all but ~3400). */
  mg_shdict_spread_t sp;
  mg_shdict_spread(d, &sp);
  printf("     (shards %u: %zu..%zu entries, longest chain %zu)\n", sp.shards, sp.min_shard,
         sp.max_shard, sp.max_chain);
  CHECK(sp.shards == 16);
  CHECK(sp.min_shard >= 450 && sp.max_shard <= 800);
  CHECK(sp.max_chain <= 8);
}

int main(void) {
  static const t_case_t cases[] = {
    T(stores_and_reads_numbers_and_strings),
    T(get_with_small_buffer_reports_full_length),
    T(add_refuses_a_live_key),
    T(incr_adds_and_creates_only_with_init),
    T(incr_on_a_string_is_etype),
    T(delete_removes_and_reports_absent_keys),
    T(entries_expire_after_their_ttl),
    T(evicts_least_recently_used_entries),
    T(expired_entries_are_reclaimed_without_an_eviction),
    T(refuses_entries_bigger_than_a_shard),
    T(rejects_invalid_arguments),
    T(open_twice_returns_the_same_dict_and_find_looks_up_by_name),
    T(concurrent_incr_counts_exactly),
    T(gcra_gives_the_burst_then_one_token_per_interval),
    T(concurrent_gcra_never_gives_more_than_the_bucket_holds),
    T(concurrent_mixed_operations_stay_consistent),
    T(get_is_whole_while_another_thread_grows_the_value),
    T(keys_that_collide_under_the_old_hash_spread_over_shards_and_buckets),
  };
  int rc = t_run("shdict", cases, sizeof(cases) / sizeof(cases[0]));
  mg_shdict_close_all();
  return rc;
}
