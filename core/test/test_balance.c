/* core/balance.c: the round robin schedule, the policies over shared peer state,
 * and the tried-servers set past 64 servers. */
#include <stdint.h>
#include <stdlib.h>

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
  mg_tried_t t = { 0, map, (N + 63) / 64 };
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
  CHECK(mg_balance_policy("hash") == -1);
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
    { "random follows the weights", random_weighted },
    { "policy names", policy_names },
  };
  return t_run("balance", cases, sizeof(cases) / sizeof(cases[0]));
}
