/* core/balance.c: the round robin schedule, the policies over shared peer state,
 * and the tried-servers set past 64 servers. */
#include <pthread.h>
#include <stdatomic.h>
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "../balance.h"
#include "test.h"

static mg_balancer_t *make(int policy, const int *w, int n) {
  mg_balancer_t *b = mg_balancer_new(policy, w, n);
  CHECK(b != NULL);
  return b;
}

/* Weights 1 and 3 give B A B B, as smooth weighted round robin does. */
static void rr_weights_interleave(void) {
  int w[] = { 1, 3 };
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, 2);
  uint64_t rng = 1;
  int seq[8];
  for (int i = 0; i < 8; i++) seq[i] = mg_balance_pick(b, NULL, &rng);
  int want[8] = { 1, 0, 1, 1, 1, 0, 1, 1 };
  for (int i = 0; i < 8; i++) CHECK(seq[i] == want[i]);
  CHECK(mg_balance_snap(b)->nschedule == 4);
  mg_balancer_free(b);
}

/* Over one cycle each server appears exactly its weight times, and no server's
 * gaps differ by more than one slot from even spacing. Weights with a common
 * divisor are reduced (100:300 is a 4-slot cycle). */
static void rr_cycle_exact(void) {
  int w[] = { 5, 2, 3, 1 };
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, 4);
  CHECK(mg_balance_snap(b)->nschedule == 11);
  int count[4] = { 0 };
  for (uint32_t i = 0; i < mg_balance_snap(b)->nschedule; i++) count[mg_balance_snap(b)->schedule[i]]++;
  for (int i = 0; i < 4; i++) CHECK(count[i] == w[i]);
  /* server 0 (5 of 11) never twice in a row more than once per cycle */
  int runs = 0;
  for (uint32_t i = 0; i + 1 < mg_balance_snap(b)->nschedule; i++) runs += mg_balance_snap(b)->schedule[i] == 0 && mg_balance_snap(b)->schedule[i + 1] == 0;
  CHECK(runs <= 1);
  mg_balancer_free(b);
  int w2[] = { 100, 300 };
  b = make(MG_BALANCE_ROUND_ROBIN, w2, 2);
  CHECK(mg_balance_snap(b)->nschedule == 4);
  mg_balancer_free(b);
}

/* 10,000 servers of weight 1: one slot each, every one picked once a cycle. */
static void rr_ten_thousand(void) {
  enum { N = 10000 };
  int *w = malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) w[i] = 1;
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, N);
  CHECK(mg_balance_snap(b)->nschedule == N);
  char *seen = calloc(N, 1);
  uint64_t rng = 1;
  for (int i = 0; i < N; i++) {
    int s = mg_balance_pick(b, NULL, &rng);
    CHECK(s >= 0 && s < N && !seen[s]);
    if (s >= 0 && s < N) seen[s] = 1;
  }
  free(seen);
  mg_balancer_free(b);
  free(w);
}

/* Weights too many for the schedule are scaled down, each server keeping a slot. */
static void rr_schedule_bounded(void) {
  enum { N = 5000 };
  int *w = malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) w[i] = i % 2 ? 1000 : 999;
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, N);
  CHECK(mg_balance_snap(b)->nschedule <= MG_BALANCE_SCHEDULE_MAX + N);
  int *count = calloc(N, sizeof(int));
  for (uint32_t i = 0; i < mg_balance_snap(b)->nschedule; i++) count[mg_balance_snap(b)->schedule[i]]++;
  for (int i = 0; i < N; i++) CHECK(count[i] >= 1);
  free(count);
  mg_balancer_free(b);
  free(w);
}

/* Tried servers are skipped, past index 64 too; -1 once all are tried. */
static void tried_past_64(void) {
  enum { N = 200 };
  int w[N];
  for (int i = 0; i < N; i++) w[i] = 1;
  uint64_t map[(N + 63) / 64] = { 0 };
  mg_tried_t t = { .map = map, .words = (N + 63) / 64 };
  int policies[] = { MG_BALANCE_ROUND_ROBIN, MG_BALANCE_LEAST_CONN, MG_BALANCE_P2C, MG_BALANCE_RANDOM };
  for (int p = 0; p < 4; p++) {
    mg_balancer_t *b = make(policies[p], w, N);
    memset(map, 0, sizeof(map));
    uint64_t rng = 7;
    for (int k = 0; k < N; k++) {
      int s = mg_balance_pick(b, &t, &rng);
      CHECK(s >= 0 && s < N && !mg_tried_has(&t, s));
      if (s >= 0 && s < N) mg_tried_set(&t, s);
    }
    CHECK(mg_balance_pick(b, &t, &rng) == -1);
    mg_tried_clear(&t, 150);
    CHECK(mg_balance_pick(b, &t, &rng) == 150);
    mg_balancer_free(b);
  }
}

/* least_conn: the server with the fewest active attempts per unit of weight. */
static void least_conn_picks_idle(void) {
  int w[] = { 1, 1, 2 };
  mg_balancer_t *b = make(MG_BALANCE_LEAST_CONN, w, 3);
  uint64_t rng = 3;
  mg_peer_begin(b, 0);
  mg_peer_begin(b, 2);
  for (int i = 0; i < 20; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 1);
  mg_peer_begin(b, 1);
  mg_peer_begin(b, 1); /* 1 has 2/1, 0 has 1/1, 2 has 1/2 */
  for (int i = 0; i < 20; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 2);
  mg_peer_end(b, 0);
  for (int i = 0; i < 20; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 0);
  mg_balancer_free(b);
}

/* least_conn past 128 servers: the best of 8 drawn at random. Half of 1,000
 * servers busy: a pick lands on a busy one only when all 8 draws do (1/256). */
static void least_conn_samples_big(void) {
  enum { N = 1000 };
  int *w = malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) w[i] = 1;
  mg_balancer_t *b = make(MG_BALANCE_LEAST_CONN, w, N);
  for (int i = 0; i < N; i += 2)
    for (int k = 0; k < 10; k++) mg_peer_begin(b, i);
  uint64_t rng = 11;
  int busy = 0, seen[N] = { 0 }, distinct = 0;
  for (int i = 0; i < 2000; i++) {
    int s = mg_balance_pick(b, NULL, &rng);
    busy += s % 2 == 0;
    distinct += !seen[s]++;
  }
  CHECK(busy <= 30);       /* expected ~8 */
  CHECK(distinct >= 400);  /* the idle ones share the picks */
  mg_balancer_free(b);
  free(w);
}

/* p2c: with three servers, two choices always include a fast one, so the slow
 * one (higher EWMA, same load) is never picked once it has a sample. */
static void p2c_avoids_slow(void) {
  int w[] = { 1, 1, 1 };
  mg_balancer_t *b = make(MG_BALANCE_P2C, w, 3);
  mg_peer_answered(b, 0, 1000);
  mg_peer_answered(b, 1, 100000);
  mg_peer_answered(b, 2, 1000);
  uint64_t rng = 11;
  int count[3] = { 0 };
  for (int i = 0; i < 3000; i++) count[mg_balance_pick(b, NULL, &rng)]++;
  CHECK(count[1] == 0);
  CHECK(count[0] > 1000 && count[2] > 1000);
  mg_balancer_free(b);
}

/* p2c: a slow server's average fades while it gets no sample: 60 s after its
 * last one (12 halvings of 5 s: 100 ms -> 24 us) it beats a 1 ms server again. */
static void p2c_slow_fades(void) {
  int w[] = { 1, 1 };
  mg_balancer_t *b = make(MG_BALANCE_P2C, w, 2);
  mg_peer_answered(b, 0, 100000);
  mg_peer_answered(b, 1, 1000);
  uint64_t rng = 5;
  for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 1);
  /* its sample is 60 s old now (the clock as balance.c reads it) */
  uint32_t at = atomic_load(&mg_balance_peer(b, 0)->ewma_at);
  atomic_store(&mg_balance_peer(b, 0)->ewma_at, at - 60000u);
  for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 0);
  /* one fresh slow answer and it is avoided again: the stale average counted
   * as faded (24 us), the new sample (100 ms) weighs 1/8 of it: 12.5 ms */
  mg_peer_answered(b, 0, 100000);
  CHECK(atomic_load(&mg_balance_peer(b, 0)->ewma_us) > 12000 && atomic_load(&mg_balance_peer(b, 0)->ewma_us) < 13000);
  for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 1);
  mg_balancer_free(b);
}

/* p2c: servers whose scores are within 25 % share the picks (the random first
 * draw wins); one twice as slow loses every draw against the others. */
static void p2c_near_scores_share(void) {
  int w[] = { 1, 1, 1 };
  mg_balancer_t *b = make(MG_BALANCE_P2C, w, 3);
  mg_peer_answered(b, 0, 1000);
  mg_peer_answered(b, 1, 1150);
  mg_peer_answered(b, 2, 2000);
  uint64_t rng = 7;
  int count[3] = { 0 };
  for (int i = 0; i < 3000; i++) count[mg_balance_pick(b, NULL, &rng)]++;
  /* 0 and 1 share their draws (1/3 of all) and each beats 2 (2/3): about 1500 each */
  CHECK(count[0] > 1300 && count[0] < 1700);
  CHECK(count[1] > 1300 && count[1] < 1700);
  CHECK(count[2] == 0);
  mg_balancer_unref(b);
}

/* random: weights 1 and 3 give about 1/4 and 3/4 (fixed seed, wide bounds). */
static void random_weighted(void) {
  int w[] = { 1, 3 };
  mg_balancer_t *b = make(MG_BALANCE_RANDOM, w, 2);
  uint64_t rng = 12345;
  int count[2] = { 0 };
  for (int i = 0; i < 40000; i++) count[mg_balance_pick(b, NULL, &rng)]++;
  CHECK(count[0] > 9400 && count[0] < 10600);
  mg_balancer_free(b);
}

static void policy_names(void) {
  CHECK(mg_balance_policy("round_robin") == MG_BALANCE_ROUND_ROBIN);
  CHECK(mg_balance_policy("least_conn") == MG_BALANCE_LEAST_CONN);
  CHECK(mg_balance_policy("p2c") == MG_BALANCE_P2C);
  CHECK(mg_balance_policy("random") == MG_BALANCE_RANDOM);
  CHECK(mg_balance_policy("hash") == MG_BALANCE_HASH);
  CHECK(mg_balance_policy("ring") == -1);
}

static void names_of(mg_str_t *names, char (*buf)[32], int n) {
  for (int i = 0; i < n; i++) {
    int len = snprintf(buf[i], sizeof(buf[i]), "10.0.%d.%d:80", i / 250, i % 250);
    names[i] = (mg_str_t){ buf[i], (size_t)len };
  }
}

/* hash: a key always lands on one server; a tried one sends it to the same
 * second choice; past the bound the key moves on, and with no bound it stays. */
static void hash_pick(void) {
  int w[] = { 1, 1, 1, 1 };
  mg_str_t names[4];
  char buf[4][32];
  names_of(names, buf, 4);
  mg_balancer_t *b = make(MG_BALANCE_HASH, w, 4);
  CHECK(mg_balancer_hash_init(b, names, 0.25) == 0);
  uint64_t h = mg_maglev_hash("user-7", 6);
  int s = mg_balance_pick_hash(b, NULL, h);
  CHECK(s >= 0 && s < 4);
  for (int i = 0; i < 10; i++) CHECK(mg_balance_pick_hash(b, NULL, h) == s);
  mg_tried_t t = { .map = NULL, .words = 0 };
  mg_tried_set(&t, s);
  int s2 = mg_balance_pick_hash(b, &t, h);
  CHECK(s2 >= 0 && s2 != s);
  CHECK(mg_balance_pick_hash(b, &t, h) == s2);
  /* load the key's server: 6 in flight there, none elsewhere; the cap for the
   * 7th of 4 servers is ceil(1.25 * 7 / 4) = 3, so the key moves */
  for (int i = 0; i < 6; i++) mg_peer_begin(b, s);
  CHECK(mg_balance_pick_hash(b, NULL, h) != s);
  b->hash_eps = INFINITY;
  CHECK(mg_balance_pick_hash(b, NULL, h) == s);
  for (int i = 0; i < 6; i++) mg_peer_end(b, s);
  CHECK(atomic_load(&b->active_total) == 0);
  /* every server tried: none */
  for (int i = 0; i < 4; i++) mg_tried_set(&t, i);
  CHECK(mg_balance_pick_hash(b, &t, h) == -1);
  mg_balancer_free(b);
}

/* sticky: 10,000 distinct tokens, each found again; an unknown one is not; the
 * tokens depend on the secret and on the upstream's name. */
static void sticky_tokens(void) {
  enum { N = 10000 };
  int *w = malloc(N * sizeof(int));
  mg_str_t *names = malloc(N * sizeof(mg_str_t));
  char(*buf)[32] = malloc(N * sizeof(*buf));
  CHECK(w && names && buf);
  for (int i = 0; i < N; i++) w[i] = 1;
  names_of(names, buf, N);
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, N);
  mg_balancer_t *b2 = make(MG_BALANCE_ROUND_ROBIN, w, N);
  mg_balancer_t *b3 = make(MG_BALANCE_ROUND_ROBIN, w, N);
  CHECK(mg_balancer_sticky_init(b, names, (mg_str_t){ "api", 3 }, (mg_str_t){ "s", 1 }) == 0);
  CHECK(mg_balancer_sticky_init(b2, names, (mg_str_t){ "api", 3 }, (mg_str_t){ "t", 1 }) == 0);
  CHECK(mg_balancer_sticky_init(b3, names, (mg_str_t){ "web", 3 }, (mg_str_t){ "s", 1 }) == 0);
  for (int i = 0; i < N; i++) {
    CHECK(mg_balance_sticky_find(b, mg_balance_peer(b, i)->tok) == i);
    CHECK(mg_balance_peer(b, i)->tok != mg_balance_peer(b2, i)->tok && mg_balance_peer(b, i)->tok != mg_balance_peer(b3, i)->tok);
  }
  CHECK(mg_balance_sticky_find(b, mg_balance_peer(b2, 0)->tok) == -1 ||
        mg_balance_peer(b2, 0)->tok == mg_balance_peer(b, mg_balance_sticky_find(b, mg_balance_peer(b2, 0)->tok))->tok);
  mg_balancer_free(b);
  mg_balancer_free(b2);
  mg_balancer_free(b3);
  free(w);
  free(names);
  free(buf);
}

/* ---- i12-health ---- */

/* Every policy skips a server that is down or ejected, with and without weights,
 * also on a retry; none usable: -1. */
static void skips_unusable(void) {
  int pol[] = { MG_BALANCE_ROUND_ROBIN, MG_BALANCE_LEAST_CONN, MG_BALANCE_P2C, MG_BALANCE_RANDOM };
  int w[] = { 1, 3, 1, 2, 1 }, one[] = { 1, 1, 1, 1, 1 };
  for (int k = 0; k < 4; k++)
    for (int v = 0; v < 2; v++) {
      mg_balancer_t *b = make(pol[k], v ? w : one, 5);
      atomic_store(&mg_balance_peer(b, 1)->flags, MG_PEER_DOWN);
      atomic_store(&mg_balance_peer(b, 3)->flags, MG_PEER_EJECTED);
      atomic_store(&mg_balance_peer(b, 3)->until_ms, mg_balance_now_ms() + 60000);
      uint64_t rng = 7;
      int count[5] = { 0 };
      for (int i = 0; i < 3000; i++) count[mg_balance_pick(b, NULL, &rng)]++;
      CHECK(count[1] == 0 && count[3] == 0);
      CHECK(count[0] > 0 && count[2] > 0 && count[4] > 0);
      mg_tried_t t = { .map = NULL, .words = 0 };
      mg_tried_set(&t, 0);
      mg_tried_set(&t, 2);
      for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, &t, &rng) == 4);
      mg_tried_set(&t, 4);
      CHECK(mg_balance_pick(b, &t, &rng) == -1);
      atomic_store(&mg_balance_peer(b, 0)->flags, MG_PEER_DOWN);
      atomic_store(&mg_balance_peer(b, 2)->flags, MG_PEER_DOWN);
      atomic_store(&mg_balance_peer(b, 4)->flags, MG_PEER_DOWN);
      CHECK(mg_balance_pick(b, NULL, &rng) == -1);
      /* panic: the fewest failures, usable or not */
      for (int i = 0; i < 5; i++) atomic_store(&mg_balance_peer(b, i)->fails, 5 - i);
      CHECK(mg_balance_pick_any(b, NULL, &rng) == 4);
      CHECK(mg_balance_pick_any(b, &t, &rng) == 3);
      mg_balancer_free(b);
    }
}

typedef struct {
  int n;
  char last[160];
} events_t;

static void on_event(void *data, int i, const char *what) {
  events_t *e = data;
  e->n++;
  snprintf(e->last, sizeof(e->last), "%d %s", i, what);
}

/* 5 errors in a row eject (a non-5xx in between starts over); max_percent holds;
 * the ejection ends at a pick once its time is over; the second lasts longer. */
static void ejection(void) {
  int w[] = { 1, 1, 1, 1 };
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, 4);
  events_t ev = { 0 };
  b->event = on_event;
  b->event_data = &ev;
  b->eject_consecutive = 5;
  b->eject_base_ms = 1000;
  b->eject_max_percent = 50;
  for (int i = 0; i < 4; i++) mg_peer_status(b, 0, 503);
  mg_peer_status(b, 0, 200);
  for (int i = 0; i < 4; i++) mg_peer_status(b, 0, 500);
  CHECK(mg_peer_usable(mg_balance_peer(b, 0)));
  mg_peer_failed(b, 0); /* a failed attempt counts too */
  CHECK(!mg_peer_usable(mg_balance_peer(b, 0)) && ev.n == 1);
  CHECK(strstr(ev.last, "0 ejected for 1s") == ev.last);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 1, 502);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 2, 502); /* 3 of 4 would pass 50 % */
  CHECK(!mg_peer_usable(mg_balance_peer(b, 1)) && mg_peer_usable(mg_balance_peer(b, 2)));
  CHECK(atomic_load(&b->nejected) == 2 && ev.n == 2);
  uint64_t rng = 3;
  for (int i = 0; i < 100; i++) {
    int s = mg_balance_pick(b, NULL, &rng);
    CHECK(s == 2 || s == 3);
  }
  /* time passes: the ejection is over for the first pick that looks */
  atomic_store(&mg_balance_peer(b, 0)->until_ms, mg_balance_now_ms() - 1);
  int seen0 = 0;
  for (int i = 0; i < 8; i++) seen0 += mg_balance_pick(b, NULL, &rng) == 0;
  CHECK(seen0 == 2 && mg_peer_usable(mg_balance_peer(b, 0)) && atomic_load(&b->nejected) == 1);
  CHECK(strcmp(ev.last, "0 back from ejection") == 0);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 0, 500);
  CHECK(strstr(ev.last, "0 ejected for 2s") == ev.last); /* base x 2 */
  uint64_t len = atomic_load(&mg_balance_peer(b, 0)->until_ms) - mg_balance_now_ms();
  CHECK(len > 1900 && len <= 2000);
  /* the cap: 10 x base */
  for (int k = 0; k < 12; k++) {
    atomic_store(&mg_balance_peer(b, 0)->until_ms, mg_balance_now_ms() - 1);
    mg_balance_pick(b, NULL, &rng), mg_balance_pick(b, NULL, &rng), mg_balance_pick(b, NULL, &rng);
    mg_balance_pick(b, NULL, &rng);
    for (int i = 0; i < 5; i++) mg_peer_status(b, 0, 500);
  }
  len = atomic_load(&mg_balance_peer(b, 0)->until_ms) - mg_balance_now_ms();
  CHECK(len > 9900 && len <= 10000);
  mg_balancer_free(b);
}

/* Slow start: a server that came back gets about 10 % of its share at first,
 * then its full share once slow_start is over. */
static void slow_start(void) {
  int pol[] = { MG_BALANCE_ROUND_ROBIN, MG_BALANCE_RANDOM, MG_BALANCE_P2C };
  int w[] = { 1, 1 };
  for (int k = 0; k < 3; k++) {
    mg_balancer_t *b = make(pol[k], w, 2);
    b->slow_start_ms = 60000;
    mg_peer_set_down(b, 0, 1);
    CHECK(!mg_peer_usable(mg_balance_peer(b, 0)));
    mg_peer_set_down(b, 0, 0);
    CHECK(mg_peer_usable(mg_balance_peer(b, 0)) && atomic_load(&mg_balance_peer(b, 0)->slow_ms) != 0);
    uint64_t rng = 99;
    int c0 = 0;
    for (int i = 0; i < 10000; i++) c0 += mg_balance_pick(b, NULL, &rng) == 0;
    /* round robin: it takes 10 % of its slots (5 % of picks); random: weight
     * 0.1 against 1 (1/11 of picks); p2c: its score is 10 x worse, so idle it
     * loses every comparison */
    CHECK(pol[k] == MG_BALANCE_P2C ? c0 < 100 : c0 > 300 && c0 < 1100);
    atomic_store(&mg_balance_peer(b, 0)->slow_ms, mg_balance_now_ms() - 60001);
    c0 = 0;
    for (int i = 0; i < 10000; i++) c0 += mg_balance_pick(b, NULL, &rng) == 0;
    CHECK(c0 > 4500 && c0 < 5500);
    CHECK(atomic_load(&mg_balance_peer(b, 0)->slow_ms) == 0);
    mg_balancer_free(b);
  }
}


/* ---- dynamic membership (ids, snapshots) ---- */

static void key_of(char *k, size_t n, int i) { snprintf(k, n, "10.%d.%d.%d:80", i >> 16, (i >> 8) & 255, i & 255); }

/* 10,000 servers added at run time (one rebuild) give the same schedule, slot
 * for slot, as the same servers built at once; so does adding them one by one. */
static void runtime_adds_match_load(void) {
  enum { N = 10000, M = 300 };
  int *w = malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) w[i] = i % 7 == 0 ? 5 : 1 + i % 3;
  mg_balancer_t *ref = make(MG_BALANCE_ROUND_ROBIN, w, N);
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, NULL, 0);
  CHECK(mg_balance_snap(b)->n == 0);
  uint64_t rng = 1;
  CHECK(mg_balance_pick(b, NULL, &rng) == -1); /* no members */
  char k[64];
  for (int i = 0; i < N; i++) {
    key_of(k, sizeof(k), i);
    CHECK(mg_balance_add_quiet(b, k, w[i], NULL) == i);
  }
  CHECK(mg_balance_rebuild(b) == 0);
  const mg_bsnap_t *x = mg_balance_snap(ref), *y = mg_balance_snap(b);
  CHECK(x->nschedule == y->nschedule && y->n == N && mg_balance_count(b) == N);
  CHECK(memcmp(x->schedule, y->schedule, x->nschedule * sizeof(uint32_t)) == 0);
  mg_balancer_t *one = make(MG_BALANCE_ROUND_ROBIN, NULL, 0), *ref2 = make(MG_BALANCE_ROUND_ROBIN, w, M);
  for (int i = 0; i < M; i++) {
    key_of(k, sizeof(k), i);
    CHECK(mg_balance_add(one, k, w[i], NULL) == i);
  }
  CHECK(mg_balance_snap(one)->nschedule == mg_balance_snap(ref2)->nschedule);
  CHECK(memcmp(mg_balance_snap(one)->schedule, mg_balance_snap(ref2)->schedule,
               mg_balance_snap(one)->nschedule * sizeof(uint32_t)) == 0);
  mg_balancer_unref(one);
  mg_balancer_unref(ref2);
  mg_balancer_unref(ref);
  mg_balancer_unref(b);
  free(w);
}

/* Ids are permanent: a removed server's id is never another address's; adding
 * it again revives it; drained and removed servers are not picked. */
static void ids_are_permanent(void) {
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, NULL, 0);
  CHECK(mg_balance_add(b, "a:1", 1, NULL) == 0);
  CHECK(mg_balance_add(b, "b:1", 1, NULL) == 1);
  CHECK(mg_balance_add(b, "c:1", 1, NULL) == 2);
  CHECK(mg_balance_add(b, "b:1", 1, NULL) == MG_BALANCE_EEXIST);
  CHECK(mg_balance_remove(b, "b:1") == 1);
  CHECK(mg_balance_remove(b, "b:1") == MG_BALANCE_ENOTFOUND);
  CHECK(mg_balance_drain(b, "zz:1") == MG_BALANCE_ENOTFOUND);
  CHECK(mg_balance_add(b, "d:1", 1, NULL) == 3);
  CHECK(mg_balance_drain(b, "c:1") == 2);
  uint64_t rng = 5;
  for (int i = 0; i < 40; i++) {
    int s = mg_balance_pick(b, NULL, &rng);
    CHECK(s == 0 || s == 3);
  }
  CHECK(mg_balance_snap(b)->n == 2);
  CHECK(mg_balance_add(b, "b:1", 4, NULL) == 1); /* revived, its id again */
  CHECK(atomic_load(&mg_balance_peer(b, 1)->weight) == 4 && mg_peer_usable(mg_balance_peer(b, 1)));
  CHECK(mg_balance_snap(b)->n == 3 && mg_balance_snap(b)->nschedule == 6);
  CHECK(mg_balance_count(b) == 4);
  CHECK(mg_balance_find(b, "c:1") == 2 && mg_balance_find(b, "q:1") == MG_BALANCE_ENOTFOUND);
  mg_balancer_unref(b);
}

/* balance = "hash" and sticky over servers added and removed at run time: a new
 * server takes about 1/n of the keys and no others move much; removing it brings
 * every key back; its sticky token is found; a removed one's is not. */
static void hash_sticky_runtime(void) {
  mg_balancer_t *b = make(MG_BALANCE_HASH, NULL, 0);
  CHECK(mg_balancer_hash_init(b, NULL, INFINITY) == 0);
  CHECK(mg_balancer_sticky_init(b, NULL, (mg_str_t){ "api", 3 }, (mg_str_t){ "s", 1 }) == 0);
  CHECK(mg_balance_pick_hash(b, NULL, 1) == -1); /* no member yet */
  char key[32];
  for (int i = 0; i < 9; i++) {
    snprintf(key, sizeof(key), "10.0.0.%d:80", i + 1);
    CHECK(mg_balance_add(b, key, 1, NULL) == i);
  }
  enum { K = 20000 };
  static int before[K];
  for (int k = 0; k < K; k++) before[k] = mg_balance_pick_hash(b, NULL, (uint64_t)k * 0x9e3779b97f4a7c15ull);
  CHECK(mg_balance_add(b, "10.0.0.99:80", 1, NULL) == 9);
  int to_new = 0, moved = 0;
  for (int k = 0; k < K; k++) {
    int s = mg_balance_pick_hash(b, NULL, (uint64_t)k * 0x9e3779b97f4a7c15ull);
    if (s == 9) to_new++;
    else if (s != before[k]) moved++;
  }
  CHECK(to_new > K / 10 * 8 / 10 && to_new < K / 10 * 12 / 10); /* about 1/10 */
  CHECK(moved < K / 50);                                         /* under 2 % besides */
  for (int i = 0; i < 10; i++) CHECK(mg_balance_sticky_find(b, mg_balance_peer(b, i)->tok) == i);
  uint64_t tok9 = mg_balance_peer(b, 9)->tok;
  CHECK(mg_balance_remove(b, "10.0.0.99:80") == 9);
  CHECK(mg_balance_sticky_find(b, tok9) == -1);
  for (int k = 0; k < K; k++) CHECK(mg_balance_pick_hash(b, NULL, (uint64_t)k * 0x9e3779b97f4a7c15ull) == before[k]);
  CHECK(mg_balance_add(b, "10.0.0.99:80", 1, NULL) == 9 && mg_balance_sticky_find(b, tok9) == 9);
  mg_balancer_unref(b);
}

/* A weight set at run time reaches round robin (a new schedule) and the others
 * (drained servers skipped by each policy). */
static void set_weight_and_drain_every_policy(void) {
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, NULL, 0);
  mg_balance_add(b, "a:1", 1, NULL);
  mg_balance_add(b, "b:1", 1, NULL);
  CHECK(mg_balance_set_weight(b, "b:1", 3) == 1);
  uint64_t rng = 1;
  int count[2] = { 0 };
  for (int i = 0; i < 400; i++) count[mg_balance_pick(b, NULL, &rng)]++;
  CHECK(count[0] == 100 && count[1] == 300);
  mg_balancer_unref(b);
  int policies[] = { MG_BALANCE_LEAST_CONN, MG_BALANCE_P2C, MG_BALANCE_RANDOM };
  for (int p = 0; p < 3; p++) {
    b = make(policies[p], NULL, 0);
    char k[64];
    for (int i = 0; i < 10; i++) {
      key_of(k, sizeof(k), i);
      mg_balance_add(b, k, 1 + i, NULL);
    }
    for (int i = 0; i < 10; i += 2) {
      key_of(k, sizeof(k), i);
      CHECK(mg_balance_drain(b, k) == i);
    }
    for (int i = 0; i < 500; i++) CHECK(mg_balance_pick(b, NULL, &rng) % 2 == 1);
    mg_balancer_unref(b);
  }
}

/* The tried set copes with ids past its map (added after the first mark). */
static void tried_ids_past_map(void) {
  uint64_t map[2] = { 0, 0 };
  mg_tried_t t = { .map = map, .words = 2 };
  CHECK(mg_tried_fits(&t, 127) && !mg_tried_fits(&t, 128));
  mg_tried_set(&t, 100);
  CHECK(mg_tried_has(&t, 100) && !mg_tried_has(&t, 5000));
  mg_tried_clear(&t, 5000); /* out of the map: nothing happens */
  /* no map: ids below 64 in the bits, MG_TRIED_FEW bigger ones in the list */
  mg_tried_t w = { .map = NULL, .words = 0 };
  CHECK(mg_tried_fits(&w, 63) && mg_tried_fits(&w, 64) && !mg_tried_has(&w, 64) && !mg_tried_any(&w));
  for (int i = 0; i < MG_TRIED_FEW; i++) {
    CHECK(mg_tried_fits(&w, 5000 + i));
    mg_tried_set(&w, 5000 + i);
  }
  mg_tried_set(&w, 5000); /* again: no second entry */
  CHECK(w.nfew == MG_TRIED_FEW && mg_tried_has(&w, 5003) && !mg_tried_has(&w, 5004));
  CHECK(!mg_tried_fits(&w, 9999) && mg_tried_fits(&w, 5001) && mg_tried_fits(&w, 7));
  mg_tried_clear(&w, 5001);
  CHECK(!mg_tried_has(&w, 5001) && mg_tried_has(&w, 5002) && mg_tried_fits(&w, 9999));
  mg_tried_reset(&w);
  CHECK(!mg_tried_any(&w) && !mg_tried_has(&w, 5000));
}

/* The policy hook: an extra table per snapshot, built at each change and freed
 * once unreachable (ASan reports any leak or early free). */
static atomic_int ext_live, ext_built;
static int ext_build(mg_balancer_t *b, mg_bsnap_t *s, void *ud) {
  (void)b;
  CHECK(ud == (void *)&ext_live);
  uint32_t *t = malloc(sizeof(uint32_t));
  if (!t) return -1;
  *t = s->n;
  s->ext = t;
  atomic_fetch_add(&ext_live, 1);
  atomic_fetch_add(&ext_built, 1);
  return 0;
}
static void ext_free(void *ext, void *ud) {
  (void)ud;
  free(ext);
  atomic_fetch_sub(&ext_live, 1);
}
static void ext_hook(void) {
  mg_balancer_t *b = make(MG_BALANCE_RANDOM, NULL, 0);
  mg_balance_ext_t e = { ext_build, ext_free, &ext_live };
  CHECK(mg_balancer_set_ext(b, &e) == 0);
  CHECK(atomic_load(&ext_live) == 1 && *(uint32_t *)mg_balance_snap(b)->ext == 0);
  mg_balance_add(b, "a:1", 1, NULL);
  mg_balance_add(b, "b:1", 1, NULL);
  CHECK(atomic_load(&ext_live) == 1 && atomic_load(&ext_built) == 3);
  CHECK(*(uint32_t *)mg_balance_snap(b)->ext == 2);
  mg_balancer_unref(b);
  CHECK(atomic_load(&ext_live) == 0);
}

/* Readers pick while a writer adds, drains, removes and re-weights: every pick
 * is a valid id, and every old snapshot is freed only after the picks that
 * loaded it (ASan: no use after free; bounded counts, no timing). */
typedef struct {
  mg_balancer_t *b;
  atomic_int *stop;
  long picks, bad;
} reader_arg_t;

static void *reader(void *p) {
  reader_arg_t *a = p;
  uint64_t rng = (uint64_t)(uintptr_t)p | 1;
  while (!atomic_load(a->stop) || a->picks < 1000) {
    int s = mg_balance_pick(a->b, NULL, &rng);
    if (s < -1 || s >= mg_balance_count(a->b)) a->bad++;
    a->picks++;
  }
  return NULL;
}

static void swap_under_readers(void) {
  int policies[] = { MG_BALANCE_ROUND_ROBIN, MG_BALANCE_RANDOM, MG_BALANCE_P2C, MG_BALANCE_LEAST_CONN };
  for (int p = 0; p < 4; p++) {
    mg_balancer_t *b = make(policies[p], NULL, 0);
    mg_balance_add(b, "seed:1", 1, NULL);
    char k[64];
    for (int i = 0; i < 300; i++) { /* long least_conn scans: picks that take a while */
      key_of(k, sizeof(k), 1000 + i);
      mg_balance_add_quiet(b, k, 1, NULL);
    }
    mg_balance_rebuild(b);
    atomic_int stop;
    atomic_init(&stop, 0);
    reader_arg_t ra[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
      ra[i] = (reader_arg_t){ b, &stop, 0, 0 };
      CHECK(pthread_create(&th[i], NULL, reader, &ra[i]) == 0);
    }
    for (int i = 0; i < 2000; i++) {
      key_of(k, sizeof(k), i % 200);
      switch (i % 4) {
      case 0: mg_balance_add(b, k, 1 + i % 9, NULL); break;
      case 1: mg_balance_set_weight(b, k, 1 + i % 5); break;
      case 2: mg_balance_drain(b, k); break;
      default: mg_balance_remove(b, k);
      }
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 3; i++) {
      pthread_join(th[i], NULL);
      CHECK(ra[i].bad == 0 && ra[i].picks >= 1000);
    }
    mg_balancer_unref(b);
  }
}

/* An ejection racing with picks on other threads: a pick that sees the flag
 * before the end time is stored must not end the ejection by the last one's end
 * time (0 at the first). Two threads pick without pause while the main thread
 * ejects a server of a fresh balancer, many times over: with an end time far
 * away, no ejection may end. */
typedef struct {
  _Atomic(mg_balancer_t *) cur;
  atomic_int round, seen, stop, backs;
} race_t;

static void race_event(void *data, int i, const char *what) {
  race_t *r = data;
  if (strstr(what, "back") || strstr(what, "ended")) atomic_fetch_add(&r->backs, 1);
}

static void race_picker(void *arg) {
  race_t *r = arg;
  uint64_t rng = (uint64_t)(uintptr_t)&rng | 1;
  int round = 0;
  while (!atomic_load(&r->stop)) {
    while (atomic_load(&r->round) == round && !atomic_load(&r->stop)) sched_yield();
    round = atomic_load(&r->round);
    mg_balancer_t *b = atomic_load(&r->cur);
    atomic_fetch_add(&r->seen, 1); /* started on b */
    if (b) /* until the main thread is done with b */
      while (atomic_load(&r->cur) == b)
        for (int k = 0; k < 8; k++) mg_balance_pick(b, NULL, &rng);
    atomic_fetch_add(&r->seen, 1); /* done with b */
  }
}

static void ejection_races_picks(void) {
  race_t r;
  memset(&r, 0, sizeof(r));
  uv_thread_t th[2];
  for (int t = 0; t < 2; t++) CHECK(uv_thread_create(&th[t], race_picker, &r) == 0);
  int w[] = { 1, 1 };
  for (int it = 0; it < 300 && !atomic_load(&r.backs); it++) {
    mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, 2);
    b->event = race_event;
    b->event_data = &r;
    b->eject_consecutive = 1;
    b->eject_base_ms = 3600 * 1000;
    b->eject_max_percent = 100;
    atomic_store(&r.seen, 0);
    atomic_store(&r.cur, b);
    atomic_fetch_add(&r.round, 1);
    while (atomic_load(&r.seen) < 2) sched_yield(); /* both pick on b */
    mg_peer_status(b, 0, 503);
    mg_peer_status(b, 1, 503);
    atomic_store(&r.cur, NULL);
    while (atomic_load(&r.seen) < 4) sched_yield(); /* both done with b */
    CHECK(!mg_peer_usable(mg_balance_peer(b, 0)) && !mg_peer_usable(mg_balance_peer(b, 1)));
    CHECK(atomic_load(&b->nejected) == 2);
    mg_balancer_free(b);
  }
  atomic_store(&r.stop, 1);
  for (int t = 0; t < 2; t++) uv_thread_join(&th[t]);
  CHECK(atomic_load(&r.backs) == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    { "round robin interleaves weights 1:3 as B A B B", rr_weights_interleave },
    { "round robin cycle holds each server weight times", rr_cycle_exact },
    { "round robin over 10,000 servers picks each once a cycle", rr_ten_thousand },
    { "round robin schedule is bounded", rr_schedule_bounded },
    { "every policy skips tried servers past index 64", tried_past_64 },
    { "least_conn picks fewest active per weight", least_conn_picks_idle },
    { "least_conn past 128 servers keeps to idle servers and spreads over them", least_conn_samples_big },
    { "p2c avoids the slow server", p2c_avoids_slow },
    { "p2c tries a once-slow server again once its average fades", p2c_slow_fades },
    { "p2c lets servers of near scores share the picks", p2c_near_scores_share },
    { "random follows the weights", random_weighted },
    { "policy names", policy_names },
    { "10,000 servers added at run time: the same schedule as at load", runtime_adds_match_load },
    { "ids are permanent; drained and removed are not picked", ids_are_permanent },
    { "set_weight and drain reach every policy", set_weight_and_drain_every_policy },
    { "tried ids past the map", tried_ids_past_map },
    { "a policy's extra table per snapshot", ext_hook },
    { "hash and sticky follow servers added and removed at run time", hash_sticky_runtime },
    { "snapshot swaps while other threads pick", swap_under_readers },
    { "hash keeps a key on its server, within the bound", hash_pick },
    { "sticky tokens of 10,000 servers are found again", sticky_tokens },
    { "every policy skips down and ejected servers", skips_unusable },
    { "ejection: streak, max_percent, end, growth, cap", ejection },
    { "slow start ramps a recovered server's share", slow_start },
    { "an ejection racing with picks on other threads is not ended early", ejection_races_picks },
  };
  return t_run("balance", cases, sizeof(cases) / sizeof(cases[0]));
}
