/* Choosing a server of an upstream, over state every worker shares.
 *
 * A balancer belongs to one upstream of one config generation: the main thread
 * builds it while it loads the config (config.c), every worker reads it, and it
 * is freed with the generation. Its peers hold per-server state as C11 atomics,
 * updated by whichever worker runs an attempt: nothing here takes a lock.
 *
 * This file knows no config, no request and no Lua: plain weights in, server
 * indices out, so that core/test/test_balance.c can drive it alone. */
#ifndef MG_BALANCE_H
#define MG_BALANCE_H

#include <stdatomic.h>
#include <stdint.h>

enum {
  MG_BALANCE_ROUND_ROBIN, /* smooth weighted, one sequence for the process */
  MG_BALANCE_LEAST_CONN,  /* fewest active attempts per unit of weight */
  MG_BALANCE_P2C,         /* the better of two random choices: (active + 1) x EWMA */
  MG_BALANCE_RANDOM,      /* weighted random */
};

/* One server's state, shared by every worker. Relaxed atomics: each value is a
 * hint for the next choice, never a guard of memory. */
typedef struct {
  atomic_int active;    /* attempts in flight on it (connecting or exchanging) */
  atomic_uint ewma_us;  /* moving average of the time to a response head, in µs
                           (weight 1/8 per sample); 0: no sample yet */
  atomic_int fails;     /* consecutive failed attempts (reset by a response head) */
  atomic_int weight;    /* the weight least_conn and p2c use; starts as configured */
} mg_peer_t;

/* Most entries a round robin schedule holds: weights adding up to more are scaled
 * down in proportion (each server keeps at least one slot). */
#define MG_BALANCE_SCHEDULE_MAX (1u << 20)
/* least_conn looks at most this many servers a pick, from a random start: exact
 * for upstreams up to this size, a bounded sample above it. */
#define MG_BALANCE_SCAN 128

typedef struct mg_balancer_s {
  int policy;         /* MG_BALANCE_* */
  int n;              /* servers */
  mg_peer_t *peers;   /* n of them */
  uint32_t *schedule; /* round robin: server indices, each weight times, interleaved */
  uint32_t nschedule;
  uint64_t *cum;      /* random and p2c: cumulative configured weights; NULL when
                         every weight is the same (uniform choice) */
  uint64_t total;     /* sum of the configured weights */
  /* round robin's position in the schedule, on a cache line of its own: every
   * worker increments it once per pick */
  _Alignas(64) atomic_uint_fast64_t rr;
  /* i12-retry: the upstream's retry and circuit breaker state, shared by every
   * worker (relaxed atomics, on a cache line of their own; proxy.c keeps them).
   * Gauges: */
  _Alignas(64) atomic_int rq_active; /* requests in flight on the upstream (first
                                        attempt to the response's end) */
  atomic_int conns;                  /* connections in use for them: connecting or
                                        carrying a request (idle pooled ones are the
                                        worker's, not the upstream's) */
  atomic_int pending;                /* of those, still connecting */
  atomic_int retries_active;         /* retries in flight */
  /* counters, from the generation's load */
  atomic_uint_fast64_t requests, retries, retries_budget_exceeded, overflow_connections,
      overflow_pending, overflow_requests;
} mg_balancer_t;

/* Which servers a request has tried already. Upstreams of up to 64 servers use
 * `bits`; bigger ones a bitmap (`map`, n bits) the caller allocates (in the
 * request's arena) before the first mark. */
typedef struct {
  uint64_t bits;
  uint64_t *map;
} mg_tried_t;

static inline int mg_tried_has(const mg_tried_t *t, int i) {
  if (t->map) return (int)((t->map[i >> 6] >> (i & 63)) & 1);
  return i < 64 && ((t->bits >> i) & 1);
}
static inline void mg_tried_set(mg_tried_t *t, int i) {
  if (t->map) t->map[i >> 6] |= (uint64_t)1 << (i & 63);
  else if (i < 64) t->bits |= (uint64_t)1 << i;
}
static inline void mg_tried_clear(mg_tried_t *t, int i) {
  if (t->map) t->map[i >> 6] &= ~((uint64_t)1 << (i & 63));
  else if (i < 64) t->bits &= ~((uint64_t)1 << i);
}

/* Builds the balancer of `n` servers (n >= 1) with these weights (1..1000).
 * Returns NULL when out of memory; the caller owns the result (mg_balancer_free). */
mg_balancer_t *mg_balancer_new(int policy, const int *weights, int n);
void mg_balancer_free(mg_balancer_t *b);

/* The policy named `name`, or -1. */
int mg_balance_policy(const char *name);

/* Picks a server not in `tried` (NULL: none tried). `rng` is the calling worker's
 * random state (any non-zero seed). -1 when every server has been tried. */
int mg_balance_pick(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng);

/* An attempt on server i starts / ends (every start has exactly one end). */
static inline void mg_peer_begin(mg_balancer_t *b, int i) {
  atomic_fetch_add_explicit(&b->peers[i].active, 1, memory_order_relaxed);
}
static inline void mg_peer_end(mg_balancer_t *b, int i) {
  atomic_fetch_sub_explicit(&b->peers[i].active, 1, memory_order_relaxed);
}

/* Server i answered with a head `us` µs after the attempt started, or failed
 * before one. */
void mg_peer_answered(mg_balancer_t *b, int i, uint64_t us);
void mg_peer_failed(mg_balancer_t *b, int i);

#endif
