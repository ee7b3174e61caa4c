/* Fetches in flight by cache key (cflight.h has the ownership rules).
 *
 * One mutex for the whole table: it is taken once per miss of a caching route
 * that collapses (join), once per waiter that leaves and once per fetch that
 * ends, never on a hit, so it is far from the hot path; held only to walk a
 * chain, link or unlink, and signal waiters (uv_async_send is a write to an
 * eventfd). Shared between threads because a waiter may be on any worker. */
#include "cflight.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 256 /* flights live as long as one fetch: few at a time */

struct mg_cflight_s {
  mg_cflight_t *hnext; /* the table's chain, while pending */
  uint64_t hash;
  int refs;            /* under the lock */
  atomic_int state;    /* MG_CFLIGHT_* */
  int in_table;
  mg_cwaiter_t *waiters;
  size_t klen;
  char key[];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static mg_cflight_t *table[BUCKETS];
static size_t nflights;

static uint64_t hash_key(mg_str_t k) {
  uint64_t h = 14695981039346656037ull; /* FNV-1a: keys come from requests, but a
                                           chain is walked only under a miss */
  for (size_t i = 0; i < k.len; i++) h = (h ^ (unsigned char)k.p[i]) * 1099511628211ull;
  return h;
}

static mg_cflight_t **slot(uint64_t h) { return &table[(h >> 7) % BUCKETS]; }

static mg_cflight_t *find(mg_str_t k, uint64_t h) {
  for (mg_cflight_t *f = *slot(h); f; f = f->hnext)
    if (f->hash == h && f->klen == k.len && memcmp(f->key, k.p, k.len) == 0) return f;
  return NULL;
}

static void unlink_table(mg_cflight_t *f) {
  mg_cflight_t **pp = slot(f->hash);
  while (*pp && *pp != f) pp = &(*pp)->hnext;
  if (*pp) *pp = f->hnext;
  f->in_table = 0;
  nflights--;
}

static void unlink_waiter(mg_cflight_t *f, mg_cwaiter_t *w) {
  if (!w->linked) return;
  if (w->prev) w->prev->next = w->next;
  else f->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  w->prev = w->next = NULL;
  w->linked = 0;
}

mg_cflight_t *mg_cflight_join(mg_str_t key, mg_cwaiter_t *w, int may_lead, int *leader) {
  *leader = 0;
  uint64_t h = hash_key(key);
  /* allocated before the lock, in case this miss leads; freed after if not */
  mg_cflight_t *fresh = may_lead ? malloc(sizeof(*fresh) + key.len) : NULL;
  mg_cflight_t *got = NULL;
  pthread_mutex_lock(&lock);
  mg_cflight_t *f = find(key, h);
  if (f) {
    if (w) {
      w->prev = NULL;
      w->next = f->waiters;
      if (f->waiters) f->waiters->prev = w;
      f->waiters = w;
      w->linked = 1;
      f->refs++;
      got = f;
    }
  } else if (fresh) {
    fresh->hash = h;
    fresh->refs = 1;
    atomic_init(&fresh->state, MG_CFLIGHT_PENDING);
    fresh->waiters = NULL;
    fresh->klen = key.len;
    memcpy(fresh->key, key.p, key.len);
    fresh->hnext = *slot(h);
    *slot(h) = fresh;
    fresh->in_table = 1;
    nflights++;
    got = fresh;
    fresh = NULL;
    *leader = 1;
  }
  pthread_mutex_unlock(&lock);
  free(fresh);
  return got;
}

void mg_cflight_done(mg_cflight_t *f, int outcome) {
  if (!f) return;
  pthread_mutex_lock(&lock);
  atomic_store(&f->state, outcome);
  if (f->in_table) unlink_table(f);
  while (f->waiters) {
    mg_cwaiter_t *w = f->waiters;
    unlink_waiter(f, w);
    w->wake(w->arg); /* the waiter keeps its reference until it leaves */
  }
  int last = --f->refs == 0;
  pthread_mutex_unlock(&lock);
  if (last) free(f);
}

void mg_cflight_leave(mg_cflight_t *f, mg_cwaiter_t *w) {
  if (!f) return;
  pthread_mutex_lock(&lock);
  if (w) unlink_waiter(f, w);
  int last = --f->refs == 0;
  pthread_mutex_unlock(&lock);
  if (last) free(f);
}

int mg_cflight_state(const mg_cflight_t *f) { return atomic_load(&((mg_cflight_t *)f)->state); }

size_t mg_cflight_count(void) {
  pthread_mutex_lock(&lock);
  size_t n = nflights;
  pthread_mutex_unlock(&lock);
  return n;
}
