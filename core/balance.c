#include "balance.h"

#include <math.h>
#include <sched.h>
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

/* Fills s->schedule from the members' weights w[0..n-1] (s->ids[k] has w[k]). */
static int build_schedule(mg_bsnap_t *s, const int *weights) {
  uint32_t n = s->n;
  if (n == 0) return 0;
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
  s->schedule = malloc(total * sizeof(*s->schedule));
  if (!s->schedule) goto nomem;
  s->nschedule = (uint32_t)total;
  for (uint32_t i = 0; i < n; i++) heap[i] = (slot_t){ 1, 2 * w[i], i };
  for (uint32_t k = n / 2; k-- > 0;) sift_down(heap, n, k);
  uint32_t live = n;
  for (uint32_t k = 0; k < total; k++) {
    slot_t *top = &heap[0];
    s->schedule[k] = s->ids[top->i];
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

/* ---- reclaiming snapshots (see MG_BALANCE_READERS in balance.h) ---- */

typedef struct {
  _Alignas(64) atomic_uint_fast64_t seq; /* odd while this thread picks; the last
                                            entry counts the overflow's picks */
} reader_t;

static reader_t readers[MG_BALANCE_READERS + 1];
static atomic_int nreaders;
static _Thread_local int my_reader = -1;

static reader_t *reader_enter(void) {
  if (my_reader < 0) {
    int k = atomic_fetch_add(&nreaders, 1);
    my_reader = k < MG_BALANCE_READERS ? k : MG_BALANCE_READERS;
  }
  reader_t *r = &readers[my_reader];
  atomic_fetch_add_explicit(&r->seq, 1, memory_order_seq_cst); /* before the load */
  return r;
}

static void reader_leave(reader_t *r) {
  if (r == &readers[MG_BALANCE_READERS]) atomic_fetch_sub_explicit(&r->seq, 1, memory_order_release);
  else atomic_fetch_add_explicit(&r->seq, 1, memory_order_release);
}

/* Returns once no pick that may have loaded the previous snapshot runs (the new
 * one was stored, sequentially consistent, before this). */
static void wait_readers(void) {
  int m = atomic_load(&nreaders);
  if (m > MG_BALANCE_READERS) m = MG_BALANCE_READERS;
  for (int k = 0; k < m; k++) {
    uint_fast64_t c = atomic_load(&readers[k].seq);
    if (!(c & 1)) continue;
    while (atomic_load(&readers[k].seq) == c) sched_yield();
  }
  if (atomic_load(&nreaders) > MG_BALANCE_READERS)
    while (atomic_load(&readers[MG_BALANCE_READERS].seq) != 0) sched_yield();
}

/* ---- the key index (writers only, under the mutex) ---- */

typedef struct {
  char key[64];
  int id; /* -1: empty */
} bentry_t;

struct mg_bindex_s {
  bentry_t *e;
  uint32_t cap, used; /* cap a power of two, used <= cap / 2 */
};

static uint32_t key_hash(const char *k) { return (uint32_t)mg_hash_bytes(k, strlen(k), 0); }

static bentry_t *index_slot(struct mg_bindex_s *x, const char *key) {
  uint32_t i = key_hash(key) & (x->cap - 1);
  while (x->e[i].id >= 0 && strcmp(x->e[i].key, key) != 0) i = (i + 1) & (x->cap - 1);
  return &x->e[i];
}

static int index_grow(struct mg_bindex_s *x) {
  uint32_t cap = x->cap ? x->cap * 2 : 64;
  bentry_t *e = malloc(cap * sizeof(*e)), *old = x->e;
  if (!e) return -1;
  for (uint32_t i = 0; i < cap; i++) e[i].id = -1;
  uint32_t ocap = x->cap;
  x->e = e;
  x->cap = cap;
  for (uint32_t i = 0; i < ocap; i++)
    if (old[i].id >= 0) *index_slot(x, old[i].key) = old[i];
  free(old);
  return 0;
}

/* ---- building ---- */

static int is_member(const mg_peer_t *p) {
  return !(atomic_load_explicit(&p->flags, memory_order_relaxed) & (MG_PEER_DRAINING | MG_PEER_REMOVED));
}

static void snap_free(mg_balancer_t *b, mg_bsnap_t *s) {
  if (!s) return;
  if (s->ext && b->ext.free) b->ext.free(s->ext, b->ext.ud);
  mg_maglev_free(s->maglev);
  free(s->tok_sorted);
  free(s->ids);
  free(s->schedule);
  free(s->cum);
  free(s);
}

static int load_weight(const mg_peer_t *p) {
  int w = atomic_load_explicit(&p->weight, memory_order_relaxed);
  return w > 0 ? w : 1;
}

/* Server id's name for the Maglev table and its sticky token: its key, or "#id"
 * for a server made without one. */
static mg_str_t id_name(const mg_balancer_t *b, int id, char *buf, size_t len) {
  const char *k = b->keys[id / MG_BALANCE_CHUNK][id % MG_BALANCE_CHUNK];
  if (!*k) {
    snprintf(buf, len, "#%d", id);
    k = buf;
  }
  return (mg_str_t){ k, strlen(k) };
}

static int tok_cmp(const void *x, const void *y) {
  uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
  return a < c ? -1 : a > c;
}

/* hash: the Maglev table over the members (backend k is s->ids[k], weight w[k]). */
static int build_maglev(mg_balancer_t *b, mg_bsnap_t *s, const int *w) {
  mg_maglev_backend_t *be = malloc(s->n * sizeof(*be));
  char (*bufs)[16] = malloc(s->n * sizeof(*bufs));
  int rc = -1;
  if (be && bufs) {
    for (uint32_t k = 0; k < s->n; k++)
      be[k] = (mg_maglev_backend_t){ id_name(b, (int)s->ids[k], bufs[k], sizeof(bufs[k])), (uint32_t)w[k] };
    rc = mg_maglev_new(be, s->n, &s->maglev) < 0 ? -1 : 0;
  }
  free(be);
  free(bufs);
  return rc;
}

/* sticky: server id's token, from its name under the balancer's key. */
static void set_token(mg_balancer_t *b, int id) {
  char buf[16];
  mg_str_t n = id_name(b, id, buf, sizeof(buf));
  mg_balance_peer(b, id)->tok = SIPHASH_24(b->sticky_key, (const uint8_t *)n.p, n.len);
}

/* A snapshot of the current members, their weights now, and the policy's tables. */
static mg_bsnap_t *snap_build(mg_balancer_t *b) {
  int nids = atomic_load_explicit(&b->nids, memory_order_relaxed);
  mg_bsnap_t *s = calloc(1, sizeof(*s));
  int *w = malloc(((size_t)nids + 1) * sizeof(*w));
  if (!s || !w) goto nomem;
  s->ids = malloc(((size_t)nids + 1) * sizeof(*s->ids));
  if (!s->ids) goto nomem;
  int uniform = 1;
  for (int i = 0; i < nids; i++) {
    const mg_peer_t *p = mg_balance_peer(b, i);
    if (!is_member(p)) continue;
    w[s->n] = load_weight(p);
    if (w[s->n] != w[0]) uniform = 0;
    s->total += (uint64_t)w[s->n];
    s->ids[s->n++] = (uint32_t)i;
  }
  if (b->policy == MG_BALANCE_ROUND_ROBIN && build_schedule(s, w) < 0) goto nomem;
  if (s->n && !uniform && (b->policy == MG_BALANCE_RANDOM || b->policy == MG_BALANCE_P2C)) {
    s->cum = malloc(s->n * sizeof(*s->cum));
    if (!s->cum) goto nomem;
    uint64_t c = 0;
    for (uint32_t i = 0; i < s->n; i++) s->cum[i] = c += (uint64_t)w[i];
  }
  if (b->policy == MG_BALANCE_HASH && s->n && build_maglev(b, s, w) < 0) goto nomem;
  if (b->sticky && s->n) {
    s->tok_sorted = malloc((size_t)s->n * 2 * sizeof(uint64_t));
    if (!s->tok_sorted) goto nomem;
    for (uint32_t i = 0; i < s->n; i++) {
      s->tok_sorted[2 * i] = mg_balance_peer(b, (int)s->ids[i])->tok;
      s->tok_sorted[2 * i + 1] = s->ids[i];
    }
    qsort(s->tok_sorted, s->n, 2 * sizeof(uint64_t), tok_cmp);
  }
  if (b->ext.build && b->ext.build(b, s, b->ext.ud) < 0) goto nomem;
  free(w);
  return s;
nomem:
  free(w);
  snap_free(b, s);
  return NULL;
}

/* Publishes a new snapshot and frees the old one once no pick can hold it
 * (writers, under the mutex). */
static int snap_swap(mg_balancer_t *b) {
  mg_bsnap_t *s = snap_build(b);
  if (!s) return -1;
  mg_bsnap_t *old = atomic_exchange(&b->snap, s); /* seq_cst: see wait_readers */
  wait_readers();
  snap_free(b, old);
  return 0;
}

/* A new id for `key` with this weight and data (writers, under the mutex). */
static int new_id(mg_balancer_t *b, const char *key, int weight, void *data) {
  int id = atomic_load_explicit(&b->nids, memory_order_relaxed);
  if (id >= MG_BALANCE_MAX) return MG_BALANCE_EFULL;
  int k = id / MG_BALANCE_CHUNK;
  if (!b->chunk[k]) {
    mg_peer_t *c = calloc(MG_BALANCE_CHUNK, sizeof(*c));
    void **d = calloc(MG_BALANCE_CHUNK, sizeof(*d));
    if (!c || !d) {
      free(c);
      free(d);
      return MG_BALANCE_ENOMEM;
    }
    char (*keys)[64] = calloc(MG_BALANCE_CHUNK, sizeof(*keys));
    if (!keys) {
      free(c);
      free(d);
      return MG_BALANCE_ENOMEM;
    }
    b->chunk[k] = c;
    b->data[k] = d;
    b->keys[k] = keys;
  }
  if (key) {
    if ((b->index->used + 1) * 2 > b->index->cap && index_grow(b->index) < 0) return MG_BALANCE_ENOMEM;
    bentry_t *e = index_slot(b->index, key);
    snprintf(e->key, sizeof(e->key), "%s", key);
    e->id = id;
    b->index->used++;
  }
  mg_peer_t *p = mg_balance_peer(b, id);
  atomic_init(&p->active, 0);
  atomic_init(&p->ewma_us, 0);
  atomic_init(&p->fails, 0);
  atomic_init(&p->weight, weight);
  atomic_init(&p->flags, 0);
  atomic_init(&p->ewma_at, 0);
  atomic_init(&p->errs, 0);
  atomic_init(&p->ejections, 0);
  atomic_init(&p->until_ms, 0);
  atomic_init(&p->slow_ms, 0);
  snprintf(b->keys[k][id % MG_BALANCE_CHUNK], 64, "%s", key ? key : "");
  if (b->sticky) set_token(b, id);
  b->data[k][id % MG_BALANCE_CHUNK] = data;
  atomic_store_explicit(&b->nids, id + 1, memory_order_release);
  return id;
}

mg_balancer_t *mg_balancer_new(int policy, const int *weights, int n) {
  mg_balancer_t *b = aligned_alloc(_Alignof(mg_balancer_t), sizeof(mg_balancer_t));
  if (!b) return NULL;
  memset(b, 0, sizeof(*b));
  b->policy = policy;
  atomic_init(&b->rr, 0);
  atomic_init(&b->nids, 0);
  atomic_init(&b->refs, 1);
  atomic_init(&b->snap, NULL);
  atomic_init(&b->nejected, 0);
  atomic_init(&b->panic_log_ms, 0);
  atomic_init(&b->active_total, 0);
  b->hash_eps = INFINITY;
  pthread_mutex_init(&b->lock, NULL);
  b->index = calloc(1, sizeof(*b->index));
  if (!b->index || index_grow(b->index) < 0) goto nomem;
  for (int i = 0; i < n; i++)
    if (new_id(b, NULL, weights[i], NULL) < 0) goto nomem;
  mg_bsnap_t *s = snap_build(b);
  if (!s) goto nomem;
  atomic_store(&b->snap, s);
  return b;
nomem:
  mg_balancer_unref(b);
  return NULL;
}

void mg_balancer_ref(mg_balancer_t *b) { atomic_fetch_add(&b->refs, 1); }

void mg_balancer_unref(mg_balancer_t *b) {
  if (!b || atomic_fetch_sub(&b->refs, 1) != 1) return;
  snap_free(b, atomic_load(&b->snap));
  int n = atomic_load(&b->nids);
  for (int i = 0; i < n; i++)
    if (b->data_free && mg_balance_data(b, i)) b->data_free(mg_balance_data(b, i));
  for (int k = 0; k < MG_BALANCE_DIR; k++) {
    free(b->chunk[k]);
    free(b->data[k]);
    free(b->keys[k]);
  }
  if (b->index) free(b->index->e);
  free(b->index);
  pthread_mutex_destroy(&b->lock);
  free(b);
}

void mg_balancer_set_data_free(mg_balancer_t *b, void (*data_free)(void *data)) { b->data_free = data_free; }

int mg_balancer_set_ext(mg_balancer_t *b, const mg_balance_ext_t *ext) {
  pthread_mutex_lock(&b->lock);
  mg_balance_ext_t old = b->ext;
  b->ext = *ext;
  mg_bsnap_t *s = snap_build(b);
  int rc = -1;
  if (s) {
    mg_bsnap_t *o = atomic_exchange(&b->snap, s);
    wait_readers();
    mg_balance_ext_t cur = b->ext;
    b->ext = old; /* the old snapshot's table is the old hook's */
    snap_free(b, o);
    b->ext = cur;
    rc = 0;
  } else b->ext = old;
  pthread_mutex_unlock(&b->lock);
  return rc;
}

/* names[i] (when given) as the key-less ids' names. */
static void set_names(mg_balancer_t *b, const mg_str_t *names) {
  int n = atomic_load(&b->nids);
  for (int i = 0; names && i < n; i++)
    snprintf(b->keys[i / MG_BALANCE_CHUNK][i % MG_BALANCE_CHUNK], 64, "%.*s", (int)(names[i].len < 63 ? names[i].len : 63),
             names[i].p ? names[i].p : "");
}

int mg_balancer_hash_init(mg_balancer_t *b, const mg_str_t *names, double eps) {
  pthread_mutex_lock(&b->lock);
  set_names(b, names);
  b->hash_eps = eps < 0 ? 0 : eps;
  int rc = b->policy == MG_BALANCE_HASH && snap_swap(b) < 0 ? MG_ENOMEM : 0;
  pthread_mutex_unlock(&b->lock);
  return rc;
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
  pthread_mutex_lock(&b->lock);
  set_names(b, names);
  memcpy(b->sticky_key, digest, sizeof(b->sticky_key));
  b->sticky = 1;
  int n = atomic_load(&b->nids);
  for (int i = 0; i < n; i++) set_token(b, i);
  int rc = snap_swap(b) < 0 ? MG_ENOMEM : 0;
  pthread_mutex_unlock(&b->lock);
  return rc;
}

int mg_balance_rebuild(mg_balancer_t *b) {
  pthread_mutex_lock(&b->lock);
  int rc = snap_swap(b);
  pthread_mutex_unlock(&b->lock);
  return rc;
}

/* adds or revives one, under the mutex */
static int add_locked(mg_balancer_t *b, const char *key, int weight, void *data) {
  if (!key || strlen(key) >= 64) return MG_BALANCE_ENOTFOUND;
  bentry_t *e = index_slot(b->index, key);
  if (e->id >= 0) {
    mg_peer_t *p = mg_balance_peer(b, e->id);
    if (is_member(p)) return MG_BALANCE_EEXIST;
    if (data && b->data_free) b->data_free(data);
    atomic_store_explicit(&p->weight, weight, memory_order_relaxed);
    atomic_fetch_and_explicit(&p->flags, ~(MG_PEER_DRAINING | MG_PEER_REMOVED), memory_order_relaxed);
    return e->id;
  }
  return new_id(b, key, weight, data);
}

int mg_balance_add(mg_balancer_t *b, const char *key, int weight, void *data) {
  pthread_mutex_lock(&b->lock);
  int id = add_locked(b, key, weight, data);
  if (id >= 0 && snap_swap(b) < 0) id = MG_BALANCE_ENOMEM;
  pthread_mutex_unlock(&b->lock);
  return id;
}

int mg_balance_add_quiet(mg_balancer_t *b, const char *key, int weight, void *data) {
  pthread_mutex_lock(&b->lock);
  int id = add_locked(b, key, weight, data);
  pthread_mutex_unlock(&b->lock);
  return id;
}

int mg_balance_find(mg_balancer_t *b, const char *key) {
  if (strlen(key) >= 64) return MG_BALANCE_ENOTFOUND;
  pthread_mutex_lock(&b->lock);
  int id = index_slot(b->index, key)->id;
  pthread_mutex_unlock(&b->lock);
  return id >= 0 ? id : MG_BALANCE_ENOTFOUND;
}

/* Sets `set` and clears `clear` in key's flags, or its weight (weight > 0), and
 * republishes. A removed server is not found. */
static int change(mg_balancer_t *b, const char *key, unsigned set, int weight) {
  if (strlen(key) >= 64) return MG_BALANCE_ENOTFOUND;
  pthread_mutex_lock(&b->lock);
  int id = index_slot(b->index, key)->id;
  if (id < 0 || (atomic_load(&mg_balance_peer(b, id)->flags) & MG_PEER_REMOVED)) {
    pthread_mutex_unlock(&b->lock);
    return MG_BALANCE_ENOTFOUND;
  }
  mg_peer_t *p = mg_balance_peer(b, id);
  if (set) atomic_fetch_or_explicit(&p->flags, set, memory_order_relaxed);
  if (weight > 0) atomic_store_explicit(&p->weight, weight, memory_order_relaxed);
  if (snap_swap(b) < 0) id = MG_BALANCE_ENOMEM;
  pthread_mutex_unlock(&b->lock);
  return id;
}

int mg_balance_drain(mg_balancer_t *b, const char *key) { return change(b, key, MG_PEER_DRAINING, 0); }
int mg_balance_remove(mg_balancer_t *b, const char *key) { return change(b, key, MG_PEER_REMOVED, 0); }
int mg_balance_set_weight(mg_balancer_t *b, const char *key, int weight) {
  return change(b, key, 0, weight);
}

/* ---- picking (over one snapshot) ---- */

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
  mg_peer_t *p = mg_balance_peer(b, i);
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
  mg_peer_t *p = mg_balance_peer(b, i);
  unsigned f = atomic_load_explicit(&p->flags, memory_order_acquire);
  if (f == MG_PEER_EJECTED) {
    eject_expire(b, i, c);
    f = atomic_load_explicit(&p->flags, memory_order_relaxed);
  }
  return f == 0;
}

/* Slow start: server i's share in 1/1024 (102: 10 %, 1024: full weight). */
#define RAMP_FULL 1024
static int ramp(mg_balancer_t *b, int i, tick_t *c) {
  if (!b->slow_start_ms) return RAMP_FULL;
  mg_peer_t *p = mg_balance_peer(b, i);
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
  return r >= RAMP_FULL || (int)(mg_rand(rng) % RAMP_FULL) < r;
}

/* Any usable member not tried yet, looking from a random start; -1: none. O(n):
 * only once the policy's own choices were all tried or unusable. */
static int any_untried(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t *rng,
                       tick_t *c) {
  if (s->n == 0) return -1;
  uint32_t start = (uint32_t)(mg_rand(rng) % s->n);
  for (uint32_t j = 0; j < s->n; j++) {
    uint32_t k = start + j < s->n ? start + j : start + j - s->n;
    if (fits(b, tried, (int)s->ids[k], c)) return (int)s->ids[k];
  }
  return -1;
}

/* A member's position drawn in proportion to its weight: O(log n). */
static uint32_t draw(const mg_bsnap_t *s, uint64_t *rng) {
  if (!s->cum) return (uint32_t)(mg_rand(rng) % s->n);
  uint64_t r = mg_rand(rng) % s->total;
  uint32_t lo = 0, hi = s->n - 1;
  while (lo < hi) { /* the first i with cum[i] > r */
    uint32_t mid = lo + (hi - lo) / 2;
    if (s->cum[mid] > r) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* The schedule's next slot; a retry, an unusable server or a slow-starting one
 * that declines passes the slot on to the ones that follow (bounded), then any. */
static int pick_round_robin(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t *rng,
                            tick_t *c) {
  uint64_t pos = atomic_fetch_add_explicit(&b->rr, 1, memory_order_relaxed);
  for (uint32_t k = 0; k < s->nschedule && k <= 64; k++) {
    int id = (int)s->schedule[(pos + k) % s->nschedule];
    if (fits(b, tried, id, c) && takes(b, id, c, rng)) return id;
  }
  return any_untried(b, s, tried, rng, c);
}

static int pick_random(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  for (int k = 0; k < 8; k++) {
    int id = (int)s->ids[draw(s, rng)];
    if (fits(b, tried, id, c) && takes(b, id, c, rng)) return id;
  }
  return any_untried(b, s, tried, rng, c);
}

/* The weight with slow start's ramp, in 1/1024. */
static int64_t eff_weight(mg_balancer_t *b, int i, tick_t *c) {
  return (int64_t)load_weight(mg_balance_peer(b, i)) * ramp(b, i, c);
}

/* Fewest active attempts per unit of weight: among all the members from a random
 * start (so that ties go round, not always to the first) up to MG_BALANCE_SCAN of
 * them, among MG_BALANCE_SAMPLE drawn at random past that. A
 * slow-starting server is a candidate with its ramp's probability (dividing by
 * the ramped weight alone does nothing while every server is idle: 0 / w). */
static int pick_least_conn(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t *rng,
                           tick_t *c) {
  uint32_t n = s->n, m = n <= MG_BALANCE_SCAN ? n : MG_BALANCE_SAMPLE;
  uint32_t start = (uint32_t)(mg_rand(rng) % n);
  int best = -1;
  int64_t ba = 0, bw = 1;
  for (uint32_t j = 0; j < m; j++) {
    /* up to MG_BALANCE_SCAN members: all of them, from a random start; more:
     * MG_BALANCE_SAMPLE drawn at random */
    uint32_t k = n <= MG_BALANCE_SCAN ? (start + j < n ? start + j : start + j - n) : (uint32_t)(mg_rand(rng) % n);
    int i = (int)s->ids[k];
    if (!fits(b, tried, i, c) || !takes(b, i, c, rng)) continue;
    int64_t a = atomic_load_explicit(&mg_balance_peer(b, i)->active, memory_order_relaxed);
    int64_t w = load_weight(mg_balance_peer(b, i));
    if (best < 0 || a * bw < ba * w) {
      best = i;
      ba = a;
      bw = w;
    }
  }
  return best >= 0 ? best : any_untried(b, s, tried, rng, c);
}

/* A server's average, halved for every MG_BALANCE_EWMA_HALF_MS since its last
 * sample (0: none yet). `now` and ewma_at: mg_balance_now_ms() cut to 32 bits
 * (the difference wraps correctly). */
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
 * EWMA, so that it is judged by its active attempts alone. x is the first of the
 * two random draws. */
static int p2c_better(mg_balancer_t *b, int x, int y, tick_t *c) {
  const mg_peer_t *px = mg_balance_peer(b, x), *py = mg_balance_peer(b, y);
  uint32_t now = (uint32_t)now_of(c);
  double ex = ewma_now(px, now);
  double ey = ewma_now(py, now);
  if (ex == 0) ex = ey;
  if (ey == 0) ey = ex;
  if (ex == 0) ex = ey = 1;
  double sx = (atomic_load_explicit(&px->active, memory_order_relaxed) + 1) * ex / (double)eff_weight(b, x, c);
  double sy = (atomic_load_explicit(&py->active, memory_order_relaxed) + 1) * ey / (double)eff_weight(b, y, c);
  /* scores within a quarter of each other count as equal, and the first draw
   * (a random one) wins: small differences in the averages of equally fast
   * servers would otherwise send every request of a light load to one of them */
  if (sy * 1.25 >= sx && sx * 1.25 >= sy) return x;
  return sy < sx ? y : x;
}

static int pick_p2c(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t *rng, tick_t *c) {
  uint32_t n = s->n;
  if (n == 1) return fits(b, tried, (int)s->ids[0], c) ? (int)s->ids[0] : -1;
  uint32_t x = draw(s, rng), y = x;
  if (!s->cum) y = (x + 1 + (uint32_t)(mg_rand(rng) % (n - 1))) % n;
  else
    for (int k = 0; k < 4 && y == x; k++) y = draw(s, rng);
  if (y == x) y = (x + 1) % n;
  int ix = (int)s->ids[x], iy = (int)s->ids[y];
  int fx = fits(b, tried, ix, c), fy = fits(b, tried, iy, c);
  if (!fx && !fy) return any_untried(b, s, tried, rng, c);
  if (!fx) return iy;
  if (!fy) return ix;
  return p2c_better(b, ix, iy, c);
}

typedef struct {
  mg_balancer_t *b;
  const mg_bsnap_t *s;
  const mg_tried_t *tried;
  tick_t c;
  int key_part;  /* slow start: the key's place in 0..RAMP_FULL-1 (-1: no ramp) */
  int declined;  /* a slow-starting server passed the key on */
} hash_ud_t;

/* A member's load for the bound (k: its backend index in the snapshot's table),
 * -1 for one tried already or not usable (its keys then go on along their walk,
 * and come back when it does). A server in slow start takes back the keys whose
 * place is below its ramp: a share that grows, each key moving back once. */
static int64_t hash_load(void *ud, uint32_t k) {
  hash_ud_t *h = ud;
  int id = (int)h->s->ids[k];
  if (!fits(h->b, h->tried, id, &h->c)) return -1;
  if (h->key_part >= 0 && h->b->slow_start_ms && h->key_part >= ramp(h->b, id, &h->c)) {
    h->declined = 1;
    return -1;
  }
  return atomic_load_explicit(&mg_balance_peer(h->b, id)->active, memory_order_relaxed);
}

int mg_balance_usable(mg_balancer_t *b, int i) {
  tick_t c = { 0 };
  return usable(b, i, &c);
}

static int pick_hash(mg_balancer_t *b, const mg_bsnap_t *s, const mg_tried_t *tried, uint64_t hash) {
  if (!s->maglev) return -1;
  hash_ud_t ud = { b, s, tried, { 0 }, (int)((hash * 0x9e3779b97f4a7c15ull) >> 54), 0 };
  long long total = atomic_load_explicit(&b->active_total, memory_order_relaxed);
  mg_maglev_bound_t bound = {
    .eps = b->hash_eps, .total = total > 0 ? (uint64_t)total : 0, .wsum = s->total, .load = hash_load, .ud = &ud,
  };
  int64_t k = mg_maglev_pick_bounded(s->maglev, hash, &bound);
  if (k < 0 && ud.declined) { /* only slow-starting servers were left: they take it */
    ud.key_part = -1;
    k = mg_maglev_pick_bounded(s->maglev, hash, &bound);
  }
  return k >= 0 ? (int)s->ids[k] : -1;
}
int mg_balance_pick_hash(mg_balancer_t *b, const mg_tried_t *tried, uint64_t hash) {
  reader_t *me = reader_enter();
  const mg_bsnap_t *s = atomic_load_explicit(&b->snap, memory_order_seq_cst);
  int id = pick_hash(b, s, tried, hash);
  reader_leave(me);
  return id;
}

int mg_balance_sticky_find(mg_balancer_t *b, uint64_t tok) {
  reader_t *me = reader_enter();
  const mg_bsnap_t *s = atomic_load_explicit(&b->snap, memory_order_seq_cst);
  int id = -1;
  if (s->tok_sorted) {
    int lo = 0, hi = (int)s->n - 1;
    while (lo <= hi) {
      int mid = lo + (hi - lo) / 2;
      uint64_t t = s->tok_sorted[2 * mid];
      if (t == tok) {
        id = (int)s->tok_sorted[2 * mid + 1];
        break;
      }
      if (t < tok) lo = mid + 1;
      else hi = mid - 1;
    }
  }
  reader_leave(me);
  return id;
}

int mg_balance_pick(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng) {
  reader_t *me = reader_enter();
  const mg_bsnap_t *s = atomic_load_explicit(&b->snap, memory_order_seq_cst);
  tick_t c = { 0 };
  int id = -1;
  if (s->n > 0) {
    switch (b->policy) {
    case MG_BALANCE_LEAST_CONN:
      id = pick_least_conn(b, s, tried, rng, &c);
      break;
    case MG_BALANCE_P2C:
      id = pick_p2c(b, s, tried, rng, &c);
      break;
    case MG_BALANCE_RANDOM:
      id = pick_random(b, s, tried, rng, &c);
      break;
    case MG_BALANCE_HASH: /* (callers hash the request's key: this is a random key) */
      id = pick_hash(b, s, tried, mg_rand(rng));
      break;
    default:
      id = pick_round_robin(b, s, tried, rng, &c);
    }
  }
  reader_leave(me);
  return id;
}

int mg_balance_pick_any(mg_balancer_t *b, const mg_tried_t *tried, uint64_t *rng) {
  reader_t *me = reader_enter();
  const mg_bsnap_t *s = atomic_load_explicit(&b->snap, memory_order_seq_cst);
  int best = -1, bf = 0;
  if (s->n > 0) {
    uint32_t start = (uint32_t)(mg_rand(rng) % s->n);
    for (uint32_t j = 0; j < s->n; j++) {
      int i = (int)s->ids[(start + j) % s->n];
      if (is_tried(tried, i)) continue;
      int f = atomic_load_explicit(&mg_balance_peer(b, i)->fails, memory_order_relaxed);
      if (best < 0 || f < bf) {
        best = i;
        bf = f;
      }
    }
  }
  reader_leave(me);
  return best;
}

void mg_peer_answered(mg_balancer_t *b, int i, uint64_t us) {
  mg_peer_t *p = mg_balance_peer(b, i);
  atomic_store_explicit(&p->fails, 0, memory_order_relaxed);
  if (us > 0xffffffffu) us = 0xffffffffu;
  if (us == 0) us = 1; /* 0 means "no sample" */
  /* load then store: two workers answering at once may lose one sample, which
   * an average of many does not notice; no CAS loop on the response path */
  uint64_t old;
  uint32_t now = 0;
  if (b->policy == MG_BALANCE_P2C) { /* (the only policy that reads the age) */
    now = (uint32_t)mg_balance_now_ms();
    old = (uint64_t)ewma_now(p, now); /* a stale average counts as p2c sees it */
  } else {
    old = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
  }
  uint64_t v = old ? (old * 7 + us) / 8 : us;
  atomic_store_explicit(&p->ewma_us, (unsigned)(v ? v : 1), memory_order_relaxed);
  if (b->policy == MG_BALANCE_P2C) atomic_store_explicit(&p->ewma_at, now, memory_order_relaxed);
}

/* ---- i12-health: ejection ---- */

int mg_balance_members(mg_balancer_t *b) {
  reader_t *me = reader_enter();
  int n = (int)atomic_load_explicit(&b->snap, memory_order_seq_cst)->n;
  reader_leave(me);
  return n;
}

/* Ejects server i unless it is already out or max_percent of the current members
 * would be passed. */
static void eject(mg_balancer_t *b, int i) {
  mg_peer_t *p = mg_balance_peer(b, i);
  if (atomic_load_explicit(&p->flags, memory_order_relaxed) & (MG_PEER_EJECTED | MG_PEER_EJECTING)) return;
  tick_t c = { 0 };
  /* ejections over by now end first, so that they do not count (every id: a
   * server drained or removed while ejected still holds its slot until then) */
  if (atomic_load_explicit(&b->nejected, memory_order_relaxed) > 0) {
    int nids = mg_balance_count(b);
    for (int j = 0; j < nids; j++)
      if ((atomic_load_explicit(&mg_balance_peer(b, j)->flags, memory_order_acquire) &
           (MG_PEER_EJECTED | MG_PEER_EJECTING)) == MG_PEER_EJECTED)
        eject_expire(b, j, &c);
  }
  /* the slot first, so that two workers ejecting at once cannot both pass */
  int was = atomic_fetch_add_explicit(&b->nejected, 1, memory_order_relaxed);
  if ((int64_t)(was + 1) * 100 > (int64_t)b->eject_max_percent * mg_balance_members(b)) {
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
  int e = atomic_fetch_add_explicit(&mg_balance_peer(b, i)->errs, 1, memory_order_relaxed) + 1;
  if (e >= b->eject_consecutive) eject(b, i);
}

void mg_peer_failed(mg_balancer_t *b, int i) {
  atomic_fetch_add_explicit(&mg_balance_peer(b, i)->fails, 1, memory_order_relaxed);
  count_error(b, i);
}

void mg_peer_status(mg_balancer_t *b, int i, int status) {
  mg_peer_t *p = mg_balance_peer(b, i);
  if (status >= 500 && status <= 599) count_error(b, i);
  else if (atomic_load_explicit(&p->errs, memory_order_relaxed))
    atomic_store_explicit(&p->errs, 0, memory_order_relaxed);
}

void mg_peer_set_down(mg_balancer_t *b, int i, int down) {
  mg_peer_t *p = mg_balance_peer(b, i);
  if (down) {
    atomic_fetch_or_explicit(&p->flags, MG_PEER_DOWN, memory_order_relaxed);
    atomic_store_explicit(&p->slow_ms, 0, memory_order_relaxed);
    return;
  }
  unsigned f = atomic_fetch_and_explicit(&p->flags, ~MG_PEER_DOWN, memory_order_relaxed);
  if ((f & MG_PEER_DOWN) && b->slow_start_ms)
    atomic_store_explicit(&p->slow_ms, mg_balance_now_ms(), memory_order_relaxed);
}
