/* core/maglev.c: the Maglev table (fill, shares, weights, disruption, 10,000
 * backends), bounded-load picks, and hash_key parsing and extraction. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "../maglev.h"
#include "test.h"

#define MAXN 10000

static char names[MAXN][24];
static mg_maglev_backend_t bk[MAXN];

/* backends "10.0.<i/256>.<i%256>:80", weight 1 */
static void make(size_t n) {
  for (size_t i = 0; i < n; i++) {
    int len = snprintf(names[i], sizeof(names[i]), "10.0.%zu.%zu:80", i / 256, i % 256);
    bk[i] = (mg_maglev_backend_t){ { names[i], (size_t)len }, 1 };
  }
}

static mg_maglev_t *build(const mg_maglev_backend_t *b, size_t n) {
  mg_maglev_t *m = NULL;
  int rc = mg_maglev_new(b, n, &m);
  CHECK(rc == 0);
  CHECK(m != NULL);
  return m;
}

static void count(const mg_maglev_t *m, size_t *cnt, size_t n) {
  memset(cnt, 0, n * sizeof(*cnt));
  for (size_t s = 0; s < mg_maglev_slots(m); s++) {
    uint32_t o = mg_maglev_slot_owner(m, s);
    if (o < n) cnt[o]++;
  }
}

static uint64_t key_hash(size_t i) {
  char k[32];
  int len = snprintf(k, sizeof(k), "client-%zu", i);
  return mg_maglev_hash(k, (size_t)len);
}

static void every_slot_is_owned_by_a_backend(void) {
  size_t ns[] = { 1, 2, 3, 10, 100, 655, 656 };
  for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
    make(ns[k]);
    mg_maglev_t *m = build(bk, ns[k]);
    if (!m) continue;
    size_t M = mg_maglev_slots(m), bad = 0;
    CHECK(M >= 100 * ns[k]);
    CHECK(M >= 65537);
    for (size_t s = 0; s < M; s++) bad += mg_maglev_slot_owner(m, s) >= ns[k];
    CHECK(bad == 0);
    CHECK(mg_maglev_slot_owner(m, M) == UINT32_MAX);
    mg_maglev_free(m);
  }
  make(656); /* 100 x 656 > 65537: the next prime */
  mg_maglev_t *m = build(bk, 656);
  if (m) CHECK(mg_maglev_slots(m) == 131071);
  mg_maglev_free(m);
}

static void equal_weights_share_the_table_within_1_percent(void) {
  size_t ns[] = { 3, 10, 100, 600 };
  static size_t cnt[MAXN];
  for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
    size_t n = ns[k];
    make(n);
    mg_maglev_t *m = build(bk, n);
    if (!m) continue;
    count(m, cnt, n);
    double fair = (double)mg_maglev_slots(m) / (double)n;
    for (size_t i = 0; i < n; i++) CHECK(fabs((double)cnt[i] - fair) <= 0.01 * fair);
    mg_maglev_free(m);
  }
}

static void weights_give_proportional_shares(void) {
  static size_t cnt[MAXN];
  make(2);
  bk[1].weight = 2;
  mg_maglev_t *m = build(bk, 2);
  if (m) {
    count(m, cnt, 2);
    double r = (double)cnt[1] / (double)cnt[0];
    CHECK(r > 1.98 && r < 2.02);
    CHECK(cnt[0] + cnt[1] == mg_maglev_slots(m));
  }
  mg_maglev_free(m);

  /* weights 1..10 (W = 55), and a zero weight that owns nothing */
  make(11);
  for (size_t i = 0; i < 10; i++) bk[i].weight = (uint32_t)(i + 1);
  bk[10].weight = 0;
  m = build(bk, 11);
  if (m) {
    count(m, cnt, 11);
    double M = (double)mg_maglev_slots(m);
    for (size_t i = 0; i < 10; i++) {
      double fair = M * (double)(i + 1) / 55.0;
      CHECK(fabs((double)cnt[i] - fair) <= 0.01 * fair);
    }
    CHECK(cnt[10] == 0);
  }
  mg_maglev_free(m);
}

/* Removing backend 3 of 10: its keys must move, and few others may. */
static void removing_one_of_ten_moves_about_a_tenth_of_keys(void) {
  make(10);
  mg_maglev_t *a = build(bk, 10);
  mg_maglev_backend_t nine[9];
  size_t map[9]; /* index in `nine` -> index in bk */
  for (size_t i = 0, j = 0; i < 10; i++) {
    if (i == 3) continue;
    nine[j] = bk[i];
    map[j++] = i;
  }
  mg_maglev_t *b = build(nine, 9);
  if (!a || !b) goto done;
  size_t moved = 0, orphaned = 0, keys = 200000;
  for (size_t k = 0; k < keys; k++) {
    uint64_t h = key_hash(k);
    size_t before = mg_maglev_lookup(a, h), after = map[mg_maglev_lookup(b, h)];
    orphaned += before == 3;
    moved += before != after;
    CHECK(after != 3);
  }
  double frac = (double)moved / (double)keys;
  fprintf(stderr, "  removing 1 of 10 moved %.2f %% of keys (%.2f %% were on it)\n",
          100 * frac, 100.0 * (double)orphaned / (double)keys);
  CHECK(frac <= 0.12);
  CHECK(frac >= (double)orphaned / (double)keys);
done:
  mg_maglev_free(a);
  mg_maglev_free(b);
}

/* The table depends on the names, not on the order they are listed in. */
static void config_order_does_not_change_the_table(void) {
  make(50);
  mg_maglev_t *a = build(bk, 50);
  mg_maglev_backend_t rev[50];
  for (size_t i = 0; i < 50; i++) rev[i] = bk[49 - i];
  mg_maglev_t *b = build(rev, 50);
  if (a && b) {
    size_t diff = 0;
    for (size_t s = 0; s < mg_maglev_slots(a); s++) {
      diff += mg_maglev_slot_owner(a, s) != 49 - mg_maglev_slot_owner(b, s);
    }
    CHECK(diff == 0);
  }
  mg_maglev_free(a);
  mg_maglev_free(b);
}

static void ten_thousand_backends_build_and_look_up(void) {
  static size_t cnt[MAXN];
  make(MAXN);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  mg_maglev_t *m = build(bk, MAXN);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (!m) return;
  fprintf(stderr, "  10,000 backends: M = %zu, built in %.0f ms\n", mg_maglev_slots(m),
          (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
  CHECK(mg_maglev_slots(m) == 1048573);
  CHECK(mg_maglev_backends(m) == MAXN);
  count(m, cnt, MAXN);
  double fair = (double)mg_maglev_slots(m) / MAXN;
  size_t off = 0;
  for (size_t i = 0; i < MAXN; i++) off += fabs((double)cnt[i] - fair) > 0.01 * fair;
  CHECK(off == 0);
  size_t bad = 0;
  for (size_t k = 0; k < 100000; k++) bad += mg_maglev_lookup(m, key_hash(k)) >= MAXN;
  CHECK(bad == 0);
  mg_maglev_free(m);
}

/* The worst weights for the build: one server at the largest weight, 9,999 at 1.
 * It owns its share of the table (1e6 / (1e6 + 9999)), and the build stays quick. */
static void skewed_weights_build_for_ten_thousand_backends(void) {
  static size_t cnt[MAXN];
  make(MAXN);
  bk[123].weight = MG_MAGLEV_MAX_WEIGHT;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  mg_maglev_t *m = build(bk, MAXN);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (!m) return;
  fprintf(stderr, "  10,000 backends, one at weight 1e6: built in %.0f ms\n",
          (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
  count(m, cnt, MAXN);
  double M = (double)mg_maglev_slots(m);
  double fair = M * 1e6 / (1e6 + (MAXN - 1));
  CHECK(fabs((double)cnt[123] - fair) <= 0.01 * fair);
  size_t sum = 0;
  for (size_t i = 0; i < MAXN; i++) sum += cnt[i];
  CHECK(sum == mg_maglev_slots(m));
  mg_maglev_free(m);
}

static void bad_backend_lists_are_refused(void) {
  mg_maglev_t *m = (mg_maglev_t *)&m; /* must be reset to NULL */
  make(3);
  CHECK(mg_maglev_new(bk, 0, &m) == MG_EINVAL);
  CHECK(m == NULL);
  CHECK(mg_maglev_new(bk, MG_MAGLEV_MAX_BACKENDS + 1, &m) == MG_EINVAL);
  for (size_t i = 0; i < 3; i++) bk[i].weight = 0;
  CHECK(mg_maglev_new(bk, 3, &m) == MG_EINVAL);
  bk[0].weight = MG_MAGLEV_MAX_WEIGHT + 1;
  CHECK(mg_maglev_new(bk, 3, &m) == MG_EINVAL);
  make(3);
  bk[1].name = (mg_str_t){ NULL, 5 };
  CHECK(mg_maglev_new(bk, 3, &m) == MG_EINVAL);
  CHECK(m == NULL);
}

/* Hostile names: empty, NUL bytes, 1 MB; names that differ only after a NUL are
 * different backends. */
static void hostile_names_build(void) {
  size_t big = 1 << 20;
  char *huge = malloc(big);
  if (!huge) return;
  memset(huge, 'a', big);
  mg_maglev_backend_t b[4] = {
    { { "", 0 }, 1 }, { { "x\0a", 3 }, 1 }, { { "x\0b", 3 }, 1 }, { { huge, big }, 1 },
  };
  mg_maglev_t *m = build(b, 4);
  if (m) {
    size_t cnt[4];
    count(m, cnt, 4);
    for (size_t i = 0; i < 4; i++) CHECK(cnt[i] > 0.24 * (double)mg_maglev_slots(m));
  }
  mg_maglev_free(m);
  free(huge);
  CHECK(mg_maglev_hash("x\0a", 3) != mg_maglev_hash("x\0b", 3));
  CHECK(mg_maglev_hash("x\0a", 3) != mg_maglev_hash("x", 1));
  CHECK(mg_maglev_hash("abc", 3) == mg_maglev_hash("abc", 3));
  CHECK(mg_maglev_hash(NULL, 0) == mg_maglev_hash("", 0));
}

/* ---- bounded loads ------------------------------------------------------------ */

typedef struct {
  _Atomic int64_t load[16];
  int down[16];
} peers_t;

static int64_t peer_load(void *ud, uint32_t i) {
  peers_t *p = ud;
  return p->down[i] ? -1 : atomic_load_explicit(&p->load[i], memory_order_relaxed);
}

static mg_maglev_bound_t bound_of(peers_t *p, size_t n, double eps, uint64_t wsum) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total += p->down[i] ? 0 : (uint64_t)p->load[i];
  return (mg_maglev_bound_t){ eps, total, wsum, peer_load, p };
}

/* With no load anywhere the pick is the plain lookup. */
static void bounded_pick_without_load_is_the_lookup(void) {
  make(10);
  mg_maglev_t *m = build(bk, 10);
  if (!m) return;
  peers_t p = { 0 };
  mg_maglev_bound_t b = bound_of(&p, 10, 0.25, 0);
  size_t diff = 0;
  for (size_t k = 0; k < 10000; k++) {
    uint64_t h = key_hash(k);
    diff += mg_maglev_pick_bounded(m, h, &b) != (int64_t)mg_maglev_lookup(m, h);
  }
  CHECK(diff == 0);
  mg_maglev_free(m);
}

/* 10 servers, eps 0.25: requests arrive (and some finish) while every pick is
 * checked against ceil(1.25 * (total + 1) / 10), computed in integers. */
static void bounded_pick_never_exceeds_the_cap(void) {
  make(10);
  mg_maglev_t *m = build(bk, 10);
  if (!m) return;
  peers_t p = { 0 };
  uint64_t total = 0, over = 0, rnd = 12345;
  for (size_t k = 0; k < 20000; k++) {
    /* a quarter of keys are one hot key */
    uint64_t h = key_hash(k % 4 == 0 ? 7 : k);
    mg_maglev_bound_t b = { 0.25, total, 0, peer_load, &p };
    int64_t i = mg_maglev_pick_bounded(m, h, &b);
    CHECK(i >= 0 && i < 10);
    if (i < 0 || i >= 10) break;
    uint64_t cap = (5 * (total + 1) + 40 - 1) / 40; /* ceil(5 (total+1) / 40) */
    over += (uint64_t)p.load[i] + 1 > cap;
    p.load[i]++;
    total++;
    /* finish a random request now and then, to keep loads moving */
    rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
    if ((rnd >> 33) % 3 == 0) {
      size_t j = (size_t)(rnd >> 40) % 10;
      if (p.load[j] > 0) {
        p.load[j]--;
        total--;
      }
    }
  }
  CHECK(over == 0);
  mg_maglev_free(m);
}

/* One key only, 1000 requests in flight: the key's server fills up to the cap and
 * the rest spread over the others, none above the cap. */
static void bounded_pick_spreads_a_hot_key(void) {
  make(10);
  mg_maglev_t *m = build(bk, 10);
  if (!m) return;
  peers_t p = { 0 };
  uint64_t h = key_hash(42);
  uint32_t home = mg_maglev_lookup(m, h);
  for (uint64_t total = 0; total < 1000; total++) {
    mg_maglev_bound_t b = { 0.25, total, 0, peer_load, &p };
    int64_t i = mg_maglev_pick_bounded(m, h, &b);
    if (i < 0) break;
    p.load[i]++;
  }
  size_t used = 0;
  int64_t max = 0, sum = 0;
  for (size_t i = 0; i < 10; i++) {
    used += p.load[i] > 0;
    max = p.load[i] > max ? p.load[i] : max;
    sum += p.load[i];
  }
  CHECK(sum == 1000);
  CHECK(max <= 125);             /* ceil(1.25 * 1000 / 10) */
  CHECK(p.load[home] >= 100);    /* the home server took its share first */
  CHECK(used >= 8);              /* 1000 / 125: at least 8 servers */
  /* eps = INFINITY: no bound, every request stays on the key's server */
  memset(p.load, 0, sizeof(p.load));
  for (uint64_t total = 0; total < 1000; total++) {
    mg_maglev_bound_t b = { INFINITY, total, 0, peer_load, &p };
    int64_t i = mg_maglev_pick_bounded(m, h, &b);
    if (i < 0) break;
    p.load[i]++;
  }
  CHECK(p.load[home] == 1000);
  mg_maglev_free(m);
}

/* Weights 1:3 (W = 4): caps ceil(1.25 (total + 1) w / 4). */
static void bounded_pick_follows_weights(void) {
  make(2);
  bk[1].weight = 3;
  mg_maglev_t *m = build(bk, 2);
  if (!m) return;
  peers_t p = { 0 };
  uint64_t over = 0;
  for (uint64_t total = 0; total < 400; total++) {
    mg_maglev_bound_t b = { 0.25, total, 0, peer_load, &p };
    int64_t i = mg_maglev_pick_bounded(m, key_hash(3), &b);
    if (i < 0) break;
    uint64_t w = i == 1 ? 3 : 1;
    over += (uint64_t)p.load[i] + 1 > (5 * (total + 1) * w + 16 - 1) / 16;
    p.load[i]++;
  }
  CHECK(over == 0);
  CHECK(p.load[0] + p.load[1] == 400);
  /* the key's server ends at its cap: 125 for weight 1, 375 for weight 3 */
  uint32_t home = mg_maglev_lookup(m, key_hash(3));
  CHECK(p.load[home] >= (home == 1 ? 374 : 124));
  mg_maglev_free(m);
}

/* Skipped servers (down or already tried) are never picked; all skipped: -1. */
static void bounded_pick_skips_unusable_servers(void) {
  make(10);
  mg_maglev_t *m = build(bk, 10);
  if (!m) return;
  peers_t p = { 0 };
  size_t bad = 0;
  for (size_t k = 0; k < 2000; k++) {
    uint64_t h = key_hash(k);
    uint32_t home = mg_maglev_lookup(m, h);
    memset(p.down, 0, sizeof(p.down));
    p.down[home] = 1;
    mg_maglev_bound_t b = bound_of(&p, 10, 0.25, 9);
    int64_t i = mg_maglev_pick_bounded(m, h, &b);
    bad += i < 0 || i == home;
  }
  CHECK(bad == 0);
  for (size_t i = 0; i < 10; i++) p.down[i] = i != 6;
  mg_maglev_bound_t b = bound_of(&p, 10, 0.25, 1);
  CHECK(mg_maglev_pick_bounded(m, key_hash(1), &b) == 6);
  p.down[6] = 1;
  b = bound_of(&p, 10, 0.25, 1);
  CHECK(mg_maglev_pick_bounded(m, key_hash(1), &b) == -1);
  /* a stale total (racing workers): every server above its cap, the least loaded
   * still answers */
  memset(p.down, 0, sizeof(p.down));
  for (size_t i = 0; i < 10; i++) p.load[i] = 50;
  p.load[4] = 20;
  b = (mg_maglev_bound_t){ 0.25, 0, 0, peer_load, &p };
  CHECK(mg_maglev_pick_bounded(m, key_hash(1), &b) == 4);
  mg_maglev_free(m);
}

/* ---- hash_key ---------------------------------------------------------------- */

static int parse(const char *s, size_t len, mg_hash_key_t *k) {
  const char *err = NULL;
  int rc = mg_hash_key_parse(s, len, k, &err);
  CHECK((rc == 0) == (err == NULL));
  return rc;
}

static void hash_key_specs_parse(void) {
  mg_hash_key_t k;
  CHECK(parse("ip", 2, &k) == 0 && k.kind == MG_HASH_KEY_IP);
  CHECK(parse("header:X-User", 13, &k) == 0 && k.kind == MG_HASH_KEY_HEADER &&
        mg_str_eq(k.name, MG_STR("X-User")));
  CHECK(parse("cookie:sid", 10, &k) == 0 && k.kind == MG_HASH_KEY_COOKIE &&
        mg_str_eq(k.name, MG_STR("sid")));
  CHECK(parse("arg:ids[]", 9, &k) == 0 && k.kind == MG_HASH_KEY_ARG &&
        mg_str_eq(k.name, MG_STR("ids[]")));
  const char *bad[] = { "", "ipv4", "IP", "header:", "header", "Header:x", "cookie:",
                        "arg:", "header:a b", "cookie:a;b", "cookie:a=b", "arg:a=b",
                        "arg:a&b", "arg:a#b", "host", "header:x\x7f" };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = parse(bad[i], strlen(bad[i]), &k);
    if (rc != MG_ECONFIG) fprintf(stderr, "  accepted: %s\n", bad[i]);
    CHECK(rc == MG_ECONFIG);
  }
  CHECK(parse("header:a\0b", 10, &k) == MG_ECONFIG); /* NUL inside the name */
  CHECK(parse("ip\0", 3, &k) == MG_ECONFIG);
  CHECK(parse(NULL, 0, &k) == MG_ECONFIG);
  char big[7 + MG_HASH_KEY_MAX_NAME + 2];
  memcpy(big, "header:", 7);
  memset(big + 7, 'x', sizeof(big) - 7);
  CHECK(parse(big, 7 + MG_HASH_KEY_MAX_NAME, &k) == 0);
  CHECK(parse(big, 7 + MG_HASH_KEY_MAX_NAME + 1, &k) == MG_ECONFIG);
}

/* A header store for the tests: (name, value) pairs, case-insensitive names. */
typedef struct {
  mg_str_t h[8][2];
  size_t n;
} hdrs_t;

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

static int hdr_get(void *ud, mg_str_t name, size_t idx, mg_str_t *val) {
  hdrs_t *hs = ud;
  for (size_t i = 0; i < hs->n; i++) {
    mg_str_t n = hs->h[i][0];
    if (n.len != name.len) continue;
    size_t j = 0;
    while (j < n.len && lower((unsigned char)n.p[j]) == lower((unsigned char)name.p[j])) j++;
    if (j < n.len) continue;
    if (idx-- == 0) {
      *val = hs->h[i][1];
      return 1;
    }
  }
  return 0;
}

static int extract(const char *spec, hdrs_t *hs, const char *query, size_t qlen, mg_str_t *key) {
  mg_hash_key_t k;
  if (parse(spec, strlen(spec), &k) != 0) return -1;
  mg_hash_input_t in = { MG_STR("192.0.2.7"), hdr_get, hs, { query, qlen } };
  return mg_hash_key_extract(&k, &in, key);
}

#define HDR(n, v) { { (n), sizeof(n) - 1 }, { (v), sizeof(v) - 1 } }
static const mg_str_t ip = { "192.0.2.7", 9 };

static void hash_key_extracts_each_source(void) {
  hdrs_t hs = { { HDR("X-User", "alice"), HDR("Cookie", "a=1; sidx=no"),
                  HDR("cookie", "theme = dark ;  sid=s3cr3t ; z=9"), HDR("x-user", "bob") },
                4 };
  mg_str_t key;
  CHECK(extract("ip", &hs, "", 0, &key) == 1 && mg_str_eq(key, ip));
  CHECK(extract("header:x-user", &hs, "", 0, &key) == 1 && mg_str_eq(key, MG_STR("alice")));
  /* the second Cookie header, not the "sidx" prefix in the first */
  CHECK(extract("cookie:sid", &hs, "", 0, &key) == 1 && mg_str_eq(key, MG_STR("s3cr3t")));
  CHECK(extract("cookie:theme", &hs, "", 0, &key) == 1 && mg_str_eq(key, MG_STR("dark")));
  CHECK(extract("cookie:a", &hs, "", 0, &key) == 1 && mg_str_eq(key, MG_STR("1")));
  const char *q = "username=x&user=bob&user=eve&flag&empty=";
  CHECK(extract("arg:user", &hs, q, strlen(q), &key) == 1 && mg_str_eq(key, MG_STR("bob")));
  CHECK(extract("arg:username", &hs, q, strlen(q), &key) == 1 && mg_str_eq(key, MG_STR("x")));
}

/* Missing or empty sources fall back to the client ip, and say so (0). */
static void hash_key_falls_back_to_the_ip(void) {
  hdrs_t hs = { { HDR("X-Empty", ""), HDR("Cookie", "sid=; other=1"), HDR("Cookie", "nameonly") },
                3 };
  mg_str_t key;
  const char *q = "flag&empty=&a=1";
  const char *miss[] = { "header:x-none", "header:x-empty", "cookie:none", "cookie:sid",
                         "cookie:nameonly", "arg:none", "arg:flag", "arg:empty", "arg:a=" };
  for (size_t i = 0; i < sizeof(miss) / sizeof(miss[0]); i++) {
    key = (mg_str_t){ NULL, 0 };
    int rc = extract(miss[i], &hs, q, strlen(q), &key);
    if (rc == -1) continue; /* "arg:a=" is refused by the parser already */
    CHECK(rc == 0);
    CHECK(mg_str_eq(key, ip));
  }
  /* no header callback, no query */
  mg_hash_key_t k;
  parse("header:x", 8, &k);
  mg_hash_input_t in = { ip, NULL, NULL, { NULL, 0 } };
  CHECK(mg_hash_key_extract(&k, &in, &key) == 0 && mg_str_eq(key, ip));
  parse("arg:x", 5, &k);
  CHECK(mg_hash_key_extract(&k, &in, &key) == 0 && mg_str_eq(key, ip));
  /* no ip either (a unix socket): the empty key, and "ip" says 0 too */
  in.ip = (mg_str_t){ NULL, 0 };
  CHECK(mg_hash_key_extract(&k, &in, &key) == 0 && key.len == 0);
  parse("ip", 2, &k);
  CHECK(mg_hash_key_extract(&k, &in, &key) == 0 && key.len == 0);
}

/* Values with NUL bytes and a 1 MB header are keys like any other. */
static void hash_key_takes_hostile_values(void) {
  size_t big = 1 << 20;
  char *huge = malloc(big);
  if (!huge) return;
  memset(huge, 'v', big);
  huge[5] = '\0';
  hdrs_t hs = { { { MG_STR("X-Big"), { huge, big } }, HDR("X-Nul", "a\0b"),
                  { MG_STR("Cookie"), { huge, big } } },
                3 };
  mg_str_t key;
  CHECK(extract("header:x-big", &hs, "", 0, &key) == 1 && key.p == huge && key.len == big);
  CHECK(mg_maglev_hash(key.p, key.len) != mg_maglev_hash(huge, 5));
  CHECK(extract("header:x-nul", &hs, "", 0, &key) == 1 && key.len == 3);
  /* a 1 MB cookie header without '=' or ';' holds no cookie */
  CHECK(extract("cookie:vvvvv", &hs, "", 0, &key) == 0 && mg_str_eq(key, ip));
  const char q[] = "k=\0\0x&j=1";
  CHECK(extract("arg:k", &hs, q, sizeof(q) - 1, &key) == 1 && key.len == 3);
  /* a 1 MB query with the argument at its very end */
  memset(huge, 'a', big);
  memcpy(huge + big - 4, "&z=1", 4);
  CHECK(extract("arg:z", &hs, huge, big, &key) == 1 && mg_str_eq(key, MG_STR("1")));
  free(huge);
}

int main(void) {
  static const t_case_t cases[] = {
    T(every_slot_is_owned_by_a_backend),
    T(equal_weights_share_the_table_within_1_percent),
    T(weights_give_proportional_shares),
    T(removing_one_of_ten_moves_about_a_tenth_of_keys),
    T(config_order_does_not_change_the_table),
    T(ten_thousand_backends_build_and_look_up),
    T(skewed_weights_build_for_ten_thousand_backends),
    T(bad_backend_lists_are_refused),
    T(hostile_names_build),
    T(bounded_pick_without_load_is_the_lookup),
    T(bounded_pick_never_exceeds_the_cap),
    T(bounded_pick_spreads_a_hot_key),
    T(bounded_pick_follows_weights),
    T(bounded_pick_skips_unusable_servers),
    T(hash_key_specs_parse),
    T(hash_key_extracts_each_source),
    T(hash_key_falls_back_to_the_ip),
    T(hash_key_takes_hostile_values),
  };
  return t_run("maglev", cases, sizeof(cases) / sizeof(cases[0]));
}
