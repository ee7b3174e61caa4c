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

#include "maglev.h"

enum {
  MG_BALANCE_ROUND_ROBIN, /* smooth weighted, one sequence for the process */
  MG_BALANCE_LEAST_CONN,  /* fewest active attempts per unit of weight */
  MG_BALANCE_P2C,         /* the better of two random choices: (active + 1) x EWMA */
  MG_BALANCE_RANDOM,      /* weighted random */
  MG_BALANCE_HASH,        /* consistent hashing (Maglev) with bounded loads */
};

/* One server's state, shared by every worker. Relaxed atomics: each value is a
 * hint for the next choice, never a guard of memory. */
typedef struct {
  atomic_int active;    /* attempts in flight on it (connecting or exchanging) */
  atomic_uint ewma_us;  /* moving average of the time to a response head, in µs
                           (weight 1/8 per sample); 0: no sample yet */
  atomic_int fails;     /* consecutive failed attempts (reset by a response head) */
  atomic_int weight;    /* the weight least_conn and p2c use; starts as configured */
  atomic_uint ewma_at;  /* when ewma_us last had a sample (p2c, ms, wraps) */
  /* i12-health: health, ejection and slow start */
  atomic_uint flags;    /* MG_PEER_* bits; any bit set: takes no new request */
  atomic_int errs;      /* consecutive 5xx answers or failed attempts (ejection) */
  atomic_int ejections; /* times ejected so far (back to 0 after 10 x base without one) */
  atomic_uint_fast64_t until_ms; /* the last ejection's end (mg_balance_now_ms; top bit: ended); 0: none */
  atomic_uint_fast64_t slow_ms;  /* slow start: when it came back; 0: at full weight */
} mg_peer_t;

/* p2c: a server's average counts half as much for every this many ms without a
 * sample, so that a server once slow (which p2c then avoids, and so never
 * measures again) is tried again after a while. */
#define MG_BALANCE_EWMA_HALF_MS 5000u


/* i12-health: mg_peer_t.flags */
#define MG_PEER_DOWN 1u    /* failed its active health checks (core/health.c) */
#define MG_PEER_EJECTED 2u /* ejected after consecutive errors (mg_peer_status) */
#define MG_PEER_EJECTING 4u /* an ejection being set up (its end time not stored yet) */

/* May the server take new requests (no flag set)? An ejection whose time is
 * over still counts until a pick looks at the server (balance.c ends it then). */
static inline int mg_peer_usable(const mg_peer_t *p) {
  return atomic_load_explicit(&p->flags, memory_order_relaxed) == 0;
}

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
  /* hash: the Maglev table over the servers' names and weights, and the bound
   * (a server takes a request while its load stays within (1 + eps) x the mean;
   * INFINITY: no bound) */
  mg_maglev_t *maglev;
  double hash_eps;
  /* sticky sessions: each server's token (what the cookie carries), and the
   * tokens sorted with their servers for the lookup; NULL: no stickiness */
  uint64_t *tok;
  uint64_t *tok_sorted; /* n pairs: token, server */
  /* round robin's position in the schedule, on a cache line of its own: every
   * worker increments it once per pick */
  _Alignas(64) atomic_uint_fast64_t rr;
  /* hash: attempts in flight on all the servers (the bound's total) */
  _Alignas(64) atomic_llong active_total;
  /* i12-health: set by config.c after mg_balancer_new (0: off) */
  int eject_consecutive;   /* errors in a row that eject a server */
  uint64_t eject_base_ms;  /* first ejection's length; the k-th lasts k x base, at most 10 x */
  int eject_max_percent;   /* at most this share of the servers ejected at once */
  uint64_t slow_start_ms;  /* a recovered server's weight ramps from 10 % to 100 % */
  int panic;               /* none usable: pick among all (mg_balance_pick_any) */
  atomic_int nejected;     /* servers with MG_PEER_EJECTED */
  atomic_uint_fast64_t panic_log_ms; /* last "panic" log line (one a second) */
  /* a server was ejected or came back: `what` for a log line (NULL: not told) */
  void (*event)(void *data, int i, const char *what);
  void *event_data;
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

/* balance = "hash": builds the Maglev table over the servers' names ("host:port"
 * as written) and the configured weights; eps is the load bound (INFINITY: none).
 * 0, or MG_ENOMEM / MG_EINVAL (from mg_maglev_new). */
int mg_balancer_hash_init(mg_balancer_t *b, const mg_str_t *names, double eps);

/* Sticky sessions: each server's token is a keyed hash (SipHash under a key
 * derived from `secret` and the upstream's name) of its name, so a cookie
 * names a server without showing its address. 0, or MG_ENOMEM. */
int mg_balancer_sticky_init(mg_balancer_t *b, const mg_str_t *names, mg_str_t upstream, mg_str_t secret);
/* The server whose token is `tok`, or -1. O(log n). */
int mg_balance_sticky_find(const mg_balancer_t *b, uint64_t tok);

/* The policy named `name`, or -1. */
int mg_balance_policy(const char *name);

/* Picks a usable server (mg_peer_usable) not in `tried` (NULL: none tried).
 * `rng` is the calling worker's random state (any non-zero seed). -1 when every
 * usable server has been tried (or none is usable). A slow-starting server takes
 * its ramped share. */
int mg_balance_pick(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng);

/* balance = "hash": the server for a key's hash (mg_maglev_hash), usable and not
 * in `tried`: the key's own server unless it is past the load bound, else the
 * next one along the table's walk. -1 when no usable server is left untried. */
int mg_balance_pick_hash(mg_balancer_t *b, const mg_tried_t *tried, uint64_t hash);

/* Server i may take a new request now (mg_peer_usable, after ending an ejection
 * whose time is over): the sticky cookie's server is checked with it. */
int mg_balance_usable(mg_balancer_t *b, int i);

/* An attempt on server i starts / ends (every start has exactly one end). */
static inline void mg_peer_begin(mg_balancer_t *b, int i) {
  atomic_fetch_add_explicit(&b->peers[i].active, 1, memory_order_relaxed);
  if (b->policy == MG_BALANCE_HASH) atomic_fetch_add_explicit(&b->active_total, 1, memory_order_relaxed);
}
static inline void mg_peer_end(mg_balancer_t *b, int i) {
  atomic_fetch_sub_explicit(&b->peers[i].active, 1, memory_order_relaxed);
  if (b->policy == MG_BALANCE_HASH) atomic_fetch_sub_explicit(&b->active_total, 1, memory_order_relaxed);
}

/* Server i answered with a head `us` µs after the attempt started, or failed
 * before one. */
void mg_peer_answered(mg_balancer_t *b, int i, uint64_t us);
void mg_peer_failed(mg_balancer_t *b, int i);

/* ---- i12-health ---- */

/* Milliseconds of the monotonic clock (uv_hrtime's, in ms). */
uint64_t mg_balance_now_ms(void);
/* Server i answered with `status`: a 5xx counts toward ejection (like a failed
 * attempt), anything else ends the streak. */
void mg_peer_status(mg_balancer_t *b, int i, int status);
/* Panic: the untried server with the fewest consecutive failures, usable or not;
 * -1 when every server was tried. O(n). */
int mg_balance_pick_any(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng);
/* The active checks' verdict on server i (1: up, 0: down); coming up starts its
 * slow start. */
void mg_peer_set_down(mg_balancer_t *b, int i, int down);

#endif
