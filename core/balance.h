/* Choosing a server of an upstream, over state every worker shares.
 *
 * A balancer belongs to one upstream: the main thread builds it while it loads
 * the config (config.c), every worker reads it, and it is freed with the last
 * generation that holds it (a reload adopts the old balancer when the upstream's
 * config did not change, runtime changes and server state included). Its peers
 * hold per-server state as C11 atomics, updated by whichever worker runs an
 * attempt; membership (servers added, drained, removed, re-weighted at run time)
 * is an immutable snapshot swapped atomically: no pick takes a lock.
 *
 * This file knows no config, no request and no Lua: plain weights in, server
 * indices out, so that core/test/test_balance.c can drive it alone. */
#ifndef MG_BALANCE_H
#define MG_BALANCE_H

#include <pthread.h>
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
  atomic_int weight;    /* the weight every policy uses; starts as configured,
                           mg_balance_set_weight changes it */
  atomic_uint ewma_at;  /* when ewma_us last had a sample (p2c: mg_balance_now_ms, 32 bits) */
  atomic_uint flags;    /* MG_PEER_* bits; any bit set: takes no new request */
  /* i12-health: ejection and slow start */
  atomic_int errs;      /* consecutive 5xx answers or failed attempts (ejection) */
  atomic_int ejections; /* times ejected so far (back to 0 after 10 x base without one) */
  atomic_uint_fast64_t until_ms; /* the last ejection's end (mg_balance_now_ms; top bit: ended); 0: none */
  atomic_uint_fast64_t slow_ms;  /* slow start: when it came back; 0: at full weight */
  uint64_t tok;         /* sticky: the server's token (set before its id is handed out
                           or by mg_balancer_sticky_init; never changes after) */
} mg_peer_t;

/* p2c: a server's average counts half as much for every this many ms without a
 * sample, so that a server once slow (which p2c then avoids, and so never
 * measures again) is tried again after a while. */
#define MG_BALANCE_EWMA_HALF_MS 5000u

/* mg_peer_t.flags bits (lua/moongate/upstreams.lua knows them all) */
#define MG_PEER_DOWN 1u            /* failed its active health checks (core/health.c) */
#define MG_PEER_EJECTED 2u         /* ejected after consecutive errors (mg_peer_status) */
#define MG_PEER_DRAINING (1u << 2) /* drained: finishes what it has, takes nothing new */
#define MG_PEER_REMOVED (1u << 3)  /* removed: likewise, and gone from servers() */

#define MG_PEER_EJECTING (1u << 4) /* an ejection being set up (its end time not stored yet) */

/* May server p take a new request (no flag set)? Every pick skips servers that
 * may not. An ejection whose time is over still counts until a pick looks at the
 * server (balance.c ends it then). */
static inline int mg_peer_usable(const mg_peer_t *p) {
  return atomic_load_explicit(&p->flags, memory_order_relaxed) == 0;
}

/* Most entries a round robin schedule holds: weights adding up to more are scaled
 * down in proportion (each server keeps at least one slot). */
#define MG_BALANCE_SCHEDULE_MAX (1u << 20)
/* least_conn looks at every member of an upstream of up to MG_BALANCE_SCAN (exact),
 * and at MG_BALANCE_SAMPLE members drawn at random in a bigger one (the best of d
 * random choices, d = 8: a scan of 128 cost ~14,000 instructions a pick). */
#define MG_BALANCE_SCAN 128
#define MG_BALANCE_SAMPLE 8

/* Server ids. A balancer's servers live in chunks of MG_BALANCE_CHUNK under a
 * directory of MG_BALANCE_DIR chunk pointers, both fixed: a chunk is allocated
 * once, when its first id is handed out, and freed with the balancer, so a
 * server's state never moves and a reader never races with a reallocation. Ids
 * are handed out in order and never reused for another address (adding a removed
 * address again revives its id). */
#define MG_BALANCE_CHUNK 1024
#define MG_BALANCE_DIR 128
#define MG_BALANCE_MAX (MG_BALANCE_CHUNK * MG_BALANCE_DIR)

typedef struct mg_balancer_s mg_balancer_t;

/* The current members and what the policy precomputed over them, immutable once
 * published. A change (add, remove, drain, weight) builds a new snapshot under the
 * balancer's mutex and swaps the pointer; picks read whichever snapshot they
 * loaded. */
typedef struct mg_bsnap_s {
  uint32_t n;         /* members: servers neither drained nor removed */
  uint32_t *ids;      /* their ids, ascending */
  uint32_t *schedule; /* round robin: ids, each weight times, interleaved */
  uint32_t nschedule;
  uint64_t *cum;      /* random and p2c: cumulative weights over ids[]; NULL when
                         every weight is the same (uniform choice) */
  uint64_t total;     /* sum of the members' weights */
  void *ext;          /* a policy's own table (mg_balance_ext_t), or NULL */
  /* balance = "hash": the Maglev table over the members' names (their keys) and
   * weights, backend k being ids[k]; NULL without members */
  mg_maglev_t *maglev;
  /* sticky: the members' tokens sorted, n pairs (token, id); NULL: no stickiness */
  uint64_t *tok_sorted;
} mg_bsnap_t;

/* A policy's extra table in each snapshot (the hash policy's Maglev table):
 * `build` runs under the writers' mutex with the new snapshot's members and
 * weights filled in, sets s->ext (0) or fails (-1: the change is refused);
 * `free` releases one once no pick can see it. */
typedef struct {
  int (*build)(mg_balancer_t *b, mg_bsnap_t *s, void *ud);
  void (*free)(void *ext, void *ud);
  void *ud;
} mg_balance_ext_t;

/* Reclaiming an old snapshot. A pick is synchronous (no await inside), so each
 * thread that picks owns a sequence counter on its own cache line (a process-wide
 * registry, a slot claimed at the thread's first pick): odd while it picks. The
 * writer swaps the pointer, then waits, for each thread found odd, until its
 * counter moves on; after that no pick can still hold the old snapshot and it is
 * freed. Readers pay two uncontended increments of their own line (the first
 * sequentially consistent, to order it before the pointer load), never a lock or
 * a shared write; writers (never on the request path) wait at most one pick per
 * thread. Chosen over a grace period through the workers' loops because it needs
 * no cooperation from the loops (a C test drives it with plain threads) and frees
 * at once. Past MG_BALANCE_READERS threads, the extra ones share one counter of
 * picks in progress (still correct; a writer may wait longer). */
#define MG_BALANCE_READERS 256

struct mg_balancer_s {
  int policy;           /* MG_BALANCE_* */
  char name[64];        /* for log lines (the upstream's name; "" in tests) */
  atomic_int nids;      /* ids handed out so far (released after the id's slot is set) */
  mg_peer_t *chunk[MG_BALANCE_DIR];  /* the servers' shared state, by id */
  void **data[MG_BALANCE_DIR];       /* the owner's object per id (mg_server_t) */
  _Atomic(mg_bsnap_t *) snap;        /* never NULL once built */
  atomic_int refs;      /* generations sharing the balancer (a reload adopts it) */
  void (*data_free)(void *data);     /* frees data[] entries with the balancer */
  mg_balance_ext_t ext;
  pthread_mutex_t lock; /* the writers' mutex */
  struct mg_bindex_s *index;         /* key -> id, writers only (under the mutex) */
  char (*keys[MG_BALANCE_DIR])[64];  /* each id's key (its Maglev name and sticky
                                        token's input); "" for mg_balancer_new's */
  /* hash: the load bound (a server takes a request while its load stays within
   * (1 + eps) x the mean; INFINITY: no bound) */
  double hash_eps;
  /* sticky: on, and the SipHash key of the tokens (mg_balancer_sticky_init) */
  int sticky;
  uint64_t sticky_key[2];
  /* round robin's position in the schedule, on a cache line of its own: every
   * worker increments it once per pick */
  _Alignas(64) atomic_uint_fast64_t rr;
  /* hash: attempts in flight on all the servers (the bound's total) */
  _Alignas(64) atomic_llong active_total;
  /* i12-health: set by config.c after mg_balancer_new (0: off) */
  int eject_consecutive;   /* errors in a row that eject a server */
  uint64_t eject_base_ms;  /* first ejection's length; the k-th lasts k x base, at most 10 x */
  int eject_max_percent;   /* at most this share of the members ejected at once */
  uint64_t slow_start_ms;  /* a recovered server's weight ramps from 10 % to 100 % */
  int panic;               /* none usable: pick among all (mg_balance_pick_any) */
  atomic_int nejected;     /* servers with MG_PEER_EJECTED */
  atomic_uint_fast64_t panic_log_ms; /* last "panic" log line (one a second) */
  /* a server was ejected or came back: `what` for a log line (NULL: not told);
   * `data` is event_data, `i` the server's id */
  void (*event)(void *data, int i, const char *what);
  void *event_data;
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
  /* counters, since the balancer was built (a reload that adopts it keeps them) */
  atomic_uint_fast64_t requests, retries, retries_budget_exceeded, overflow_connections,
      overflow_pending, overflow_requests;
};

/* Server i's shared state (0 <= i < mg_balance_count(b)). */
static inline mg_peer_t *mg_balance_peer(const mg_balancer_t *b, int i) {
  return &b->chunk[i / MG_BALANCE_CHUNK][i % MG_BALANCE_CHUNK];
}
/* The owner's object given for server i (NULL for servers made by mg_balancer_new). */
static inline void *mg_balance_data(const mg_balancer_t *b, int i) {
  return b->data[i / MG_BALANCE_CHUNK][i % MG_BALANCE_CHUNK];
}
/* Ids handed out so far: every id below it is valid (members or not). */
static inline int mg_balance_count(const mg_balancer_t *b) {
  return atomic_load_explicit(&b->nids, memory_order_acquire);
}

/* Which servers a request has tried, by id. Ids below 64 go in `bits`, up to
 * MG_TRIED_FEW bigger ones in `few` (a request of a big upstream tries one or two
 * servers: no bitmap to allocate and clear); past that the caller makes `map`
 * (words x 64 bits, in the request's arena, holding all of them) and ids added at
 * run time may outgrow it: the caller grows it (copying) before marking (proxy.c
 * tried_mark). An id the map does not reach is not tried. */
#define MG_TRIED_FEW 4
typedef struct {
  uint64_t bits;
  int32_t few[MG_TRIED_FEW];
  uint32_t nfew;
  uint64_t *map;
  uint32_t words;
} mg_tried_t;

static inline int mg_tried_has(const mg_tried_t *t, int i) {
  if (t->map) return (uint32_t)(i >> 6) < t->words && (int)((t->map[i >> 6] >> (i & 63)) & 1);
  if (i < 64) return (int)((t->bits >> i) & 1);
  for (uint32_t k = 0; k < t->nfew; k++)
    if (t->few[k] == i) return 1;
  return 0;
}
/* Marks id i (there must be room: mg_tried_fits). */
static inline void mg_tried_set(mg_tried_t *t, int i) {
  if (t->map) t->map[i >> 6] |= (uint64_t)1 << (i & 63);
  else if (i < 64) t->bits |= (uint64_t)1 << i;
  else if (!mg_tried_has(t, i)) t->few[t->nfew++] = i;
}
static inline int mg_tried_fits(const mg_tried_t *t, int i) {
  return t->map ? (uint32_t)(i >> 6) < t->words : i < 64 || t->nfew < MG_TRIED_FEW || mg_tried_has(t, i);
}
static inline void mg_tried_clear(mg_tried_t *t, int i) {
  if (t->map) {
    if ((uint32_t)(i >> 6) < t->words) t->map[i >> 6] &= ~((uint64_t)1 << (i & 63));
  } else if (i < 64) {
    t->bits &= ~((uint64_t)1 << i);
  } else {
    for (uint32_t k = 0; k < t->nfew; k++)
      if (t->few[k] == i) t->few[k] = t->few[--t->nfew];
  }
}
/* Nothing tried (the map, if any, kept for reuse). */
static inline void mg_tried_reset(mg_tried_t *t) {
  if (t->map)
    for (uint32_t k = 0; k < t->words; k++) t->map[k] = 0;
  t->bits = 0;
  t->nfew = 0;
}
/* Anything tried? */
static inline int mg_tried_any(const mg_tried_t *t) {
  if (t->map)
    for (uint32_t k = 0; k < t->words; k++)
      if (t->map[k]) return 1;
  return t->bits != 0 || t->nfew != 0;
}

/* Builds the balancer of `n` servers (n >= 0) with these weights (1..1000), ids
 * 0..n-1 with no data and no key (config.c adds its servers with
 * mg_balance_add instead). Returns NULL when out of memory; the caller owns the
 * one reference (mg_balancer_unref). */
mg_balancer_t *mg_balancer_new(int policy, const int *weights, int n);
void mg_balancer_ref(mg_balancer_t *b);
/* Drops a reference; the last frees the balancer, its snapshots and data. */
void mg_balancer_unref(mg_balancer_t *b);
#define mg_balancer_free mg_balancer_unref
/* Frees each server's data with the balancer. */
void mg_balancer_set_data_free(mg_balancer_t *b, void (*data_free)(void *data));
/* Plugs a policy's extra table into every snapshot from now on (rebuilds the
 * current one). 0, or -1 when building it failed (nothing changed). */
int mg_balancer_set_ext(mg_balancer_t *b, const mg_balance_ext_t *ext);

/* balance = "hash": the Maglev table of every snapshot from now on, over the
 * members' names and weights; eps is the load bound (INFINITY: none). `names`
 * (NULL: the ids' keys) names ids 0..mg_balance_count(b)-1 (for balancers made by
 * mg_balancer_new; at most 63 bytes each). A membership change rebuilds the table
 * (O(M log M), M about 100 x the members: about 0.3 s at 10,000), on the thread
 * that made it. 0, or MG_ENOMEM / MG_EINVAL (from mg_maglev_new). */
int mg_balancer_hash_init(mg_balancer_t *b, const mg_str_t *names, double eps);

/* Sticky sessions: each server's token is a keyed hash (SipHash under a key
 * derived from `secret` and the upstream's name) of its name (its key, or
 * names[i] as above), computed when its id is handed out (runtime adds too), so a
 * cookie names a server without showing its address. 0, or MG_ENOMEM. */
int mg_balancer_sticky_init(mg_balancer_t *b, const mg_str_t *names, mg_str_t upstream, mg_str_t secret);
/* The member whose token is `tok`, or -1. O(log n), over the current snapshot. */
int mg_balance_sticky_find(mg_balancer_t *b, uint64_t tok);

/* The policy named `name`, or -1. */
int mg_balance_policy(const char *name);

/* Picks a server not in `tried` (NULL: none tried) among the current members
 * that are usable. `rng` is the calling worker's random state (any non-zero
 * seed). -1 when there is none. A slow-starting server takes its ramped share. */
int mg_balance_pick(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng);

/* balance = "hash": the member for a key's hash (mg_maglev_hash), usable and not
 * in `tried`: the key's own server unless it is past the load bound, else the
 * next one along the table's walk. -1 when no usable server is left untried. */
int mg_balance_pick_hash(mg_balancer_t *b, const mg_tried_t *tried, uint64_t hash);

/* Server i may take a new request now (mg_peer_usable, after ending an ejection
 * whose time is over): the sticky cookie's server is checked with it. */
int mg_balance_usable(mg_balancer_t *b, int i);

/* The current members (servers neither drained nor removed). */
int mg_balance_members(mg_balancer_t *b);

/* ---- membership (writers: serialised by the balancer's mutex; never call these
 * from inside a pick) ---- */

enum {
  MG_BALANCE_EEXIST = -2,   /* add: the key is a member already */
  MG_BALANCE_ENOTFOUND = -3,/* no server with that key (or it was removed) */
  MG_BALANCE_EFULL = -4,    /* MG_BALANCE_MAX ids handed out */
  MG_BALANCE_ENOMEM = -5,
};

/* Adds server `key` (at most 63 bytes; the address as text) with `weight`, or
 * revives it when it was drained or removed (its id again, with this weight; its
 * old data stays and `data` is freed with data_free). Returns the id, or
 * MG_BALANCE_*. `data` belongs to the balancer from then on (on success). */
int mg_balance_add(mg_balancer_t *b, const char *key, int weight, void *data);
/* mg_balance_add without publishing (mg_balance_rebuild publishes): for many at once. */
int mg_balance_add_quiet(mg_balancer_t *b, const char *key, int weight, void *data);
/* The id of `key` (removed ones too), or MG_BALANCE_ENOTFOUND. */
int mg_balance_find(mg_balancer_t *b, const char *key);
/* Drains / removes / re-weights server `key`: the id or MG_BALANCE_*. */
int mg_balance_drain(mg_balancer_t *b, const char *key);
int mg_balance_remove(mg_balancer_t *b, const char *key);
int mg_balance_set_weight(mg_balancer_t *b, const char *key, int weight);
/* Rebuilds the snapshot after flags changed outside (0, or -1: out of memory,
 * the old one stays). */
int mg_balance_rebuild(mg_balancer_t *b);
/* The snapshot picks read now (tests and stats; valid while the caller holds the
 * writers' side, i.e. no change runs concurrently). */
static inline const mg_bsnap_t *mg_balance_snap(const mg_balancer_t *b) {
  return atomic_load_explicit(&((mg_balancer_t *)b)->snap, memory_order_acquire);
}

/* An attempt on server i starts / ends (every start has exactly one end). */
static inline void mg_peer_begin(mg_balancer_t *b, int i) {
  atomic_fetch_add_explicit(&mg_balance_peer(b, i)->active, 1, memory_order_relaxed);
  if (b->policy == MG_BALANCE_HASH) atomic_fetch_add_explicit(&b->active_total, 1, memory_order_relaxed);
}
static inline void mg_peer_end(mg_balancer_t *b, int i) {
  atomic_fetch_sub_explicit(&mg_balance_peer(b, i)->active, 1, memory_order_relaxed);
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
/* Panic: the untried member with the fewest consecutive failures, usable or not;
 * -1 when every member was tried. O(n). */
int mg_balance_pick_any(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng);
/* The active checks' verdict on server i (1: up, 0: down); coming up starts its
 * slow start. */
void mg_peer_set_down(mg_balancer_t *b, int i, int down);

#endif
