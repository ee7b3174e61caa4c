/* The cache's memory store (cache.h has the layout and the ownership rules).
 *
 * Locks: a shard's mutex is held to look up and take a reference, to link and
 * unlink, and to count for admission; never while copying a body or allocating.
 * A commit builds the whole object unlocked, then takes the lock once to decide
 * admission, unlink the victims and the replaced variant, and link the new one;
 * what left the index is unreferenced after the lock is dropped.
 *
 * Admission (TinyLFU without a window): every lookup counts the key in a
 * count-min sketch (4 rows of 4-bit counters) behind a doorkeeper bitset that
 * takes a key's first sight, so one-hit wonders never reach the sketch. When a
 * new object needs room, the victims come from the LRU tail and each must be
 * asked for no more often than the new key; one more popular than it refuses the
 * new object and nothing is evicted. Counters are halved and the doorkeeper
 * cleared every 10 x width counts, so old popularity fades. */
#include "cache.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <openssl/siphash.h>

#include "cachedisk.h"

#define SKETCH_ROWS 4
#define COUNTER_MAX 15

typedef struct {
  _Alignas(64) pthread_mutex_t lock; /* own cache lines: no false sharing between shards */
  mg_cobj_t **buckets;
  size_t mask;
  mg_cobj_t *head, *tail; /* LRU list, head = most recent */
  size_t used, cap;       /* bytes; cap immutable */
  /* admission */
  uint8_t *sketch;        /* SKETCH_ROWS x width counters */
  uint64_t *door;         /* width bits */
  size_t width;           /* power of two */
  size_t adds, sample;    /* counts since the last halving; halve at sample */
  uint64_t tick;          /* counts uses: an object's `used` orders a key's variants */
  /* statistics (under the lock) */
  uint64_t objects, lookups, hits, stores, replaced, rejected, evictions, too_big;
} shard_t;

struct mg_cache_s {
  uint64_t cap, max_object;
  uint64_t sip[2];
  unsigned nshards; /* power of two */
  shard_t *shards;
  mg_cdisk_t *disk; /* NULL: memory only; set before other threads see c */
  /* Removals against promotions from disk (shared by every worker thread, hence
   * atomic): a lookup that reads a file while a remove of its key runs on another
   * thread must not link what it read after the remove emptied memory. removing
   * counts the removes under way, removals every remove begun; a promotion links
   * only when none was under way before its disk read and none began since
   * (link_obj checks under the shard lock, which the remove's memory part takes). */
  atomic_int removing;
  atomic_uint_fast64_t removals;
};

struct mg_cwriter_s {
  mg_cache_t *c;
  char *key;
  size_t klen;
  uint64_t hash;
  mg_cchunk_t *body, *tail;
  uint64_t body_len;
  size_t chunk_bytes; /* allocated for chunks, for the cost */
  int too_big;
};

static uint64_t hash_key(const mg_cache_t *c, mg_str_t k) {
  return SIPHASH_24(c->sip, (const uint8_t *)k.p, k.len);
}

static shard_t *shard_of(mg_cache_t *c, uint64_t h) {
  return &c->shards[(h >> 40) & (c->nshards - 1)];
}

/* ---- admission ------------------------------------------------------------- */

static size_t row_idx(const shard_t *s, uint64_t h, int row) {
  uint64_t h1 = h, h2 = (h >> 32) | 1;
  return (size_t)(h1 + (uint64_t)row * h2 * 0x9e3779b97f4a7c15ULL) & (s->width - 1);
}

static size_t door_idx(const shard_t *s, uint64_t h) {
  return (size_t)((h >> 17) ^ (h << 7)) & (s->width - 1);
}

static int door_has(const shard_t *s, uint64_t h) {
  size_t i = door_idx(s, h);
  return (s->door[i / 64] >> (i % 64)) & 1;
}

static unsigned freq_locked(const shard_t *s, uint64_t h) {
  unsigned m = COUNTER_MAX;
  for (int r = 0; r < SKETCH_ROWS; r++) {
    unsigned v = s->sketch[(size_t)r * s->width + row_idx(s, h, r)];
    if (v < m) m = v;
  }
  return m + (unsigned)door_has(s, h);
}

static void count_locked(shard_t *s, uint64_t h) {
  size_t di = door_idx(s, h);
  if (!((s->door[di / 64] >> (di % 64)) & 1)) {
    s->door[di / 64] |= 1ULL << (di % 64);
  } else {
    for (int r = 0; r < SKETCH_ROWS; r++) {
      uint8_t *v = &s->sketch[(size_t)r * s->width + row_idx(s, h, r)];
      if (*v < COUNTER_MAX) (*v)++;
    }
  }
  if (++s->adds >= s->sample) {
    for (size_t i = 0; i < SKETCH_ROWS * s->width; i++) s->sketch[i] >>= 1;
    memset(s->door, 0, s->width / 8);
    s->adds = 0;
  }
}

/* ---- the index ----------------------------------------------------------------- */

static void lru_unlink(shard_t *s, mg_cobj_t *o) {
  if (o->prev) o->prev->next = o->next; else s->head = o->next;
  if (o->next) o->next->prev = o->prev; else s->tail = o->prev;
  o->prev = o->next = NULL;
}

static void lru_push(shard_t *s, mg_cobj_t *o) {
  o->used = ++s->tick;
  o->prev = NULL;
  o->next = s->head;
  if (s->head) s->head->prev = o; else s->tail = o;
  s->head = o;
}

/* Unlinks o from its chain and the LRU; the index's reference goes to the caller. */
static void unlink_locked(shard_t *s, mg_cobj_t *o) {
  mg_cobj_t **pp = &s->buckets[o->hash & s->mask];
  while (*pp != o) pp = &(*pp)->hnext;
  *pp = o->hnext;
  o->hnext = NULL;
  lru_unlink(s, o);
  s->used -= o->cost;
  s->objects--;
}

static void obj_free(mg_cobj_t *o) {
  mg_cchunk_t *ch = o->body;
  while (ch) {
    mg_cchunk_t *n = ch->next;
    free(ch);
    ch = n;
  }
  free(o);
}

void mg_cobj_ref(mg_cobj_t *o) { atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed); }

void mg_cobj_unref(mg_cobj_t *o) {
  if (!o) return;
  if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) obj_free(o);
}

/* Drops the index's references of a list of unlinked objects (hnext-linked),
 * outside any lock. */
static void unref_all(mg_cobj_t *garbage) {
  while (garbage) {
    mg_cobj_t *next = garbage->hnext;
    mg_cobj_unref(garbage);
    garbage = next;
  }
}

/* ---- the store ----------------------------------------------------------------- */

static size_t pow2_at_least(size_t n, size_t lo, size_t hi) {
  size_t p = lo;
  while (p < n && p < hi) p <<= 1;
  return p;
}

mg_cache_t *mg_cache_new(uint64_t cap, uint64_t max_object) {
  if (cap == 0 || max_object == 0) return NULL;
  mg_cache_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->cap = cap;
  c->max_object = max_object;
  if (!RAND_bytes((uint8_t *)c->sip, sizeof c->sip)) goto fail_c;
  /* a shard evicts only its own objects: each must hold two of the largest */
  unsigned n = MG_CACHE_SHARDS;
  while (n > 1 && cap / n < 2 * (max_object + MG_CACHE_OVERHEAD)) n /= 2;
  c->nshards = n;
  c->shards = calloc(n, sizeof *c->shards);
  if (!c->shards) goto fail_c;
  for (unsigned i = 0; i < n; i++) {
    shard_t *s = &c->shards[i];
    s->cap = (size_t)(cap / n);
    size_t expect = s->cap / 4096 + 1; /* objects of ~4 KiB: the sizing guess */
    size_t nb = pow2_at_least(expect, 16, (size_t)1 << 20);
    s->width = pow2_at_least(expect * 8, 512, (size_t)1 << 22);
    s->sample = s->width * 10;
    s->mask = nb - 1;
    s->buckets = calloc(nb, sizeof *s->buckets);
    s->sketch = calloc(SKETCH_ROWS * s->width, 1);
    s->door = calloc(s->width / 64, sizeof *s->door);
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
      free(s->buckets);
      free(s->sketch);
      free(s->door);
      s->buckets = NULL;
      c->nshards = i;
      goto fail_shards;
    }
    if (!s->buckets || !s->sketch || !s->door) {
      c->nshards = i + 1;
      goto fail_shards;
    }
  }
  return c;
fail_shards:
  mg_cache_free(c);
  return NULL;
fail_c:
  free(c);
  return NULL;
}

void mg_cache_free(mg_cache_t *c) {
  if (!c) return;
  mg_cdisk_close(c->disk); /* writes what is queued first: those objects are still alive */
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    mg_cobj_t *o = s->head;
    while (o) {
      mg_cobj_t *n = o->next;
      mg_cobj_unref(o);
      o = n;
    }
    free(s->buckets);
    free(s->sketch);
    free(s->door);
    pthread_mutex_destroy(&s->lock);
  }
  free(c->shards);
  free(c);
}

uint64_t mg_cache_max_object(const mg_cache_t *c) { return c->max_object; }

/* promote: o comes from the disk store (read after removals was gen) */
#define NOT_PROMOTED UINT64_MAX
static int link_obj(mg_cache_t *c, mg_cobj_t *o, uint64_t promote_gen);

static void remove_begin(mg_cache_t *c) {
  atomic_fetch_add(&c->removing, 1);
  atomic_fetch_add(&c->removals, 1);
}

static void remove_end(mg_cache_t *c) { atomic_fetch_sub(&c->removing, 1); }

/* A memory miss with a disk store: the variant from disk, promoted into memory
 * (through admission, and only when no remove ran meanwhile; the caller gets its
 * reference either way). *nv becomes the larger of the two tiers' variant counts. */
static mg_cobj_t *disk_lookup(mg_cache_t *c, mg_str_t key, uint64_t h, mg_cache_match_cb match, void *ctx,
                              int *nv) {
  int dnv = 0;
  uint64_t gen = atomic_load(&c->removals);
  int busy = atomic_load(&c->removing) > 0; /* a remove under way may not have reached the disk yet */
  mg_cobj_t *o = mg_cdisk_lookup(c->disk, key, match, ctx, &dnv);
  if (dnv > *nv) *nv = dnv;
  if (!o) return NULL;
  o->hash = h;
  if (busy || gen == NOT_PROMOTED) return o; /* answered, not kept */
  mg_cobj_ref(o); /* one for the caller, one the index takes or drops */
  link_obj(c, o, gen);
  return o;
}

mg_cobj_t *mg_cache_lookup(mg_cache_t *c, mg_str_t key, mg_cache_match_cb match, void *ctx,
                           int *variants) {
  uint64_t h = hash_key(c, key);
  shard_t *s = shard_of(c, h);
  mg_cobj_t *found = NULL;
  int nv = 0;
  pthread_mutex_lock(&s->lock);
  s->lookups++;
  count_locked(s, h);
  for (mg_cobj_t *o = s->buckets[h & s->mask]; o; o = o->hnext) {
    if (o->hash != h || !mg_str_eq(o->key, key)) continue;
    nv++;
    if (!found && (!match || match(o, ctx))) found = o;
  }
  if (found) {
    mg_cobj_ref(found);
    lru_unlink(s, found);
    lru_push(s, found);
    s->hits++;
  }
  pthread_mutex_unlock(&s->lock);
  if (!found && c->disk) found = disk_lookup(c, key, h, match, ctx, &nv);
  if (variants) *variants = nv;
  return found;
}

mg_cwriter_t *mg_cache_begin(mg_cache_t *c, mg_str_t key) {
  mg_cwriter_t *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->key = malloc(key.len ? key.len : 1);
  if (!w->key) {
    free(w);
    return NULL;
  }
  memcpy(w->key, key.p, key.len);
  w->klen = key.len;
  w->c = c;
  w->hash = hash_key(c, key);
  return w;
}

static void writer_free(mg_cwriter_t *w) {
  mg_cchunk_t *ch = w->body;
  while (ch) {
    mg_cchunk_t *n = ch->next;
    free(ch);
    ch = n;
  }
  free(w->key);
  free(w);
}

static void writer_drop_body(mg_cwriter_t *w) {
  mg_cchunk_t *ch = w->body;
  while (ch) {
    mg_cchunk_t *n = ch->next;
    free(ch);
    ch = n;
  }
  w->body = w->tail = NULL;
  w->chunk_bytes = 0;
}

int mg_cache_write(mg_cwriter_t *w, const char *p, size_t n) {
  if (w->too_big) return MG_ELIMIT;
  if (w->body_len + n > w->c->max_object) {
    w->too_big = 1;
    writer_drop_body(w); /* nothing of it will be stored: give the memory back now */
    return MG_ELIMIT;
  }
  while (n > 0) {
    if (!w->tail || w->tail->len == MG_CACHE_CHUNK) {
      mg_cchunk_t *ch = malloc(sizeof *ch + MG_CACHE_CHUNK);
      if (!ch) return MG_ENOMEM;
      ch->next = NULL;
      ch->len = 0;
      if (w->tail) w->tail->next = ch; else w->body = ch;
      w->tail = ch;
      w->chunk_bytes += sizeof *ch + MG_CACHE_CHUNK;
    }
    size_t take = MG_CACHE_CHUNK - w->tail->len;
    if (take > n) take = n;
    memcpy(w->tail->data + w->tail->len, p, take);
    w->tail->len += take;
    w->body_len += take;
    p += take;
    n -= take;
  }
  return 0;
}

void mg_cache_abort(mg_cwriter_t *w) {
  if (w) writer_free(w);
}

/* Trims the last chunk to its length (a 4 KiB body must not cost 16 KiB). */
static void writer_trim(mg_cwriter_t *w) {
  if (!w->tail || w->tail->len == MG_CACHE_CHUNK) return;
  mg_cchunk_t **pp = &w->body;
  while (*pp != w->tail) pp = &(*pp)->next;
  mg_cchunk_t *t = realloc(w->tail, sizeof *t + w->tail->len);
  if (!t) return; /* keeps the larger block: still correct */
  w->chunk_bytes -= MG_CACHE_CHUNK - t->len;
  *pp = t;
  w->tail = t;
}

int mg_cache_commit(mg_cwriter_t *w, mg_str_t vary, mg_str_t head, const mg_cp_meta_t *meta) {
  mg_cache_t *c = w->c;
  shard_t *s = shard_of(c, w->hash);
  if (w->too_big) {
    pthread_mutex_lock(&s->lock);
    s->too_big++;
    pthread_mutex_unlock(&s->lock);
    writer_free(w);
    return MG_ELIMIT;
  }
  writer_trim(w);
  size_t blk = sizeof(mg_cobj_t) + w->klen + vary.len + head.len;
  mg_cobj_t *o = malloc(blk);
  if (!o) {
    writer_free(w);
    return MG_ENOMEM;
  }
  memset(o, 0, sizeof *o);
  atomic_init(&o->refs, 1); /* the index's */
  char *d = (char *)(o + 1);
  memcpy(d, w->key, w->klen);
  o->key = (mg_str_t){ d, w->klen };
  d += w->klen;
  if (vary.len) memcpy(d, vary.p, vary.len);
  o->vary = (mg_str_t){ d, vary.len };
  d += vary.len;
  if (head.len) memcpy(d, head.p, head.len);
  o->head = (mg_str_t){ d, head.len };
  o->meta = *meta;
  o->hash = w->hash;
  o->body = w->body;
  o->body_len = w->body_len;
  o->cost = blk + w->chunk_bytes + MG_CACHE_OVERHEAD;
  w->body = w->tail = NULL;
  writer_free(w);

  /* the disk store gets every committed object, admitted to memory or not;
   * queued before it is linked, so that a remove that finds it in memory finds
   * (and cancels) its write too: queued after, a write could follow the remove */
  if (c->disk) {
    mg_cobj_ref(o);
    mg_cdisk_store(c->disk, o);
  }
  return link_obj(c, o, NOT_PROMOTED);
}

/* Whether the memory store has a variant of o's key that o must not replace:
 * a promotion from disk never overwrites what a commit linked since the miss. */
static int newer_in_memory(shard_t *s, const mg_cobj_t *o) {
  for (mg_cobj_t *e = s->buckets[o->hash & s->mask]; e; e = e->hnext)
    if (e->hash == o->hash && mg_str_eq(e->key, o->key) &&
        (mg_str_eq(e->vary, o->vary) || (o->vary.len == 0) != (e->vary.len == 0)))
      return 1;
  return 0;
}

/* Links o (its one reference becomes the index's, or is dropped when it is not
 * linked): replacement of variants, admission, eviction. promote_gen other than
 * NOT_PROMOTED: o comes from the disk store, read when removals was that; it
 * yields to any variant of its key in memory, and to any remove begun since. */
static int link_obj(mg_cache_t *c, mg_cobj_t *o, uint64_t promote_gen) {
  shard_t *s = shard_of(c, o->hash);
  mg_cobj_t *garbage = NULL; /* linked through hnext; unreferenced after the lock */
  int rc = 0;
  int promote = promote_gen != NOT_PROMOTED;
  pthread_mutex_lock(&s->lock);
  if (promote && (atomic_load(&c->removals) != promote_gen || newer_in_memory(s, o))) {
    rc = MG_CACHE_NOT_ADMITTED;
    goto unlock;
  }
  if (o->cost > s->cap) {
    s->too_big++;
    rc = MG_ELIMIT;
    goto unlock;
  }
  /* variants the new object makes wrong: a response without Vary replaces every
   * variant of its key, one with Vary replaces a variant stored without (the
   * origin changed its Vary); these go first, whatever admission says after */
  for (mg_cobj_t **pp = &s->buckets[o->hash & s->mask]; *pp;) {
    mg_cobj_t *e = *pp;
    if (e->hash == o->hash && mg_str_eq(e->key, o->key) && (o->vary.len == 0) != (e->vary.len == 0)) {
      unlink_locked(s, e); /* *pp is now the next one */
      e->hnext = garbage;
      garbage = e;
      s->replaced++;
      continue;
    }
    pp = &e->hnext;
  }
  /* the variant o replaces: its own, or when the key has as many as it keeps,
   * the least recently used of them */
  mg_cobj_t *old = NULL, *lru = NULL;
  int nvar = 0;
  for (mg_cobj_t *e = s->buckets[o->hash & s->mask]; e; e = e->hnext) {
    if (e->hash != o->hash || !mg_str_eq(e->key, o->key)) continue;
    if (mg_str_eq(e->vary, o->vary)) {
      old = e;
      break;
    }
    nvar++;
    if (!lru || e->used < lru->used) lru = e;
  }
  if (!old && nvar >= MG_CACHE_VARIANTS_MAX) old = lru;
  size_t freed = old ? old->cost : 0;
  if (s->used - freed + o->cost > s->cap) {
    /* room from the LRU tail, each victim checked before any is evicted */
    unsigned f = freq_locked(s, o->hash);
    size_t room = freed;
    for (mg_cobj_t *v = s->tail; v && s->used - room + o->cost > s->cap; v = v->prev) {
      if (v == old) continue;
      if (v->hash != o->hash && freq_locked(s, v->hash) > f) {
        s->rejected++;
        rc = MG_CACHE_NOT_ADMITTED;
        goto unlock;
      }
      room += v->cost;
    }
    while (s->used - freed + o->cost > s->cap) {
      mg_cobj_t *v = s->tail;
      if (v == old) v = v->prev;
      unlink_locked(s, v);
      v->hnext = garbage;
      garbage = v;
      s->evictions++;
    }
  }
  if (old) {
    unlink_locked(s, old);
    old->hnext = garbage;
    garbage = old;
    s->replaced++;
  }
  mg_cobj_t **b = &s->buckets[o->hash & s->mask];
  o->hnext = *b;
  *b = o;
  lru_push(s, o);
  s->used += o->cost;
  s->objects++;
  if (!promote) s->stores++;
  o = NULL;
unlock:
  pthread_mutex_unlock(&s->lock);
  if (o) mg_cobj_unref(o);
  unref_all(garbage);
  return rc;
}

/* The disk's part of a removal, and its end: the larger count of the two tiers. */
static int remove_disk_end(mg_cache_t *c, mg_str_t key, int prefix, int n) {
  if (c->disk) {
    int nd = mg_cdisk_remove(c->disk, key, prefix);
    if (nd > n) n = nd;
  }
  remove_end(c);
  return n;
}

int mg_cache_remove(mg_cache_t *c, mg_str_t key) {
  uint64_t h = hash_key(c, key);
  shard_t *s = shard_of(c, h);
  mg_cobj_t *garbage = NULL;
  int n = 0;
  remove_begin(c);
  pthread_mutex_lock(&s->lock);
  mg_cobj_t *o = s->buckets[h & s->mask];
  while (o) {
    mg_cobj_t *next = o->hnext;
    if (o->hash == h && mg_str_eq(o->key, key)) {
      unlink_locked(s, o);
      o->hnext = garbage;
      garbage = o;
      n++;
    }
    o = next;
  }
  pthread_mutex_unlock(&s->lock);
  unref_all(garbage);
  return remove_disk_end(c, key, 0, n);
}

int mg_cache_remove_prefix(mg_cache_t *c, mg_str_t prefix) {
  int n = 0;
  remove_begin(c);
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    mg_cobj_t *garbage = NULL;
    pthread_mutex_lock(&s->lock);
    for (mg_cobj_t *o = s->head, *next; o; o = next) {
      next = o->next;
      if (o->key.len < prefix.len || (prefix.len && memcmp(o->key.p, prefix.p, prefix.len) != 0)) continue;
      unlink_locked(s, o);
      o->hnext = garbage;
      garbage = o;
      n++;
    }
    pthread_mutex_unlock(&s->lock);
    unref_all(garbage);
  }
  return remove_disk_end(c, prefix, 1, n);
}

void mg_cache_stats(mg_cache_t *c, mg_cache_stats_t *st) {
  memset(st, 0, sizeof *st);
  st->cap = c->cap;
  for (unsigned i = 0; i < c->nshards; i++) {
    shard_t *s = &c->shards[i];
    pthread_mutex_lock(&s->lock);
    st->objects += s->objects;
    st->bytes += s->used;
    st->lookups += s->lookups;
    st->hits += s->hits;
    st->stores += s->stores;
    st->replaced += s->replaced;
    st->rejected += s->rejected;
    st->evictions += s->evictions;
    st->too_big += s->too_big;
    pthread_mutex_unlock(&s->lock);
  }
  if (c->disk) mg_cdisk_stats(c->disk, st);
}

int mg_cache_open_disk(mg_cache_t *c, const char *path, uint64_t cap, char *err, size_t errlen) {
  if (c->disk) {
    snprintf(err, errlen, "the store has a disk store already");
    return MG_ECONFIG;
  }
  c->disk = mg_cdisk_open(path, cap, mg_cobj_unref, err, errlen);
  return c->disk ? 0 : MG_ECONFIG;
}

void mg_cache_sync(mg_cache_t *c) {
  if (c->disk) mg_cdisk_sync(c->disk);
}

/* ---- the process's store ---------------------------------------------------------
 * Shared on purpose: workers are threads of one process and every one of them must
 * see the same objects. Published with a release store; never freed before exit. */
static _Atomic(mg_cache_t *) global;

/* Whether c was made with this disk path and size (the path as given). */
static int same_disk(const mg_cache_t *c, const char *path, uint64_t disk_cap) {
  if (!c->disk || !path) return !c->disk && !path;
  const char *p = mg_cdisk_path(c->disk);
  size_t n = strlen(p), m = strlen(path);
  while (m > n && path[m - 1] == '/') m--;
  return m == n && memcmp(p, path, n) == 0 && mg_cdisk_cap(c->disk) == disk_cap;
}

int mg_cache_configure(uint64_t cap, uint64_t max_object, const char *path, uint64_t disk_cap, char *err,
                       size_t errlen) {
  mg_cache_t *c = atomic_load_explicit(&global, memory_order_acquire);
  if (cap == 0) return 0;
  if (c) return (c->cap == cap && c->max_object == max_object && same_disk(c, path, disk_cap)) ? 0 : 1;
  c = mg_cache_new(cap, max_object);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return MG_ENOMEM;
  }
  if (path) {
    int rc = mg_cache_open_disk(c, path, disk_cap, err, errlen);
    if (rc < 0) {
      mg_cache_free(c);
      return rc;
    }
  }
  atomic_store_explicit(&global, c, memory_order_release);
  return 0;
}

mg_cache_t *mg_cache_global(void) { return atomic_load_explicit(&global, memory_order_acquire); }

void mg_cache_shutdown(void) {
  mg_cache_t *c = atomic_exchange_explicit(&global, NULL, memory_order_acq_rel);
  mg_cache_free(c);
}
