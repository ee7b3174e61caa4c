/* core/balance.c: the round robin schedule, the policies over shared peer state,
 * and the tried-servers set past 64 servers. */
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
  CHECK(b->nschedule == 4);
  mg_balancer_free(b);
}

/* Over one cycle each server appears exactly its weight times, and no server's
 * gaps differ by more than one slot from even spacing. Weights with a common
 * divisor are reduced (100:300 is a 4-slot cycle). */
static void rr_cycle_exact(void) {
  int w[] = { 5, 2, 3, 1 };
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, 4);
  CHECK(b->nschedule == 11);
  int count[4] = { 0 };
  for (uint32_t i = 0; i < b->nschedule; i++) count[b->schedule[i]]++;
  for (int i = 0; i < 4; i++) CHECK(count[i] == w[i]);
  /* server 0 (5 of 11) never twice in a row more than once per cycle */
  int runs = 0;
  for (uint32_t i = 0; i + 1 < b->nschedule; i++) runs += b->schedule[i] == 0 && b->schedule[i + 1] == 0;
  CHECK(runs <= 1);
  mg_balancer_free(b);
  int w2[] = { 100, 300 };
  b = make(MG_BALANCE_ROUND_ROBIN, w2, 2);
  CHECK(b->nschedule == 4);
  mg_balancer_free(b);
}

/* 10,000 servers of weight 1: one slot each, every one picked once a cycle. */
static void rr_ten_thousand(void) {
  enum { N = 10000 };
  int *w = malloc(N * sizeof(int));
  for (int i = 0; i < N; i++) w[i] = 1;
  mg_balancer_t *b = make(MG_BALANCE_ROUND_ROBIN, w, N);
  CHECK(b->nschedule == N);
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
  CHECK(b->nschedule <= MG_BALANCE_SCHEDULE_MAX + N);
  int *count = calloc(N, sizeof(int));
  for (uint32_t i = 0; i < b->nschedule; i++) count[b->schedule[i]]++;
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
  mg_tried_t t = { 0, map };
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
  uint32_t at = atomic_load(&b->peers[0].ewma_at);
  atomic_store(&b->peers[0].ewma_at, at - 60000u);
  for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 0);
  /* one fresh slow answer and it is avoided again: the stale average counted
   * as faded (24 us), the new sample (100 ms) weighs 1/8 of it: 12.5 ms */
  mg_peer_answered(b, 0, 100000);
  CHECK(atomic_load(&b->peers[0].ewma_us) > 12000 && atomic_load(&b->peers[0].ewma_us) < 13000);
  for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, NULL, &rng) == 1);
  mg_balancer_free(b);
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
  mg_tried_t t = { 0, NULL };
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
    CHECK(mg_balance_sticky_find(b, b->tok[i]) == i);
    CHECK(b->tok[i] != b2->tok[i] && b->tok[i] != b3->tok[i]);
  }
  CHECK(mg_balance_sticky_find(b, b2->tok[0]) == -1 || b2->tok[0] == b->tok[mg_balance_sticky_find(b, b2->tok[0])]);
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
      atomic_store(&b->peers[1].flags, MG_PEER_DOWN);
      atomic_store(&b->peers[3].flags, MG_PEER_EJECTED);
      atomic_store(&b->peers[3].until_ms, mg_balance_now_ms() + 60000);
      uint64_t rng = 7;
      int count[5] = { 0 };
      for (int i = 0; i < 3000; i++) count[mg_balance_pick(b, NULL, &rng)]++;
      CHECK(count[1] == 0 && count[3] == 0);
      CHECK(count[0] > 0 && count[2] > 0 && count[4] > 0);
      mg_tried_t t = { 0, NULL };
      mg_tried_set(&t, 0);
      mg_tried_set(&t, 2);
      for (int i = 0; i < 100; i++) CHECK(mg_balance_pick(b, &t, &rng) == 4);
      mg_tried_set(&t, 4);
      CHECK(mg_balance_pick(b, &t, &rng) == -1);
      atomic_store(&b->peers[0].flags, MG_PEER_DOWN);
      atomic_store(&b->peers[2].flags, MG_PEER_DOWN);
      atomic_store(&b->peers[4].flags, MG_PEER_DOWN);
      CHECK(mg_balance_pick(b, NULL, &rng) == -1);
      /* panic: the fewest failures, usable or not */
      for (int i = 0; i < 5; i++) atomic_store(&b->peers[i].fails, 5 - i);
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
  CHECK(mg_peer_usable(&b->peers[0]));
  mg_peer_failed(b, 0); /* a failed attempt counts too */
  CHECK(!mg_peer_usable(&b->peers[0]) && ev.n == 1);
  CHECK(strstr(ev.last, "0 ejected for 1s") == ev.last);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 1, 502);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 2, 502); /* 3 of 4 would pass 50 % */
  CHECK(!mg_peer_usable(&b->peers[1]) && mg_peer_usable(&b->peers[2]));
  CHECK(atomic_load(&b->nejected) == 2 && ev.n == 2);
  uint64_t rng = 3;
  for (int i = 0; i < 100; i++) {
    int s = mg_balance_pick(b, NULL, &rng);
    CHECK(s == 2 || s == 3);
  }
  /* time passes: the ejection is over for the first pick that looks */
  atomic_store(&b->peers[0].until_ms, mg_balance_now_ms() - 1);
  int seen0 = 0;
  for (int i = 0; i < 8; i++) seen0 += mg_balance_pick(b, NULL, &rng) == 0;
  CHECK(seen0 == 2 && mg_peer_usable(&b->peers[0]) && atomic_load(&b->nejected) == 1);
  CHECK(strcmp(ev.last, "0 back from ejection") == 0);
  for (int i = 0; i < 5; i++) mg_peer_status(b, 0, 500);
  CHECK(strstr(ev.last, "0 ejected for 2s") == ev.last); /* base x 2 */
  uint64_t len = atomic_load(&b->peers[0].until_ms) - mg_balance_now_ms();
  CHECK(len > 1900 && len <= 2000);
  /* the cap: 10 x base */
  for (int k = 0; k < 12; k++) {
    atomic_store(&b->peers[0].until_ms, mg_balance_now_ms() - 1);
    mg_balance_pick(b, NULL, &rng), mg_balance_pick(b, NULL, &rng), mg_balance_pick(b, NULL, &rng);
    mg_balance_pick(b, NULL, &rng);
    for (int i = 0; i < 5; i++) mg_peer_status(b, 0, 500);
  }
  len = atomic_load(&b->peers[0].until_ms) - mg_balance_now_ms();
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
    CHECK(!mg_peer_usable(&b->peers[0]));
    mg_peer_set_down(b, 0, 0);
    CHECK(mg_peer_usable(&b->peers[0]) && atomic_load(&b->peers[0].slow_ms) != 0);
    uint64_t rng = 99;
    int c0 = 0;
    for (int i = 0; i < 10000; i++) c0 += mg_balance_pick(b, NULL, &rng) == 0;
    /* round robin: it takes 10 % of its slots (5 % of picks); random: weight
     * 0.1 against 1 (1/11 of picks); p2c: its score is 10 x worse, so idle it
     * loses every comparison */
    CHECK(pol[k] == MG_BALANCE_P2C ? c0 < 100 : c0 > 300 && c0 < 1100);
    atomic_store(&b->peers[0].slow_ms, mg_balance_now_ms() - 60001);
    c0 = 0;
    for (int i = 0; i < 10000; i++) c0 += mg_balance_pick(b, NULL, &rng) == 0;
    CHECK(c0 > 4500 && c0 < 5500);
    CHECK(atomic_load(&b->peers[0].slow_ms) == 0);
    mg_balancer_free(b);
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
  race_t r = { 0 };
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
    CHECK(!mg_peer_usable(&b->peers[0]) && !mg_peer_usable(&b->peers[1]));
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
    { "p2c avoids the slow server", p2c_avoids_slow },
    { "p2c tries a once-slow server again once its average fades", p2c_slow_fades },
    { "random follows the weights", random_weighted },
    { "policy names", policy_names },
    { "hash keeps a key on its server, within the bound", hash_pick },
    { "sticky tokens of 10,000 servers are found again", sticky_tokens },
    { "every policy skips down and ejected servers", skips_unusable },
    { "ejection: streak, max_percent, end, growth, cap", ejection },
    { "slow start ramps a recovered server's share", slow_start },
    { "an ejection racing with picks on other threads is not ended early", ejection_races_picks },
  };
  return t_run("balance", cases, sizeof(cases) / sizeof(cases[0]));
}
