#include "dyn.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

void mg_dyn_adopt(mg_gen_t *ng, const mg_gen_t *old) {
  for (int i = 0; i < ng->nupstreams; i++) {
    mg_upstream_cfg_t *u = &ng->upstreams[i];
    for (int j = 0; j < old->nupstreams; j++) {
      const mg_upstream_cfg_t *o = &old->upstreams[j];
      if (strcmp(u->name, o->name) != 0) continue;
      if (u->key && o->key && strcmp(u->key, o->key) == 0 && o->bal) {
        mg_balancer_ref(o->bal);
        mg_balancer_unref(u->bal);
        u->bal = o->bal;
      }
      break;
    }
  }
}

/* ---- re-resolution (main thread) ---- */

/* An upstream's re-resolution timer. While any of its lookups is in flight a
 * tick starts none (a slow or failing DNS with a short `resolve` would otherwise
 * pile lookups up in libuv's thread pool without bound, and a shutdown would wait
 * for all of them); it is freed once it is closed and its last lookup is back. */
typedef struct {
  uv_timer_t timer;
  mg_upstream_cfg_t *u; /* (the generation's: read by the tick only) */
  int inflight;         /* lookups started and not back yet */
  int closed;           /* mg_dyn_resolve_stop closed the timer */
  unsigned char *failing; /* per name: its last lookup failed (warned once) */
} res_timer_t;

/* One lookup in flight: owns a reference to the balancer, so that it may finish
 * after its generation was replaced (it then changes the balancer the new
 * generation adopted, or one nobody reads any more). */
typedef struct {
  uv_getaddrinfo_t req;
  mg_balancer_t *bal;
  res_timer_t *rt;
  char upstream[64];
  char host[256];
  int port, weight, from;
} lookup_t;

static void rt_free(res_timer_t *rt) {
  free(rt->failing);
  free(rt);
}

struct mg_dyn_res_s {
  res_timer_t **timers;
  int n;
};

/* Makes the members that came from name `from` exactly `addrs`: new ones join
 * (drained ones come back), the others drain. */
static void apply(mg_balancer_t *bal, const char *upstream, const char *host, int from, int weight,
                  const struct sockaddr_storage *addrs, int n) {
  mg_upstream_cfg_t u = { .bal = bal };
  int changed = 0;
  for (int k = 0; k < n; k++) {
    char text[64];
    mg_upstream_text((const struct sockaddr *)&addrs[k], text, sizeof(text));
    int id = mg_balance_find(bal, text);
    if (id >= 0 && !(atomic_load(&mg_balance_peer(bal, id)->flags) & (MG_PEER_DRAINING | MG_PEER_REMOVED)))
      continue; /* a member already */
    /* published at once (a few addresses): an address the Lua API added meanwhile
     * is refused as a duplicate, not listed twice */
    int rc = mg_upstream_add(&u, (const struct sockaddr *)&addrs[k], weight, from, 1);
    if (rc >= 0) MG_INFO(-1, "upstream %s: %s resolves to %s: it joins", upstream, host, text);
    else if (rc != MG_BALANCE_EEXIST) /* (EEXIST: added meanwhile, a member already) */
      MG_WARN(-1, "upstream %s: %s resolves to %s, which cannot join: %s", upstream, host, text,
              rc == MG_BALANCE_EFULL ? "too many servers in this upstream (ids are never reused)"
                                     : "out of memory");
  }
  int count = mg_balance_count(bal);
  for (int id = 0; id < count; id++) {
    const mg_server_t *s = mg_balance_data(bal, id);
    if (!s || s->from != from) continue;
    if (atomic_load(&mg_balance_peer(bal, id)->flags) & (MG_PEER_DRAINING | MG_PEER_REMOVED)) continue;
    int kept = 0;
    for (int k = 0; k < n && !kept; k++) {
      char text[64];
      mg_upstream_text((const struct sockaddr *)&addrs[k], text, sizeof(text));
      kept = strcmp(text, s->text) == 0;
    }
    if (kept) continue;
    atomic_fetch_or(&mg_balance_peer(bal, id)->flags, MG_PEER_DRAINING);
    MG_INFO(-1, "upstream %s: %s no longer resolves to %s: it drains", upstream, host, s->text);
    changed = 1;
  }
  if (changed && mg_balance_rebuild(bal) < 0) MG_ERR(-1, "upstream %s: out of memory re-resolving", upstream);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  lookup_t *q = req->data;
  struct sockaddr_storage addrs[MG_UPSTREAM_ADDRS] = { { 0 } }; /* (gcc cannot tell n guards it) */
  int n = 0;
  res_timer_t *rt = q->rt;
  unsigned char *failing = rt->closed ? NULL : &rt->failing[q->from];
  if (status == 0) {
    for (struct addrinfo *a = res; a; a = a->ai_next) n = mg_upstream_push_addr(addrs, n, MG_UPSTREAM_ADDRS, a->ai_addr, q->port);
    apply(q->bal, q->upstream, q->host, q->from, q->weight, addrs, n);
    if (failing && *failing) MG_INFO(-1, "upstream %s: re-resolving %s works again", q->upstream, q->host);
    if (failing) *failing = 0;
  } else if (status != UV_ECANCELED && failing && !*failing) { /* once until it works again */
    MG_WARN(-1, "upstream %s: re-resolving %s failed (%s); its servers stay", q->upstream, q->host,
            uv_strerror(status));
    *failing = 1;
  }
  uv_freeaddrinfo(res);
  mg_balancer_unref(q->bal);
  free(q);
  if (--rt->inflight == 0 && rt->closed) rt_free(rt);
}

static void on_resolve_timer(uv_timer_t *t) {
  res_timer_t *rt = t->data;
  mg_upstream_cfg_t *u = rt->u;
  if (rt->inflight > 0) return; /* the last tick's lookups first */
  for (int i = 0; i < u->nnames; i++) {
    const mg_upname_t *nm = &u->names[i];
    struct sockaddr_storage addrs[MG_UPSTREAM_ADDRS];
    int n = mg_upstream_hosts_file(nm->host, nm->port, addrs, MG_UPSTREAM_ADDRS);
    if (n >= 0) { /* the override file names it: no DNS */
      apply(u->bal, u->name, nm->host, i, nm->weight, addrs, n);
      continue;
    }
    lookup_t *q = calloc(1, sizeof(*q));
    if (!q) continue;
    q->bal = u->bal;
    q->rt = rt;
    mg_balancer_ref(q->bal);
    snprintf(q->upstream, sizeof(q->upstream), "%s", u->name);
    snprintf(q->host, sizeof(q->host), "%s", nm->host);
    q->port = nm->port;
    q->weight = nm->weight;
    q->from = i;
    q->req.data = q;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (uv_getaddrinfo(t->loop, &q->req, on_resolved, q->host, NULL, &hints) < 0) {
      mg_balancer_unref(q->bal);
      free(q);
    } else {
      rt->inflight++;
    }
  }
}

void mg_dyn_resolve_start(uv_loop_t *loop, mg_gen_t *g) {
  int n = 0;
  for (int i = 0; i < g->nupstreams; i++) n += g->upstreams[i].nnames > 0 && g->upstreams[i].resolve_ms > 0;
  if (n == 0) return;
  struct mg_dyn_res_s *r = calloc(1, sizeof(*r));
  if (r) r->timers = calloc((size_t)n, sizeof(*r->timers));
  if (!r || !r->timers) {
    free(r);
    MG_ERR(-1, "out of memory: upstream names are not re-resolved");
    return;
  }
  for (int i = 0; i < g->nupstreams; i++) {
    mg_upstream_cfg_t *u = &g->upstreams[i];
    if (u->nnames == 0 || u->resolve_ms == 0) continue;
    res_timer_t *t = calloc(1, sizeof(*t));
    if (t) t->failing = calloc((size_t)u->nnames, 1);
    if (!t || !t->failing) {
      free(t);
      MG_ERR(-1, "out of memory: upstream %s's names are not re-resolved", u->name);
      continue;
    }
    t->u = u;
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    uv_timer_start(&t->timer, on_resolve_timer, u->resolve_ms, u->resolve_ms);
    uv_unref((uv_handle_t *)&t->timer); /* the workers keep the process alive, not this */
    r->timers[r->n++] = t;
  }
  g->resolving = r;
}

static void on_timer_closed(uv_handle_t *h) {
  res_timer_t *rt = h->data;
  rt->closed = 1;
  if (rt->inflight == 0) rt_free(rt);
}

void mg_dyn_resolve_stop(mg_gen_t *g) {
  struct mg_dyn_res_s *r = g->resolving;
  if (!r) return;
  for (int i = 0; i < r->n; i++) uv_close((uv_handle_t *)&r->timers[i]->timer, on_timer_closed);
  free(r->timers);
  free(r);
  g->resolving = NULL;
}

