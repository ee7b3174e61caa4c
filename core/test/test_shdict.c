/* core/shdict.c: values, add/incr/delete, TTL, LRU eviction, limits, the registry and
 * concurrent use. Dicts smaller than 2 * MG_SHDICT_MIN_SHARD_BYTES have one shard, so
 * the eviction tests below know exactly which entries share an LRU list. */
#include <pthread.h>
#include <stdio.h>
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
    T(concurrent_mixed_operations_stay_consistent),
  };
  int rc = t_run("shdict", cases, sizeof(cases) / sizeof(cases[0]));
  mg_shdict_close_all();
  return rc;
}
