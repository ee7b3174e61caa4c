#include "dyn.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "log.h"
#include "luavm.h"
#include "wctx.h"

/* "ip:port" or "[ip6]:port" of sa. */
static void addr_text(const struct sockaddr *sa, char *text, size_t len) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(a, ip, sizeof(ip));
    snprintf(text, len, "[%s]:%d", ip, ntohs(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    uv_ip4_name(a, ip, sizeof(ip));
    snprintf(text, len, "%s:%d", ip, ntohs(a->sin_port));
  }
}

static socklen_t addr_len(const struct sockaddr *sa) {
  return sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

/* An IP literal with this port into *out: 1, else 0. */
static int literal(const char *host, int port, struct sockaddr_storage *out) {
  memset(out, 0, sizeof(*out));
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0) return 1;
  if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0) return 1;
  return 0;
}

/* Appends sa unless it is there already (same family as the first, at most max). */
static int push_addr(struct sockaddr_storage *out, int n, int max, const struct sockaddr *sa, int port) {
  if (n >= max || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) return n;
  if (n > 0 && out[0].ss_family != sa->sa_family) return n;
  struct sockaddr_storage a;
  memset(&a, 0, sizeof(a));
  memcpy(&a, sa, addr_len(sa));
  if (a.ss_family == AF_INET6) ((struct sockaddr_in6 *)&a)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)port);
  for (int i = 0; i < n; i++)
    if (memcmp(&out[i], &a, sizeof(a)) == 0) return n;
  out[n] = a;
  return n + 1;
}

/* The addresses $MOONGATE_HOSTS_FILE lists for host: their count, or -1 when the
 * file (or the variable) is not there or does not name host. */
static int hosts_file(const char *host, int port, struct sockaddr_storage *out, int max) {
  const char *path = getenv("MOONGATE_HOSTS_FILE");
  if (!path || !*path) return -1;
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[512];
  int n = 0, named = 0;
  while (fgets(line, sizeof(line), f)) {
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *save = NULL, *ip = strtok_r(line, " \t\r\n", &save);
    if (!ip) continue;
    for (char *name = strtok_r(NULL, " \t\r\n", &save); name; name = strtok_r(NULL, " \t\r\n", &save)) {
      if (strcasecmp(name, host) != 0) continue;
      named = 1;
      struct sockaddr_storage a;
      if (literal(ip, port, &a)) n = push_addr(out, n, max, (struct sockaddr *)&a, port);
    }
  }
  fclose(f);
  return named ? n : -1;
}

int mg_dyn_lookup(const char *host, int port, struct sockaddr_storage *out, int max) {
  if (literal(host, port, &out[0])) return 1;
  int n = hosts_file(host, port, out, max);
  if (n >= 0) return n;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return -1;
  n = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) n = push_addr(out, n, max, a->ai_addr, port);
  freeaddrinfo(res);
  return n;
}

int mg_dyn_add(mg_upstream_cfg_t *u, const struct sockaddr *sa, int weight, int from, int publish) {
  mg_server_t *s = calloc(1, sizeof(*s));
  if (!s) return MG_BALANCE_ENOMEM;
  memcpy(&s->addr, sa, addr_len(sa));
  s->addrlen = addr_len(sa);
  addr_text(sa, s->text, sizeof(s->text));
  s->weight = weight;
  s->from = from;
  int id = publish ? mg_balance_add(u->bal, s->text, weight, s) : mg_balance_add_quiet(u->bal, s->text, weight, s);
  if (id == MG_BALANCE_EEXIST && !publish) {
    /* listed again in `servers`: another server with the same address (its
     * weight counts again), keyed "ip:port#k" for the k-th listing */
    mg_server_t *first = mg_balance_data(u->bal, mg_balance_find(u->bal, s->text));
    char key[80];
    snprintf(key, sizeof(key), "%.56s#%d", s->text, (++first->dups + 1) % 1000000);
    id = mg_balance_add_quiet(u->bal, key, weight, s);
  }
  if (id < 0) free(s);
  return id;
}

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

/* One lookup in flight: owns a reference to the balancer, so that it may finish
 * after its generation was replaced (it then changes the balancer the new
 * generation adopted, or one nobody reads any more). */
typedef struct {
  uv_getaddrinfo_t req;
  mg_balancer_t *bal;
  char upstream[64];
  char host[256];
  int port, weight, from;
} lookup_t;

typedef struct {
  uv_timer_t timer;
  mg_upstream_cfg_t *u;
} res_timer_t;

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
    addr_text((const struct sockaddr *)&addrs[k], text, sizeof(text));
    int id = mg_balance_find(bal, text);
    if (id >= 0 && !(atomic_load(&mg_balance_peer(bal, id)->flags) & (MG_PEER_DRAINING | MG_PEER_REMOVED)))
      continue; /* a member already */
    if (mg_dyn_add(&u, (const struct sockaddr *)&addrs[k], weight, from, 0) >= 0) {
      MG_INFO(-1, "upstream %s: %s resolves to %s: it joins", upstream, host, text);
      changed = 1;
    }
  }
  int count = mg_balance_count(bal);
  for (int id = 0; id < count; id++) {
    const mg_server_t *s = mg_balance_data(bal, id);
    if (!s || s->from != from) continue;
    if (atomic_load(&mg_balance_peer(bal, id)->flags) & (MG_PEER_DRAINING | MG_PEER_REMOVED)) continue;
    int kept = 0;
    for (int k = 0; k < n && !kept; k++) {
      char text[64];
      addr_text((const struct sockaddr *)&addrs[k], text, sizeof(text));
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
  struct sockaddr_storage addrs[MG_DYN_ADDRS];
  int n = 0;
  if (status == 0) {
    for (struct addrinfo *a = res; a; a = a->ai_next) n = push_addr(addrs, n, MG_DYN_ADDRS, a->ai_addr, q->port);
    apply(q->bal, q->upstream, q->host, q->from, q->weight, addrs, n);
  } else if (status != UV_ECANCELED) {
    MG_WARN(-1, "upstream %s: re-resolving %s failed (%s); its servers stay", q->upstream, q->host,
            uv_strerror(status));
  }
  uv_freeaddrinfo(res);
  mg_balancer_unref(q->bal);
  free(q);
}

static void on_resolve_timer(uv_timer_t *t) {
  res_timer_t *rt = t->data;
  mg_upstream_cfg_t *u = rt->u;
  for (int i = 0; i < u->nnames; i++) {
    const mg_upname_t *nm = &u->names[i];
    struct sockaddr_storage addrs[MG_DYN_ADDRS];
    int n = hosts_file(nm->host, nm->port, addrs, MG_DYN_ADDRS);
    if (n >= 0) { /* the override file names it: no DNS */
      apply(u->bal, u->name, nm->host, i, nm->weight, addrs, n);
      continue;
    }
    lookup_t *q = calloc(1, sizeof(*q));
    if (!q) continue;
    q->bal = u->bal;
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
    if (!t) continue;
    t->u = u;
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
    uv_timer_start(&t->timer, on_resolve_timer, u->resolve_ms, u->resolve_ms);
    uv_unref((uv_handle_t *)&t->timer); /* the workers keep the process alive, not this */
    r->timers[r->n++] = t;
  }
  g->resolving = r;
}

static void on_timer_closed(uv_handle_t *h) { free(h->data); }

void mg_dyn_resolve_stop(mg_gen_t *g) {
  struct mg_dyn_res_s *r = g->resolving;
  if (!r) return;
  for (int i = 0; i < r->n; i++) uv_close((uv_handle_t *)&r->timers[i]->timer, on_timer_closed);
  free(r->timers);
  free(r);
  g->resolving = NULL;
}

/* ---- mg.upstreams (api.h; lua/moongate/upstreams.lua) ---- */

/* The generation the running Lua belongs to; NULL outside a worker. */
static mg_gen_t *lua_gen(void) {
  mg_worker_t *w = mg_current_worker;
  if (!w) return NULL;
  if (w->lua_wg) return w->lua_wg->gen;
  return w->gen;
}

int mg_ups_count(void) {
  mg_gen_t *g = lua_gen();
  return g ? g->nupstreams : 0;
}

int mg_ups_name(int u, mg_str_t *out) {
  mg_gen_t *g = lua_gen();
  if (!g || u < 0 || u >= g->nupstreams) return MG_API_ENOTFOUND;
  *out = (mg_str_t){ g->upstreams[u].name, strlen(g->upstreams[u].name) };
  return 0;
}

int mg_ups_find(const char *name, size_t len) {
  mg_gen_t *g = lua_gen();
  if (!g) return MG_API_EPHASE;
  for (int i = 0; i < g->nupstreams; i++)
    if (g->upstreams[i].bal && strlen(g->upstreams[i].name) == len && memcmp(g->upstreams[i].name, name, len) == 0)
      return i;
  return MG_API_ENOTFOUND;
}

static mg_upstream_cfg_t *ups_at(int u) {
  mg_gen_t *g = lua_gen();
  if (!g || u < 0 || u >= g->nupstreams || !g->upstreams[u].bal) return NULL;
  return &g->upstreams[u];
}

/* "ip:port" or "[ip6]:port" (a numeric address: names belong in `servers`, where
 * they are resolved off the workers) into its canonical key. */
static int parse_server(const char *a, size_t len, struct sockaddr_storage *ss, mg_str_t *err) {
  char buf[80];
  if (len == 0 || len >= sizeof(buf)) goto bad;
  memcpy(buf, a, len);
  buf[len] = 0;
  char *colon = strrchr(buf, ':'), *host = buf;
  if (!colon) goto bad;
  *colon = 0;
  char *end = NULL;
  long port = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || port < 1 || port > 65535) goto bad;
  if (host[0] == '[') {
    size_t hl = strlen(host);
    if (hl < 3 || host[hl - 1] != ']') goto bad;
    host[hl - 1] = 0;
    host++;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) != 0) goto bad;
    return 0;
  }
  memset(ss, 0, sizeof(*ss));
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 && strchr(host, '.')) return 0;
bad:
  *err = (mg_str_t){ "bad address (want a numeric ip:port or [ip6]:port)", 51 };
  return MG_API_EINVAL;
}

static int balance_err(int rc, mg_str_t *err) {
  static const char exists[] = "already a server of this upstream";
  static const char nf[] = "no such server in this upstream";
  static const char full[] = "too many servers in this upstream";
  static const char nomem[] = "out of memory";
  switch (rc) {
  case MG_BALANCE_EEXIST:
    *err = (mg_str_t){ exists, sizeof(exists) - 1 };
    return MG_API_EINVAL;
  case MG_BALANCE_ENOTFOUND:
    *err = (mg_str_t){ nf, sizeof(nf) - 1 };
    return MG_API_ENOTFOUND;
  case MG_BALANCE_EFULL:
    *err = (mg_str_t){ full, sizeof(full) - 1 };
    return MG_API_EINVAL;
  default:
    *err = (mg_str_t){ nomem, sizeof(nomem) - 1 };
    return MG_API_ENOMEM;
  }
}

int mg_ups_add(int u, const char *addr, size_t len, int weight, int publish, mg_str_t *err) {
  mg_upstream_cfg_t *up = ups_at(u);
  if (!up) return MG_API_ENOTFOUND;
  struct sockaddr_storage ss;
  int rc = parse_server(addr, len, &ss, err);
  if (rc < 0) return rc;
  int id = publish ? mg_dyn_add(up, (struct sockaddr *)&ss, weight, -1, 1) : -1;
  if (!publish) { /* one of a list: published by mg_ups_publish */
    mg_server_t *s = calloc(1, sizeof(*s));
    if (!s) return balance_err(MG_BALANCE_ENOMEM, err);
    memcpy(&s->addr, &ss, addr_len((struct sockaddr *)&ss));
    s->addrlen = addr_len((struct sockaddr *)&ss);
    addr_text((struct sockaddr *)&ss, s->text, sizeof(s->text));
    s->weight = weight;
    id = mg_balance_add_quiet(up->bal, s->text, weight, s);
    if (id < 0) free(s);
  }
  if (id < 0) return balance_err(id, err);
  MG_INFO(mg_current_worker ? mg_current_worker->id : -1, "upstream %s: server %s added (weight %d)",
          up->name, mg_upstream_server(up, id)->text, weight);
  return id;
}

int mg_ups_publish(int u) {
  mg_upstream_cfg_t *up = ups_at(u);
  if (!up) return MG_API_ENOTFOUND;
  return mg_balance_rebuild(up->bal) < 0 ? MG_API_ENOMEM : 0;
}

int mg_ups_change(int u, const char *addr, size_t len, int op, int weight, mg_str_t *err) {
  mg_upstream_cfg_t *up = ups_at(u);
  if (!up) return MG_API_ENOTFOUND;
  struct sockaddr_storage ss;
  int rc = parse_server(addr, len, &ss, err);
  if (rc < 0) return rc;
  char key[64];
  addr_text((struct sockaddr *)&ss, key, sizeof(key));
  static const char *const what[] = { "removed", "drained", "re-weighted" };
  int id = op == 0 ? mg_balance_remove(up->bal, key)
         : op == 1 ? mg_balance_drain(up->bal, key)
                   : mg_balance_set_weight(up->bal, key, weight);
  if (id < 0) return balance_err(id, err);
  MG_INFO(mg_current_worker ? mg_current_worker->id : -1, "upstream %s: server %s %s", up->name, key,
          what[op < 0 || op > 2 ? 2 : op]);
  return id;
}

int mg_ups_server(int u, int id, mg_ups_server_t *out) {
  mg_upstream_cfg_t *up = ups_at(u);
  if (!up) return MG_API_ENOTFOUND;
  if (id < 0 || id >= mg_upstream_nservers(up)) return MG_API_ENOTFOUND;
  const mg_server_t *s = mg_upstream_server(up, id);
  const mg_peer_t *p = mg_balance_peer(up->bal, id);
  out->addr = (mg_str_t){ s ? s->text : "?", s ? strlen(s->text) : 1 };
  out->weight = atomic_load_explicit(&p->weight, memory_order_relaxed);
  out->active = atomic_load_explicit(&p->active, memory_order_relaxed);
  out->fails = atomic_load_explicit(&p->fails, memory_order_relaxed);
  out->ewma_us = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
  out->flags = atomic_load_explicit(&p->flags, memory_order_relaxed);
  return 0;
}

int mg_ups_nservers(int u) {
  mg_upstream_cfg_t *up = ups_at(u);
  return up ? mg_upstream_nservers(up) : 0;
}
