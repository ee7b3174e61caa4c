#include "balance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>
#include <openssl/siphash.h>

static const char *const policy_names[] = {
  [MG_BALANCE_ROUND_ROBIN] = "round_robin",
  [MG_BALANCE_LEAST_CONN] = "least_conn",
  [MG_BALANCE_P2C] = "p2c",
  [MG_BALANCE_RANDOM] = "random",
  [MG_BALANCE_HASH] = "hash",
};

int mg_balance_policy(const char *name) {
  for (int i = 0; i < (int)(sizeof(policy_names) / sizeof(policy_names[0])); i++)
    if (strcmp(name, policy_names[i]) == 0) return i;
  return -1;
}

/* xorshift64*: a worker's own generator; quality enough to spread picks. */
static uint64_t next_rand(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545f4914f6cdd1dull;
}

static uint64_t gcd(uint64_t a, uint64_t b) {
  while (b) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* ---- the round robin schedule ----
 * Server i with weight w gets w slots, its k-th at virtual time (2k + 1) / 2w:
 * each server's slots are evenly spread over the cycle, and the schedule lists
 * all slots by time (ties: lower index first). That is the same spreading smooth
 * weighted round robin gives (for weights 1 and 3: B A B B), built once in
 * O(W log n) with a heap instead of O(W n), so that picking is one atomic
 * increment and one load. */

typedef struct {
  uint64_t num, den; /* the server's next slot time, num / den */
  uint32_t i;
} slot_t;

static int slot_before(const slot_t *a, const slot_t *b) {
  uint64_t l = a->num * b->den, r = b->num * a->den; /* each < 2^22: no overflow */
  return l < r || (l == r && a->i < b->i);
}

static void sift_down(slot_t *h, uint32_t n, uint32_t k) {
  for (;;) {
    uint32_t l = 2 * k + 1, m = k;
    if (l < n && slot_before(&h[l], &h[m])) m = l;
    if (l + 1 < n && slot_before(&h[l + 1], &h[m])) m = l + 1;
    if (m == k) return;
    slot_t t = h[k];
    h[k] = h[m];
    h[m] = t;
    k = m;
  }
}

static int build_schedule(mg_balancer_t *b, const int *weights) {
  uint32_t n = (uint32_t)b->n;
  uint64_t *w = malloc(n * sizeof(*w));
  slot_t *heap = malloc(n * sizeof(*heap));
  if (!w || !heap) goto nomem;
  uint64_t g = 0, total = 0;
  for (uint32_t i = 0; i < n; i++) g = gcd(g, (uint64_t)weights[i]);
  for (uint32_t i = 0; i < n; i++) total += (w[i] = (uint64_t)weights[i] / g);
  if (total > MG_BALANCE_SCHEDULE_MAX) { /* scale down, keeping one slot each */
    uint64_t t2 = 0;
    for (uint32_t i = 0; i < n; i++) {
      w[i] = w[i] * MG_BALANCE_SCHEDULE_MAX / total;
      if (w[i] == 0) w[i] = 1;
      t2 += w[i];
    }
    total = t2;
  }
  b->schedule = malloc(total * sizeof(*b->schedule));
  if (!b->schedule) goto nomem;
  b->nschedule = (uint32_t)total;
  for (uint32_t i = 0; i < n; i++) heap[i] = (slot_t){ 1, 2 * w[i], i };
  for (uint32_t k = n / 2; k-- > 0;) sift_down(heap, n, k);
  uint32_t live = n;
  for (uint32_t s = 0; s < total; s++) {
    slot_t *top = &heap[0];
    b->schedule[s] = top->i;
    top->num += 2;
    if (top->num > 2 * w[top->i]) heap[0] = heap[--live]; /* all its slots are placed */
    sift_down(heap, live, 0);
  }
  free(w);
  free(heap);
  return 0;
nomem:
  free(w);
  free(heap);
  return -1;
}

mg_balancer_t *mg_balancer_new(int policy, const int *weights, int n) {
  mg_balancer_t *b = aligned_alloc(_Alignof(mg_balancer_t), sizeof(mg_balancer_t));
  if (!b) return NULL;
  memset(b, 0, sizeof(*b));
  b->policy = policy;
  b->n = n;
  atomic_init(&b->rr, 0);
  atomic_init(&b->nejected, 0);
  atomic_init(&b->panic_log_ms, 0);
  b->peers = calloc((size_t)n, sizeof(*b->peers));
  if (!b->peers) goto nomem;
  int uniform = 1;
  for (int i = 0; i < n; i++) {
    atomic_init(&b->peers[i].active, 0);
    atomic_init(&b->peers[i].ewma_us, 0);
    atomic_init(&b->peers[i].fails, 0);
    atomic_init(&b->peers[i].weight, weights[i]);
    atomic_init(&b->peers[i].ewma_at, 0);
    atomic_init(&b->peers[i].flags, 0);
    atomic_init(&b->peers[i].errs, 0);
    atomic_init(&b->peers[i].ejections, 0);
    atomic_init(&b->peers[i].until_ms, 0);
    atomic_init(&b->peers[i].slow_ms, 0);
    b->total += (uint64_t)weights[i];
    if (weights[i] != weights[0]) uniform = 0;
  }
  if (policy == MG_BALANCE_ROUND_ROBIN && build_schedule(b, weights) < 0) goto nomem;
  if (!uniform && (policy == MG_BALANCE_RANDOM || policy == MG_BALANCE_P2C)) {
    b->cum = malloc((size_t)n * sizeof(*b->cum));
    if (!b->cum) goto nomem;
    uint64_t c = 0;
    for (int i = 0; i < n; i++) b->cum[i] = c += (uint64_t)weights[i];
  }
  return b;
nomem:
  mg_balancer_free(b);
  return NULL;
}

void mg_balancer_free(mg_balancer_t *b) {
  if (!b) return;
  free(b->peers);
  free(b->schedule);
  free(b->cum);
  mg_maglev_free(b->maglev);
  free(b->tok);
  free(b->tok_sorted);
  free(b);
}

int mg_balancer_hash_init(mg_balancer_t *b, const mg_str_t *names, double eps) {
  mg_maglev_backend_t *be = malloc((size_t)b->n * sizeof(*be));
  if (!be) return MG_ENOMEM;
  for (int i = 0; i < b->n; i++)
    be[i] = (mg_maglev_backend_t){ names[i], (uint32_t)atomic_load_explicit(&b->peers[i].weight, memory_order_relaxed) };
  int rc = mg_maglev_new(be, (size_t)b->n, &b->maglev);
  free(be);
  b->hash_eps = eps < 0 ? 0 : eps;
  atomic_init(&b->active_total, 0);
  return rc;
}

static int tok_cmp(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
  return a < c ? -1 : a > c;
}

int mg_balancer_sticky_init(mg_balancer_t *b, const mg_str_t *names, mg_str_t upstream, mg_str_t secret) {
  /* the key: SHA-256 of the secret and the upstream's name, so that two upstreams
   * listing the same server give it different tokens */
  uint8_t digest[SHA256_DIGEST_LENGTH];
  SHA256_CTX c;
  SHA256_Init(&c);
  SHA256_Update(&c, "moongate sticky\n", 16);
  SHA256_Update(&c, secret.p ? secret.p : "", secret.len);
  SHA256_Update(&c, "\n", 1);
  SHA256_Update(&c, upstream.p ? upstream.p : "", upstream.len);
  SHA256_Final(digest, &c);
  uint64_t key[2];
  memcpy(key, digest, sizeof(key));
  b->tok = malloc((size_t)b->n * sizeof(uint64_t));
  b->tok_sorted = malloc((size_t)b->n * 2 * sizeof(uint64_t));
  if (!b->tok || !b->tok_sorted) return MG_ENOMEM;
  for (int i = 0; i < b->n; i++) {
    b->tok[i] = SIPHASH_24(key, (const uint8_t *)names[i].p, names[i].len);
    b->tok_sorted[2 * i] = b->tok[i];
    b->tok_sorted[2 * i + 1] = (uint64_t)i;
  }
  qsort(b->tok_sorted, (size_t)b->n, 2 * sizeof(uint64_t), tok_cmp);
  return 0;
}

int mg_balance_sticky_find(const mg_balancer_t *b, uint64_t tok) {
  if (!b->tok_sorted) return -1;
  int lo = 0, hi = b->n - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    uint64_t t = b->tok_sorted[2 * mid];
    if (t == tok) return (int)b->tok_sorted[2 * mid + 1];
    if (t < tok) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

static int is_tried(const mg_tried_t *t, int i) { return t && mg_tried_has(t, i); }

uint64_t mg_balance_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void tell(mg_balancer_t *b, int i, const char *what) {
  if (b->event) b->event(b->event_data, i, what);
}

/* One pick's view of the time: read once, and only when a server needs it. */
typedef struct {
  uint64_t now;
} tick_t;

static uint64_t now_of(tick_t *c) {
  if (!c->now) c->now = mg_balance_now_ms();
  return c->now;
}

/* until_ms's top bit: that ejection was ended (by the one who set the bit). */
#define UNTIL_ENDED (1ull << 63)

/* Server i's ejection ends if its time is over (whoever sees it first). The
 * end time is the ticket: only the worker whose compare-exchange marks it ended
 * clears the flag, so that a worker that read an old end time can neither end
 * an ejection twice nor end the next one (which has a later end time). */
static void eject_expire(mg_balancer_t *b, int i, tick_t *c) {
  mg_peer_t *p = &b->peers[i];
  uint64_t until = atomic_load_explicit(&p->until_ms, memory_order_acquire);
  if ((until & UNTIL_ENDED) || now_of(c) < until) return;
  if (!atomic_compare_exchange_strong_explicit(&p->until_ms, &until, until | UNTIL_ENDED, memory_order_acq_rel,
                                               memory_order_relaxed))
    return; /* another worker ended it, or a new ejection began */
  unsigned f = atomic_fetch_and_explicit(&p->flags, ~MG_PEER_EJECTED, memory_order_release);
  if (!(f & MG_PEER_EJECTED)) return;
  atomic_fetch_sub_explicit(&b->nejected, 1, memory_order_relaxed);
  if (b->slow_start_ms) atomic_store_explicit(&p->slow_ms, now_of(c), memory_order_relaxed);
  tell(b, i, f & MG_PEER_DOWN ? "ejection ended (still down by its health checks)" : "back from ejection");
}

/* Usable now: no flag, or only an ejection whose time is over (ended here). */
static int usable(mg_balancer_t *b, int i, tick_t *c) {
  unsigned f = atomic_load_explicit(&b->peers[i].flags, memory_order_acquire);
  if (f == MG_PEER_EJECTED) {
    eject_expire(b, i, c);
    f = atomic_load_explicit(&b->peers[i].flags, memory_order_relaxed);
  }
  return f == 0;
}

/* Slow start: server i's share in 1/1024 (102: 10 %, 1024: full weight). */
#define RAMP_FULL 1024
static int ramp(mg_balancer_t *b, int i, tick_t *c) {
  mg_peer_t *p = &b->peers[i];
  uint64_t since = atomic_load_explicit(&p->slow_ms, memory_order_relaxed);
  if (!since) return RAMP_FULL;
  uint64_t now = now_of(c), len = b->slow_start_ms;
  if (!len || now >= since + len) {
    atomic_compare_exchange_strong_explicit(&p->slow_ms, &since, 0, memory_order_relaxed,
                                            memory_order_relaxed);
    return RAMP_FULL;
  }
  uint64_t el = now > since ? now - since : 0;
  return (int)(RAMP_FULL / 10 + (RAMP_FULL - RAMP_FULL / 10) * el / len);
}

/* A candidate for this pick: not tried and usable. */
static int fits(mg_balancer_t *b, const mg_tried_t *tried, int i, tick_t *c) {
  return !is_tried(tried, i) && usable(b, i, c);
}

/* A slow-starting server takes a slot it was offered with its ramp's probability. */
static int takes(mg_balancer_t *b, int i, tick_t *c, uint64_t *rng) {
  int r = ramp(b, i, c);
  return r >= RAMP_FULL || (int)(next_rand(rng) % RAMP_FULL) < r;
}

/* Any usable server not tried yet, looking from a random start; -1: none. O(n):
 * only once the policy's own choices were all tried or unusable. */
static int any_untried(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  int start = (int)(next_rand(rng) % (uint64_t)b->n);
  for (int j = 0; j < b->n; j++) {
    int i = (start + j) % b->n;
    if (fits(b, tried, i, c)) return i;
  }
  return -1;
}

/* A server drawn in proportion to its configured weight: O(log n). */
static int draw(const mg_balancer_t *b, uint64_t *rng) {
  if (!b->cum) return (int)(next_rand(rng) % (uint64_t)b->n);
  uint64_t r = next_rand(rng) % b->total;
  int lo = 0, hi = b->n - 1;
  while (lo < hi) { /* the first i with cum[i] > r */
    int mid = lo + (hi - lo) / 2;
    if (b->cum[mid] > r) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* The schedule's next slot; a retry, an unusable server or a slow-starting one
 * that declines passes the slot on to the ones that follow (bounded), then any. */
static int pick_round_robin(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  uint64_t pos = atomic_fetch_add_explicit(&b->rr, 1, memory_order_relaxed);
  for (uint32_t k = 0; k < b->nschedule && k <= 64; k++) {
    int s = (int)b->schedule[(pos + k) % b->nschedule];
    if (fits(b, tried, s, c) && takes(b, s, c, rng)) return s;
  }
  return any_untried(b, tried, rng, c);
}

static int pick_random(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  for (int k = 0; k < 8; k++) {
    int s = draw(b, rng);
    if (fits(b, tried, s, c) && takes(b, s, c, rng)) return s;
  }
  return any_untried(b, tried, rng, c);
}

static int load_weight(const mg_peer_t *p) {
  int w = atomic_load_explicit(&p->weight, memory_order_relaxed);
  return w > 0 ? w : 1;
}

/* The weight with slow start's ramp, in 1/1024. */
static int64_t eff_weight(mg_balancer_t *b, int i, tick_t *c) {
  return (int64_t)load_weight(&b->peers[i]) * ramp(b, i, c);
}

/* Fewest active attempts per unit of weight among at most MG_BALANCE_SCAN servers
 * from a random start (so that ties go round, not always to the first). A
 * slow-starting server is a candidate with its ramp's probability (dividing by
 * the ramped weight alone does nothing while every server is idle: 0 / w). */
static int pick_least_conn(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  int n = b->n, m = n < MG_BALANCE_SCAN ? n : MG_BALANCE_SCAN;
  int start = (int)(next_rand(rng) % (uint64_t)n);
  int best = -1;
  int64_t ba = 0, bw = 1;
  for (int j = 0; j < m; j++) {
    int i = start + j < n ? start + j : start + j - n;
    if (!fits(b, tried, i, c) || !takes(b, i, c, rng)) continue;
    int64_t a = atomic_load_explicit(&b->peers[i].active, memory_order_relaxed);
    int64_t w = load_weight(&b->peers[i]);
    if (best < 0 || a * bw < ba * w) {
      best = i;
      ba = a;
      bw = w;
    }
  }
  return best >= 0 ? best : any_untried(b, tried, rng, c);
}

/* A monotonic clock in ms (wrapping at 2^32): the coarse clock, a vDSO read. */
static uint32_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

/* A server's average, halved for every MG_BALANCE_EWMA_HALF_MS since its last
 * sample (0: none yet). */
static double ewma_now(const mg_peer_t *p, uint32_t now) {
  double e = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
  if (e == 0) return 0;
  uint32_t age = now - atomic_load_explicit(&p->ewma_at, memory_order_relaxed);
  if (age >= MG_BALANCE_EWMA_HALF_MS) {
    uint32_t halvings = age / MG_BALANCE_EWMA_HALF_MS;
    e = halvings >= 30 ? 1 : e / (double)(1u << halvings);
    if (e < 1) e = 1;
  }
  return e;
}

/* (active + 1) x EWMA / weight; a server with no sample yet borrows the other's
 * EWMA, so that it is judged by its active attempts alone. */
static int p2c_better(mg_balancer_t *b, int x, int y, tick_t *c) {
  const mg_peer_t *px = &b->peers[x], *py = &b->peers[y];
  uint32_t now = now_ms();
  double ex = ewma_now(px, now);
  double ey = ewma_now(py, now);
  if (ex == 0) ex = ey;
  if (ey == 0) ey = ex;
  if (ex == 0) ex = ey = 1;
  double sx = (atomic_load_explicit(&px->active, memory_order_relaxed) + 1) * ex / (double)eff_weight(b, x, c);
  double sy = (atomic_load_explicit(&py->active, memory_order_relaxed) + 1) * ey / (double)eff_weight(b, y, c);
  return sy < sx ? y : x;
}

static int pick_p2c(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  int n = b->n;
  if (n == 1) return fits(b, tried, 0, c) ? 0 : -1;
  int x = draw(b, rng), y = x;
  if (!b->cum) y = (x + 1 + (int)(next_rand(rng) % (uint64_t)(n - 1))) % n;
  else
    for (int k = 0; k < 4 && y == x; k++) y = draw(b, rng);
  if (y == x) y = (x + 1) % n;
  int fx = fits(b, tried, x, c), fy = fits(b, tried, y, c);
  if (!fx && !fy) return any_untried(b, tried, rng, c);
  if (!fx) return y;
  if (!fy) return x;
  return p2c_better(b, x, y, c);
}

typedef struct {
  mg_balancer_t *b;
  const mg_tried_t *tried;
  tick_t c;
  int key_part;  /* slow start: the key's place in 0..RAMP_FULL-1 (-1: no ramp) */
  int declined;  /* a slow-starting server passed the key on */
} hash_ud_t;

/* A server's load for the bound, -1 for one tried already or not usable (its
 * keys then go on along their walk, and come back when it does). A server in
 * slow start takes back the keys whose place is below its ramp: a share that
 * grows, each key moving back once. */
static int64_t hash_load(void *ud, uint32_t server) {
  hash_ud_t *h = ud;
  if (!fits(h->b, h->tried, (int)server, &h->c)) return -1;
  if (h->key_part >= 0 && h->b->slow_start_ms && h->key_part >= ramp(h->b, (int)server, &h->c)) {
    h->declined = 1;
    return -1;
  }
  return atomic_load_explicit(&h->b->peers[server].active, memory_order_relaxed);
}

int mg_balance_usable(mg_balancer_t *b, int i) {
  tick_t c = { 0 };
  return usable(b, i, &c);
}

int mg_balance_pick_hash(mg_balancer_t *b, const mg_tried_t *tried, uint64_t hash) {
  hash_ud_t ud = { b, tried, { 0 }, (int)((hash * 0x9e3779b97f4a7c15ull) >> 54), 0 };
  long long total = atomic_load_explicit(&b->active_total, memory_order_relaxed);
  mg_maglev_bound_t bound = {
    .eps = b->hash_eps, .total = total > 0 ? (uint64_t)total : 0, .wsum = b->total, .load = hash_load, .ud = &ud,
  };
  int64_t s = mg_maglev_pick_bounded(b->maglev, hash, &bound);
  if (s < 0 && ud.declined) { /* only slow-starting servers were left: they take it */
    ud.key_part = -1;
    s = mg_maglev_pick_bounded(b->maglev, hash, &bound);
  }
  return s >= 0 ? (int)s : -1;
}

int mg_balance_pick(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng) {
  tick_t c = { 0 };
  switch (b->policy) {
  case MG_BALANCE_LEAST_CONN:
    return pick_least_conn(b, tried, rng, &c);
  case MG_BALANCE_P2C:
    return pick_p2c(b, tried, rng, &c);
  case MG_BALANCE_RANDOM:
    return pick_random(b, tried, rng, &c);
  case MG_BALANCE_HASH: /* (callers hash the request's key: this is a random key) */
    return mg_balance_pick_hash(b, tried, next_rand(rng));
  default:
    return pick_round_robin(b, tried, rng, &c);
  }
}

int mg_balance_pick_any(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng) {
  int start = (int)(next_rand(rng) % (uint64_t)b->n), best = -1, bf = 0;
  for (int j = 0; j < b->n; j++) {
    int i = (start + j) % b->n;
    if (is_tried(tried, i)) continue;
    int f = atomic_load_explicit(&b->peers[i].fails, memory_order_relaxed);
    if (best < 0 || f < bf) {
      best = i;
      bf = f;
    }
  }
  return best;
}

void mg_peer_answered(mg_balancer_t *b, int i, uint64_t us) {
  mg_peer_t *p = &b->peers[i];
  atomic_store_explicit(&p->fails, 0, memory_order_relaxed);
  if (us > 0xffffffffu) us = 0xffffffffu;
  if (us == 0) us = 1; /* 0 means "no sample" */
  /* load then store: two workers answering at once may lose one sample, which
   * an average of many does not notice; no CAS loop on the response path */
  uint64_t old;
  uint32_t now = 0;
  if (b->policy == MG_BALANCE_P2C) { /* (the only policy that reads the age) */
    now = now_ms();
    old = (uint64_t)ewma_now(p, now); /* a stale average counts as p2c sees it */
  } else {
    old = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
  }
  uint64_t v = old ? (old * 7 + us) / 8 : us;
  atomic_store_explicit(&p->ewma_us, (unsigned)(v ? v : 1), memory_order_relaxed);
  if (b->policy == MG_BALANCE_P2C) atomic_store_explicit(&p->ewma_at, now, memory_order_relaxed);
}

/* ---- i12-health: ejection ---- */

/* Ejects server i unless it is already out or max_percent would be passed. */
static void eject(mg_balancer_t *b, int i) {
  mg_peer_t *p = &b->peers[i];
  if (atomic_load_explicit(&p->flags, memory_order_relaxed) & (MG_PEER_EJECTED | MG_PEER_EJECTING)) return;
  tick_t c = { 0 };
  /* ejections over by now end first, so that they do not count */
  if (atomic_load_explicit(&b->nejected, memory_order_relaxed) > 0)
    for (int j = 0; j < b->n; j++)
      if ((atomic_load_explicit(&b->peers[j].flags, memory_order_acquire) & (MG_PEER_EJECTED | MG_PEER_EJECTING)) ==
          MG_PEER_EJECTED)
        eject_expire(b, j, &c);
  /* the slot first, so that two workers ejecting at once cannot both pass */
  int was = atomic_fetch_add_explicit(&b->nejected, 1, memory_order_relaxed);
  if ((int64_t)(was + 1) * 100 > (int64_t)b->eject_max_percent * b->n) {
    atomic_fetch_sub_explicit(&b->nejected, 1, memory_order_relaxed);
    /* the streak starts over: the next try (and its O(n) sweep) comes after
     * another `consecutive` errors, not after every one */
    atomic_store_explicit(&p->errs, 0, memory_order_relaxed);
    return;
  }
  /* the claim: MG_PEER_EJECTING until the end time is stored, so that no pick
   * or sweep ends this ejection by the last one's end (or 0) in between */
  unsigned f = atomic_fetch_or_explicit(&p->flags, MG_PEER_EJECTING, memory_order_relaxed);
  if (f & (MG_PEER_EJECTED | MG_PEER_EJECTING)) { /* another worker was first */
    if (!(f & MG_PEER_EJECTING)) atomic_fetch_and_explicit(&p->flags, ~MG_PEER_EJECTING, memory_order_relaxed);
    atomic_fetch_sub_explicit(&b->nejected, 1, memory_order_relaxed);
    return;
  }
  uint64_t now = now_of(&c), cap = b->eject_base_ms * 10;
  uint64_t last = atomic_load_explicit(&p->until_ms, memory_order_relaxed) & ~UNTIL_ENDED;
  if (last && now >= last + cap) atomic_store_explicit(&p->ejections, 0, memory_order_relaxed);
  uint64_t k = (uint64_t)atomic_fetch_add_explicit(&p->ejections, 1, memory_order_relaxed) + 1;
  uint64_t len = b->eject_base_ms * k;
  if (len > cap) len = cap;
  atomic_store_explicit(&p->until_ms, now + len, memory_order_release);
  atomic_store_explicit(&p->slow_ms, 0, memory_order_relaxed);
  atomic_fetch_or_explicit(&p->flags, MG_PEER_EJECTED, memory_order_release);
  atomic_fetch_and_explicit(&p->flags, ~MG_PEER_EJECTING, memory_order_release);
  int errs = atomic_exchange_explicit(&p->errs, 0, memory_order_relaxed);
  char what[128];
  snprintf(what, sizeof(what), "ejected for %.3gs (%d errors in a row, ejection %llu)", (double)len / 1e3,
           errs, (unsigned long long)k);
  tell(b, i, what);
}

static void count_error(mg_balancer_t *b, int i) {
  if (b->eject_consecutive <= 0) return;
  int e = atomic_fetch_add_explicit(&b->peers[i].errs, 1, memory_order_relaxed) + 1;
  if (e >= b->eject_consecutive) eject(b, i);
}

void mg_peer_failed(mg_balancer_t *b, int i) {
  atomic_fetch_add_explicit(&b->peers[i].fails, 1, memory_order_relaxed);
  count_error(b, i);
}

void mg_peer_status(mg_balancer_t *b, int i, int status) {
  if (status >= 500 && status <= 599) count_error(b, i);
  else if (atomic_load_explicit(&b->peers[i].errs, memory_order_relaxed))
    atomic_store_explicit(&b->peers[i].errs, 0, memory_order_relaxed);
}

void mg_peer_set_down(mg_balancer_t *b, int i, int down) {
  mg_peer_t *p = &b->peers[i];
  if (down) {
    atomic_fetch_or_explicit(&p->flags, MG_PEER_DOWN, memory_order_relaxed);
    atomic_store_explicit(&p->slow_ms, 0, memory_order_relaxed);
    return;
  }
  unsigned f = atomic_fetch_and_explicit(&p->flags, ~MG_PEER_DOWN, memory_order_relaxed);
  if ((f & MG_PEER_DOWN) && b->slow_start_ms)
    atomic_store_explicit(&p->slow_ms, mg_balance_now_ms(), memory_order_relaxed);
}
