/* Fetches in flight, by cache key (docs/cache.md "Request collapsing"): the
 * "once" of request collapsing and of stale-while-revalidate's background
 * refresh. One table per process, shared by every worker thread (a waiter may
 * be on another worker than the fetch it waits for). A leaf: no libuv, no HTTP;
 * the proxy decides who leads, who waits, and how a waiter is woken.
 *
 *   table: one mutex, hash chains of flights (only those still pending)
 *   flight: the key (copied), a state, the waiters' nodes, a reference count
 *
 * Ownership: mg_cflight_join gives a reference (the leader's, or a waiter's);
 * mg_cflight_done (the leader) and mg_cflight_leave (a waiter) give it back; the
 * last one frees the flight. A waiter's node belongs to the waiter (embedded in
 * its request): it is linked under the lock at join and unlinked under the lock
 * by done or leave, so the leader never touches a node whose owner has left.
 * malloc and free never run under the lock. */
#ifndef MG_CFLIGHT_H
#define MG_CFLIGHT_H

#include "mg.h"

typedef struct mg_cflight_s mg_cflight_t;
typedef struct mg_cwaiter_s mg_cwaiter_t;

/* A waiter's node. `wake(arg)` is called once, by the leader's thread, under the
 * table's lock, when the fetch ends: it must only signal the waiter's own thread
 * (uv_async_send) and never call back into this module. */
struct mg_cwaiter_s {
  mg_cwaiter_t *prev, *next; /* in its flight's list, under the lock */
  void (*wake)(void *arg);
  void *arg;
  int linked;
};

enum {
  MG_CFLIGHT_PENDING, /* the leader is fetching */
  MG_CFLIGHT_STORED,  /* the leader's response was stored: look the store up again */
  MG_CFLIGHT_FAILED   /* not stored (not storable, failed, too big, ...): go alone */
};

/* Joins the fetch of key in flight, or starts one. With one in flight, w (its
 * wake and arg set) is linked to it and *leader = 0; with w NULL nothing is
 * joined (NULL: someone else fetches; stale-while-revalidate's "once").
 * Without one: when may_lead, a new flight led by the caller (*leader = 1; w is
 * not used), else NULL. NULL too when out of memory (the caller goes alone). */
mg_cflight_t *mg_cflight_join(mg_str_t key, mg_cwaiter_t *w, int may_lead, int *leader);
/* The leader's fetch ended (MG_CFLIGHT_STORED or _FAILED): the flight leaves the
 * table (the next miss of the key starts another), its waiters are unlinked and
 * woken, and the leader's reference goes. */
void mg_cflight_done(mg_cflight_t *f, int outcome);
/* A waiter gives up its place (woken, timed out, or its client left): w is
 * unlinked if it still was, and the waiter's reference goes. */
void mg_cflight_leave(mg_cflight_t *f, mg_cwaiter_t *w);
/* MG_CFLIGHT_*: what the leader said (readable by a waiter once woken). */
int mg_cflight_state(const mg_cflight_t *f);
/* Flights in the table now (tests). */
size_t mg_cflight_count(void);

#endif
