/* Shared dictionaries. Layout:
 *
 *   registry -> dict -> dict ...          append-only list, published with a release store
 *   dict: name, shards[nshards]            each shard on its own cache lines
 *   shard: mutex, buckets[] (chained), LRU list (head = most recent), used/cap bytes
 *   entry: one malloc block = header + key bytes + vcap bytes of string value
 *
 * The rule that keeps the locks short: malloc and free never run under a shard lock.
 * An operation that needs a new block takes the lock, finds that out, drops the lock,
 * allocates and fills the block, and takes the lock again to link it (re-checking
 * everything, since another thread may have run in between). Entries removed under
 * the lock (deleted, replaced, expired, evicted) go on a local garbage list that is
 * freed after unlocking. Overwriting a value of the same size class (a number with a
 * number, a string with one of similar length) reuses the block in place. */
#include "shdict.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>
#include <openssl/siphash.h>

typedef struct entry_s entry_t;
struct entry_s {
  entry_t *hnext;       /* bucket chain; links the garbage list once removed */
  entry_t *prev, *next; /* shard LRU list, head = most recently used */
  uint64_t hash;
  int64_t expires; /* monotonic ns; 0 = never */
  double num;
  uint32_t klen, vlen; /* vlen: string length, 0 for numbers */
  uint32_t vcap;       /* bytes allocated after the key; fixed for the block's life */
  uint8_t type;
  char data[]; /* key, then the string value */
};

/* glibc's chunk header plus rounding, roughly. */
#define MALLOC_OVERHEAD 16
_Static_assert(sizeof(entry_t) + MALLOC_OVERHEAD <= MG_SHDICT_ENTRY_OVERHEAD,
               "MG_SHDICT_ENTRY_OVERHEAD must cover the entry header");

/* One bucket per this many bytes of shard capacity. Buckets are allocated with the
 * shard and never resized (resizing would mean allocating and rehashing under the
 * lock); an entry costs at least MG_SHDICT_ENTRY_OVERHEAD bytes, so chains stay
 * short: at most 128 / 80 entries per bucket on average. The bucket array (8 bytes
 * per 128 of capacity) is not counted in the capacity. */
#define BYTES_PER_BUCKET 128
#define MIN_BUCKETS 16
/* A block is reused for a new value if it wastes at most this many bytes. */
#define REUSE_SLACK 64
/* Expired entries a write reclaims from the LRU tail before doing its own work, so
 * that expired entries leave even when nobody reads them. */
#define EXPIRE_ON_WRITE 2
/* store_locked/incr_locked: a new block is needed; the caller allocates it unlocked. */
#define NEED_BLOCK 1

typedef struct {
  _Alignas(64) pthread_mutex_t lock; /* own cache lines: no false sharing between shards */
  entry_t **buckets;                 /* mask + 1 chains */
  size_t mask;
  entry_t *head, *tail; /* LRU list */
  size_t used;          /* sum of entry_cost() of linked entries, <= cap */
  size_t cap;           /* immutable */
} shard_t;

struct mg_shdict_s {
  mg_shdict_t *next; /* registry list; immutable once published */
  char *name;
  size_t name_len;
  size_t capacity;
  unsigned nshards; /* power of two, <= 256 (the shard comes from the hash's top byte) */
  shard_t shards[];
};

/* The registry is process-wide on purpose: every worker thread reaches the same dicts
 * by name. Dicts are only added (open, under registry_lock) and all freed at exit, so
 * find() walks the list without a lock: a dict is fully built before the release
 * store that publishes it, and never changes after except inside its shards. */
static _Atomic(mg_shdict_t *) registry;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;

const char *mg_shdict_strerror(int rc) {
  switch (rc) {
  case 0: return "ok";
  case MG_SHDICT_ENOTFOUND: return "not found";
  case MG_SHDICT_EEXISTS: return "exists";
  case MG_SHDICT_ETYPE: return "not a number";
  case MG_SHDICT_ENOMEM: return "no memory";
  case MG_SHDICT_ETOOBIG: return "too big";
  case MG_SHDICT_EINVAL: return "invalid argument";
  default: return "unknown error";
  }
}

/* ---- hashing: SipHash-2-4 with a random key per process ------------------------
 *
 * Keys come from clients (rate limits by IP, header values), so the hash must not let
 * anyone pick keys that share a chain: such keys all land in one shard and one
 * chain, every lookup there walks all of them under the lock, and the shard evicts
 * everyone else's entries to hold them. The earlier seeded murmur-style hash did not prevent that: its
 * per-word mix is a bijection whose XOR differences pass through unchanged, so keys
 * built from its structure collide for every seed (core/test/test_shdict.c builds
 * them). SipHash is a keyed PRF: without the key, collisions cannot be chosen. One
 * key for the process, drawn when the first dict is opened (at config load), so a
 * dict keeps its layout across reloads. The shard comes from the top byte of the
 * hash and the bucket from the low bits: independent bits of one PRF output. */

static uint64_t sip_key[2]; /* written once under registry_lock, before any dict exists */
static int sip_key_ready;

static inline uint64_t hash_key(const char *key, size_t len) {
  return SIPHASH_24(sip_key, (const uint8_t *)key, len);
}

/* ---- time -------------------------------------------------------------------- */

static int64_t now_ns(void) {
  struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* vDSO, no syscall; ~4 ms resolution */
#else
  clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ttl must be >= 0 (checked by the caller). 0 = never; huge ttls saturate. */
static int64_t deadline(double ttl, int64_t now) {
  if (ttl == 0) return 0;
  double ns = ttl * 1e9;
  if (ns >= (double)(INT64_MAX - now)) return INT64_MAX;
  if (ns < 1) ns = 1;
  return now + (int64_t)ns;
}

static inline int is_expired(const entry_t *e, int64_t now) {
  return e->expires != 0 && e->expires <= now;
}

/* ---- entries and shards (all run with the shard locked) ------------------------ */

static inline size_t entry_cost(size_t klen, size_t vcap) {
  return MG_SHDICT_ENTRY_OVERHEAD + klen + vcap;
}

/* Overflow-safe "entry_cost(klen, vcap) > cap", also refusing lengths that do not
 * fit the header's 32-bit fields. */
static int too_big(size_t cap, size_t klen, size_t vcap) {
  if (klen > UINT32_MAX || vcap > UINT32_MAX) return 1;
  if (cap < MG_SHDICT_ENTRY_OVERHEAD) return 1;
  cap -= MG_SHDICT_ENTRY_OVERHEAD;
  return klen > cap || vcap > cap - klen;
}

static inline shard_t *shard_of(mg_shdict_t *d, uint64_t h) {
  /* top byte picks the shard, low bits the bucket: independent bits */
  return &d->shards[(h >> 56) & (d->nshards - 1)];
}

static entry_t *lookup(shard_t *s, uint64_t h, const char *key, size_t klen) {
  for (entry_t *e = s->buckets[h & s->mask]; e; e = e->hnext) {
    if (e->hash == h && e->klen == klen && (klen == 0 || memcmp(e->data, key, klen) == 0))
      return e;
  }
  return NULL;
}

static void lru_unlink(shard_t *s, entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else s->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else s->tail = e->prev;
}

static void lru_push_front(shard_t *s, entry_t *e) {
  e->prev = NULL;
  e->next = s->head;
  if (s->head) s->head->prev = e;
  else s->tail = e;
  s->head = e;
}

static void lru_touch(shard_t *s, entry_t *e) {
  if (s->head == e) return;
  lru_unlink(s, e);
  lru_push_front(s, e);
}

static void link_entry(shard_t *s, entry_t *e) {
  entry_t **b = &s->buckets[e->hash & s->mask];
  e->hnext = *b;
  *b = e;
  lru_push_front(s, e);
  s->used += entry_cost(e->klen, e->vcap);
}

/* Unlinks e from its chain and the LRU list and puts it on *garbage. */
static void remove_entry(shard_t *s, entry_t *e, entry_t **garbage) {
  entry_t **pp = &s->buckets[e->hash & s->mask];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(s, e);
  s->used -= entry_cost(e->klen, e->vcap);
  e->hnext = *garbage;
  *garbage = e;
}

static void expire_tail(shard_t *s, int64_t now, entry_t **garbage) {
  for (int i = 0; i < EXPIRE_ON_WRITE && s->tail && is_expired(s->tail, now); i++)
    remove_entry(s, s->tail, garbage);
}

/* Evicts from the LRU tail until `need` more bytes fit. The caller checked need <= cap,
 * so the loop ends before the list does. */
static void make_room(shard_t *s, size_t need, int64_t now, entry_t **garbage, int *evicted) {
  while (s->used + need > s->cap && s->tail) {
    if (!is_expired(s->tail, now) && evicted) *evicted = 1;
    remove_entry(s, s->tail, garbage);
  }
}

static inline int fits_in_place(const entry_t *e, size_t vcap) {
  return vcap <= e->vcap && e->vcap - vcap <= REUSE_SLACK;
}

static void free_garbage(entry_t *e) {
  while (e) {
    entry_t *next = e->hnext;
    free(e);
    e = next;
  }
}

/* ---- set / add / delete-by-set ------------------------------------------------- */

typedef struct {
  uint64_t hash;
  const char *key;
  size_t klen;
  int type;
  double num;
  const char *str;
  size_t slen; /* 0 unless type is MG_SHD_STRING */
  int64_t expires, now;
  int add;
} op_t;

static void write_value(entry_t *e, const op_t *op) {
  e->type = (uint8_t)op->type;
  e->num = op->type == MG_SHD_NUMBER ? op->num : 0;
  e->vlen = (uint32_t)op->slen;
  if (op->slen) memcpy(e->data + e->klen, op->str, op->slen);
  e->expires = op->expires;
}

/* Allocates and fills a block for op, outside any lock. */
static entry_t *entry_new(const op_t *op) {
  entry_t *e = malloc(sizeof(*e) + op->klen + op->slen);
  if (!e) return NULL;
  e->hash = op->hash;
  e->klen = (uint32_t)op->klen;
  e->vcap = (uint32_t)op->slen;
  if (op->klen) memcpy(e->data, op->key, op->klen);
  write_value(e, op);
  return e;
}

/* 0, MG_SHDICT_EEXISTS, or NEED_BLOCK when *spare is NULL and a new block is needed.
 * Consumes *spare (sets it to NULL) when it links it. */
static int store_locked(shard_t *s, const op_t *op, entry_t **spare, entry_t **garbage,
                        int *evicted) {
  expire_tail(s, op->now, garbage);
  entry_t *e = lookup(s, op->hash, op->key, op->klen);
  if (op->add && e && !is_expired(e, op->now)) return MG_SHDICT_EEXISTS;
  if (op->type == MG_SHD_NIL) {
    if (e) remove_entry(s, e, garbage);
    return 0;
  }
  if (e && fits_in_place(e, op->slen)) {
    write_value(e, op); /* cost is unchanged: it counts vcap, not vlen */
    lru_touch(s, e);
    return 0;
  }
  if (!*spare) return NEED_BLOCK;
  if (e) remove_entry(s, e, garbage);
  make_room(s, entry_cost((*spare)->klen, (*spare)->vcap), op->now, garbage, evicted);
  link_entry(s, *spare);
  *spare = NULL;
  return 0;
}

static int store(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                 const char *str, size_t slen, double ttl, int add, int *evicted) {
  if (evicted) *evicted = 0;
  if (type != MG_SHD_NIL && type != MG_SHD_NUMBER && type != MG_SHD_STRING)
    return MG_SHDICT_EINVAL;
  if (type != MG_SHD_STRING) slen = 0;
  if (!(ttl >= 0) || (!key && klen) || (!str && slen)) return MG_SHDICT_EINVAL;

  op_t op = { .key = key, .klen = klen, .type = type, .num = num, .str = str,
              .slen = slen, .add = add };
  op.hash = hash_key(key, klen);
  shard_t *s = shard_of(d, op.hash);
  if (type != MG_SHD_NIL && too_big(s->cap, klen, slen)) return MG_SHDICT_ETOOBIG;
  op.now = now_ns();
  op.expires = deadline(ttl, op.now);

  entry_t *spare = NULL;
  int rc;
  for (;;) {
    entry_t *garbage = NULL;
    pthread_mutex_lock(&s->lock);
    rc = store_locked(s, &op, &spare, &garbage, evicted);
    pthread_mutex_unlock(&s->lock);
    free_garbage(garbage);
    if (rc != NEED_BLOCK) break;
    /* second round cannot return NEED_BLOCK: spare is set */
    spare = entry_new(&op);
    if (!spare) return MG_SHDICT_ENOMEM;
  }
  free(spare); /* another thread made the in-place path possible meanwhile */
  return rc;
}

int mg_shdict_set(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted) {
  return store(d, key, klen, type, num, str, slen, ttl, 0, evicted);
}

int mg_shdict_add(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted) {
  return store(d, key, klen, type, num, str, slen, ttl, 1, evicted);
}

/* ---- get / incr / delete -------------------------------------------------------- */

int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, int *type, double *num,
                  char *buf, size_t bufcap, size_t *len) {
  *type = MG_SHD_NIL;
  if (num) *num = 0;
  if (len) *len = 0;
  if ((!key && klen) || (!buf && bufcap)) return MG_SHDICT_EINVAL;

  uint64_t h = hash_key(key, klen);
  shard_t *s = shard_of(d, h);
  int64_t now = now_ns();
  entry_t *garbage = NULL;
  pthread_mutex_lock(&s->lock);
  entry_t *e = lookup(s, h, key, klen);
  if (e && is_expired(e, now)) {
    remove_entry(s, e, &garbage);
  } else if (e) {
    lru_touch(s, e);
    *type = e->type;
    if (num) *num = e->num;
    if (len) *len = e->vlen;
    size_t n = e->vlen < bufcap ? e->vlen : bufcap;
    if (n) memcpy(buf, e->data + e->klen, n);
  }
  pthread_mutex_unlock(&s->lock);
  free_garbage(garbage);
  return 0;
}

/* 0 (and *out), ENOTFOUND, ETYPE, or NEED_BLOCK when *spare is NULL and the entry must
 * be created in a new block. *spare, if set, already holds the number init+by. */
static int incr_locked(shard_t *s, const op_t *op, double by, int has_init, double *out,
                       entry_t **spare, entry_t **garbage) {
  expire_tail(s, op->now, garbage);
  entry_t *e = lookup(s, op->hash, op->key, op->klen);
  if (e && !is_expired(e, op->now)) {
    if (e->type != MG_SHD_NUMBER) return MG_SHDICT_ETYPE;
    e->num += by;
    *out = e->num;
    lru_touch(s, e);
    return 0;
  }
  if (!has_init) {
    if (e) remove_entry(s, e, garbage);
    return MG_SHDICT_ENOTFOUND;
  }
  if (e && fits_in_place(e, 0)) { /* expired: recreate in its block */
    write_value(e, op);
    *out = e->num;
    lru_touch(s, e);
    return 0;
  }
  if (!*spare) return NEED_BLOCK;
  if (e) remove_entry(s, e, garbage);
  make_room(s, entry_cost(op->klen, 0), op->now, garbage, NULL);
  link_entry(s, *spare);
  *out = (*spare)->num;
  *spare = NULL;
  return 0;
}

int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double by, int has_init,
                   double init, double ttl, double *out) {
  if (!(ttl >= 0) || (!key && klen)) return MG_SHDICT_EINVAL;
  op_t op = { .key = key, .klen = klen, .type = MG_SHD_NUMBER, .num = init + by };
  op.hash = hash_key(key, klen);
  shard_t *s = shard_of(d, op.hash);
  op.now = now_ns();
  op.expires = deadline(ttl, op.now);

  double v = 0;
  entry_t *spare = NULL;
  int rc;
  for (;;) {
    entry_t *garbage = NULL;
    pthread_mutex_lock(&s->lock);
    rc = incr_locked(s, &op, by, has_init, &v, &spare, &garbage);
    pthread_mutex_unlock(&s->lock);
    free_garbage(garbage);
    if (rc != NEED_BLOCK) break;
    if (too_big(s->cap, klen, 0)) return MG_SHDICT_ETOOBIG;
    spare = entry_new(&op);
    if (!spare) return MG_SHDICT_ENOMEM;
  }
  free(spare);
  if (rc == 0 && out) *out = v;
  return rc;
}

#define GCRA_REFUSED 2 /* internal: the public code is 1 */
/* GCRA (a token bucket kept as one number: the bucket's "theoretical arrival time",
 * seconds on this file's monotonic clock). Everything under the shard lock, the clock
 * read once per call, so every worker agrees. */
static int gcra_locked(shard_t *s, op_t *op, double interval, double capacity, double *wait,
                       double *remaining, entry_t **spare, entry_t **garbage) {
  expire_tail(s, op->now, garbage);
  entry_t *e = lookup(s, op->hash, op->key, op->klen);
  int live = e && !is_expired(e, op->now);
  if (live && e->type != MG_SHD_NUMBER) return MG_SHDICT_ETYPE;
  double now = (double)op->now / 1e9;
  double tat = live && e->num > now ? e->num : now;
  double next = tat + interval;
  double allow_at = next - capacity * interval;
  if (now < allow_at) { /* refused: nothing changes */
    *wait = allow_at - now;
    *remaining = 0;
    return GCRA_REFUSED;
  }
  *wait = next - now;
  *remaining = (double)(long long)((now - allow_at) / interval + 1e-9);
  op->num = next;
  if (live) {
    e->num = next;
    e->expires = op->expires;
    lru_touch(s, e);
    return 0;
  }
  if (e && fits_in_place(e, 0)) {
    write_value(e, op);
    lru_touch(s, e);
    return 0;
  }
  if (!*spare) return NEED_BLOCK;
  if (e) remove_entry(s, e, garbage);
  (*spare)->num = next;
  make_room(s, entry_cost(op->klen, 0), op->now, garbage, NULL);
  link_entry(s, *spare);
  *spare = NULL;
  return 0;
}

int mg_shdict_gcra(mg_shdict_t *d, const char *key, size_t klen, double interval, double capacity,
                   double *wait, double *remaining) {
  if (!(interval > 0) || !(capacity >= 1) || (!key && klen) || !wait || !remaining)
    return MG_SHDICT_EINVAL;
  op_t op = { .key = key, .klen = klen, .type = MG_SHD_NUMBER };
  op.hash = hash_key(key, klen);
  shard_t *s = shard_of(d, op.hash);
  op.now = now_ns();
  /* the entry outlives a full refill by a second: after that it says nothing */
  op.expires = deadline(capacity * interval + 1, op.now);
  entry_t *spare = NULL;
  int rc;
  for (;;) {
    entry_t *garbage = NULL;
    pthread_mutex_lock(&s->lock);
    rc = gcra_locked(s, &op, interval, capacity, wait, remaining, &spare, &garbage);
    pthread_mutex_unlock(&s->lock);
    free_garbage(garbage);
    if (rc != NEED_BLOCK) break;
    if (too_big(s->cap, klen, 0)) return MG_SHDICT_ETOOBIG;
    spare = entry_new(&op);
    if (!spare) return MG_SHDICT_ENOMEM;
  }
  free(spare);
  return rc == GCRA_REFUSED ? 1 : rc;
}

int mg_shdict_delete(mg_shdict_t *d, const char *key, size_t klen) {
  if (!key && klen) return MG_SHDICT_EINVAL;
  uint64_t h = hash_key(key, klen);
  shard_t *s = shard_of(d, h);
  int64_t now = now_ns();
  entry_t *garbage = NULL;
  int rc = MG_SHDICT_ENOTFOUND;
  pthread_mutex_lock(&s->lock);
  entry_t *e = lookup(s, h, key, klen);
  if (e) {
    if (!is_expired(e, now)) rc = 0;
    remove_entry(s, e, &garbage);
  }
  pthread_mutex_unlock(&s->lock);
  free_garbage(garbage);
  return rc;
}

size_t mg_shdict_count(mg_shdict_t *d) {
  size_t n = 0;
  int64_t now = now_ns();
  for (unsigned i = 0; i < d->nshards; i++) {
    shard_t *s = &d->shards[i];
    entry_t *garbage = NULL;
    pthread_mutex_lock(&s->lock);
    for (entry_t *e = s->head, *next; e; e = next) {
      next = e->next;
      if (is_expired(e, now)) remove_entry(s, e, &garbage);
      else n++;
    }
    pthread_mutex_unlock(&s->lock);
    free_garbage(garbage);
  }
  return n;
}

void mg_shdict_spread(mg_shdict_t *d, mg_shdict_spread_t *out) {
  *out = (mg_shdict_spread_t){ .shards = d->nshards, .min_shard = SIZE_MAX };
  for (unsigned i = 0; i < d->nshards; i++) {
    shard_t *s = &d->shards[i];
    size_t n = 0;
    pthread_mutex_lock(&s->lock);
    for (size_t b = 0; b <= s->mask; b++) {
      size_t chain = 0;
      for (entry_t *e = s->buckets[b]; e; e = e->hnext) chain++;
      if (chain > out->max_chain) out->max_chain = chain;
      n += chain;
    }
    pthread_mutex_unlock(&s->lock);
    if (n > out->max_shard) out->max_shard = n;
    if (n < out->min_shard) out->min_shard = n;
  }
}

static void free_lru(entry_t *e) {
  while (e) {
    entry_t *next = e->next;
    free(e);
    e = next;
  }
}

void mg_shdict_flush_all(mg_shdict_t *d) {
  for (unsigned i = 0; i < d->nshards; i++) {
    shard_t *s = &d->shards[i];
    pthread_mutex_lock(&s->lock);
    entry_t *all = s->head;
    s->head = s->tail = NULL;
    s->used = 0;
    memset(s->buckets, 0, (s->mask + 1) * sizeof(*s->buckets));
    pthread_mutex_unlock(&s->lock);
    free_lru(all);
  }
}

/* ---- registry ------------------------------------------------------------------ */

static void dict_free(mg_shdict_t *d, unsigned shards_ready) {
  for (unsigned i = 0; i < shards_ready; i++) {
    free_lru(d->shards[i].head);
    free(d->shards[i].buckets);
    pthread_mutex_destroy(&d->shards[i].lock);
  }
  free(d->name);
  free(d);
}

static int shard_init(shard_t *s, size_t cap) {
  size_t want = cap / BYTES_PER_BUCKET, nb = MIN_BUCKETS;
  while (nb < want && nb < ((size_t)1 << 40)) nb <<= 1;
  s->buckets = calloc(nb, sizeof(*s->buckets)); /* untouched pages cost no RSS */
  if (!s->buckets) return MG_SHDICT_ENOMEM;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
  /* glibc: spin briefly before sleeping; our critical sections are short */
  pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
  int err = pthread_mutex_init(&s->lock, &attr);
  pthread_mutexattr_destroy(&attr);
  if (err) {
    free(s->buckets);
    return MG_SHDICT_ENOMEM;
  }
  s->mask = nb - 1;
  s->head = s->tail = NULL;
  s->used = 0;
  s->cap = cap;
  return 0;
}

static mg_shdict_t *dict_new(const char *name, size_t len, size_t capacity) {
  unsigned n = MG_SHDICT_SHARDS;
  while (n > 1 && capacity / n < MG_SHDICT_MIN_SHARD_BYTES) n /= 2;
  /* both sizes are multiples of 64 (shard_t is 64-aligned), as aligned_alloc wants */
  mg_shdict_t *d = aligned_alloc(_Alignof(mg_shdict_t),
                                 sizeof(mg_shdict_t) + n * sizeof(shard_t));
  if (!d) return NULL;
  d->next = NULL;
  d->name_len = len;
  d->capacity = capacity;
  d->nshards = n;
  unsigned ready = 0;
  d->name = malloc(len + 1);
  if (!d->name) goto fail;
  memcpy(d->name, name, len);
  d->name[len] = '\0';
  for (; ready < n; ready++) {
    if (shard_init(&d->shards[ready], capacity / n) != 0) goto fail;
  }
  return d;
fail:
  dict_free(d, ready);
  return NULL;
}

mg_shdict_t *mg_shdict_find(const char *name, size_t len) {
  if (!name && len) return NULL;
  mg_shdict_t *d = atomic_load_explicit(&registry, memory_order_acquire);
  for (; d; d = d->next) {
    if (d->name_len == len && (len == 0 || memcmp(d->name, name, len) == 0)) return d;
  }
  return NULL;
}

mg_shdict_t *mg_shdict_open(const char *name, size_t capacity) {
  if (!name) return NULL;
  size_t len = strlen(name);
  pthread_mutex_lock(&registry_lock);
  if (!sip_key_ready) {
    /* BoringSSL's RAND_bytes aborts rather than fail */
    RAND_bytes((uint8_t *)sip_key, sizeof(sip_key));
    sip_key_ready = 1;
  }
  mg_shdict_t *d = mg_shdict_find(name, len);
  if (!d) {
    d = dict_new(name, len, capacity);
    if (d) {
      d->next = atomic_load_explicit(&registry, memory_order_relaxed);
      atomic_store_explicit(&registry, d, memory_order_release);
    }
  }
  pthread_mutex_unlock(&registry_lock);
  return d;
}

void mg_shdict_close_all(void) {
  pthread_mutex_lock(&registry_lock);
  mg_shdict_t *d = atomic_exchange_explicit(&registry, NULL, memory_order_acquire);
  pthread_mutex_unlock(&registry_lock);
  while (d) {
    mg_shdict_t *next = d->next;
    dict_free(d, d->nshards);
    d = next;
  }
}
