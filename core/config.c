#include "config.h"

#include <math.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <llhttp.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/resource.h>
#include <uv.h>

#include "http.h"
#include "log.h"
#include "mg_hooks.h"

const char *mg_lua_dir(void) {
  const char *d = getenv("MOONGATE_LUA_DIR");
  return d && *d ? d : MG_LUA_DIR;
}

int mg_str_caseeq(mg_str_t a, mg_str_t b) {
  return a.len == b.len && strncasecmp(a.p, b.p, a.len) == 0;
}

static char *xstrdup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

void mg_gen_ref(mg_gen_t *g) { atomic_fetch_add(&g->refs, 1); }

/* i12-split: frees a route's split (NULL: nothing). */
static void split_free(mg_split_t *sp) {
  if (!sp) return;
  free(sp->ups);
  mg_balancer_free(sp->bal);
  free((void *)sp->header.p);
  for (int i = 0; i < sp->nvalues; i++) free((void *)sp->values[i].p);
  free(sp->values);
  free(sp->value_ups);
  free(sp);
}

/* i13-compress: a route's settings (build_compress) */
static void compress_free(mg_compress_cfg_t *c) {
  if (!c) return;
  for (int i = 0; i < c->ntypes; i++) free((char *)c->types[i].p);
  free(c->types);
  free(c);
}

static void gen_free(mg_gen_t *g) {
  free(g->path);
  free(g->source);
  free(g->access_log);
  free(g->error_log);
  free(g->pid);
  free(g->cache_path);
  mg_cidr_free(g->trusted);
  for (int i = 0; i < g->nlisteners; i++) {
    free(g->listeners[i].name);
    free(g->listeners[i].hsts);
    if (g->listeners[i].tls) mg_tls_server_free(g->listeners[i].tls);
    free(g->listeners[i].tls);
  }
  free(g->listeners);
  for (int i = 0; i < g->nupstreams; i++) {
    free(g->upstreams[i].name);
    mg_balancer_unref(g->upstreams[i].bal);
    free(g->upstreams[i].key);
    for (int j = 0; j < g->upstreams[i].nnames; j++) free(g->upstreams[i].names[j].host);
    free(g->upstreams[i].names);
    free(g->upstreams[i].hash_spec);
    free(g->upstreams[i].sticky_cookie);
    free(g->upstreams[i].sticky_attrs);
    free(g->upstreams[i].health.path);
    free(g->upstreams[i].health.host);
    if (g->upstreams[i].tls) mg_tls_client_free(g->upstreams[i].tls);
    free(g->upstreams[i].tls);
  }
  free(g->upstreams);
  for (int i = 0; i < g->nroutes; i++) {
    mg_route_t *r = &g->routes[i];
    free(r->listener);
    free(r->host);
    free(r->path);
    free(r->resp_head);
    free(r->resp_body);
    split_free(r->split);
    compress_free(r->compress);
  }
  free(g->routes);
  for (int i = 0; i < g->nshared; i++) free(g->shared[i]);
  free(g->shared);
  free(g->shared_size);
  for (int i = 0; i < g->nfiles; i++) free(g->files[i]);
  free(g->files);
  free(g);
}

void mg_gen_unref(mg_gen_t *g) {
  if (g && atomic_fetch_sub(&g->refs, 1) == 1) gen_free(g);
}

/* ---- reading the normalised table (lua/moongate/private/loader.lua) ---- */

typedef struct {
  lua_State *L;
  char *err;
  size_t errlen;
  const char *file;
} walk_t;

static int walk_fail(walk_t *w, const char *fmt, const char *a, const char *b) {
  char msg[512];
  snprintf(msg, sizeof(msg), fmt, a ? a : "", b ? b : "");
  snprintf(w->err, w->errlen, "%s: %s", w->file, msg);
  return MG_ECONFIG;
}

static double field_num(lua_State *L, int idx, const char *k, double dflt) {
  lua_getfield(L, idx, k);
  double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

/* A number the Lua side always fills in (lua/moongate/init.lua keeps the defaults
 * of timeouts and limits: C has none of its own). Absent: a config error. */
static int need_num_at(walk_t *w, int idx, const char *group, const char *k, double *out) {
  lua_getfield(w->L, idx, k);
  int ok = lua_isnumber(w->L, -1);
  *out = ok ? lua_tonumber(w->L, -1) : 0;
  lua_pop(w->L, 1);
  return ok ? 0 : walk_fail(w, "%s.%s: missing (the Lua side fills in every default)", group, k);
}
static int need_num(walk_t *w, const char *group, const char *k, double *out) {
  return need_num_at(w, -1, group, k, out);
}

/* Returns a malloc'd copy of a string field, or NULL when absent/not a string. */
static char *field_str(lua_State *L, int idx, const char *k) {
  lua_getfield(L, idx, k);
  char *s = lua_type(L, -1) == LUA_TSTRING ? xstrdup(lua_tostring(L, -1)) : NULL;
  lua_pop(L, 1);
  return s;
}

static uint64_t ms(double seconds) { return (uint64_t)(seconds * 1000.0 + 0.5); }

/* ---- i12-dyn: upstream servers by address (config.h) ---- */

/* "ip:port" or "[ip6]:port" of sa. */
void mg_upstream_text(const struct sockaddr *sa, char *text, size_t len) {
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

socklen_t mg_upstream_addrlen(const struct sockaddr *sa) {
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
int mg_upstream_push_addr(struct sockaddr_storage *out, int n, int max, const struct sockaddr *sa, int port) {
  if (n >= max || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) return n;
  if (n > 0 && out[0].ss_family != sa->sa_family) return n;
  struct sockaddr_storage a;
  memset(&a, 0, sizeof(a));
  memcpy(&a, sa, mg_upstream_addrlen(sa));
  if (a.ss_family == AF_INET6) ((struct sockaddr_in6 *)&a)->sin6_port = htons((uint16_t)port);
  else ((struct sockaddr_in *)&a)->sin_port = htons((uint16_t)port);
  for (int i = 0; i < n; i++)
    if (memcmp(&out[i], &a, sizeof(a)) == 0) return n;
  out[n] = a;
  return n + 1;
}

/* The addresses $MOONGATE_HOSTS_FILE lists for host: their count, or -1 when the
 * file (or the variable) is not there or does not name host. */
int mg_upstream_hosts_file(const char *host, int port, struct sockaddr_storage *out, int max) {
  const char *path = getenv("MOONGATE_HOSTS_FILE");
  if (!path || !*path) return -1;
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char *line = NULL; /* a line of any length: a long list of aliases is one line */
  size_t cap = 0;
  int n = 0, named = 0;
  while (getline(&line, &cap, f) >= 0) {
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *save = NULL, *ip = strtok_r(line, " \t\r\n", &save);
    if (!ip) continue;
    for (char *name = strtok_r(NULL, " \t\r\n", &save); name; name = strtok_r(NULL, " \t\r\n", &save)) {
      if (strcasecmp(name, host) != 0) continue;
      named = 1;
      struct sockaddr_storage a;
      if (literal(ip, port, &a)) n = mg_upstream_push_addr(out, n, max, (struct sockaddr *)&a, port);
    }
  }
  free(line);
  fclose(f);
  return named ? n : -1;
}

int mg_upstream_lookup(const char *host, int port, struct sockaddr_storage *out, int max) {
  if (literal(host, port, &out[0])) return 1;
  int n = mg_upstream_hosts_file(host, port, out, max);
  if (n >= 0) return n;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res) return -1;
  n = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) n = mg_upstream_push_addr(out, n, max, a->ai_addr, port);
  freeaddrinfo(res);
  return n;
}

int mg_upstream_add(mg_upstream_cfg_t *u, const struct sockaddr *sa, int weight, int from, int publish) {
  mg_server_t *s = calloc(1, sizeof(*s));
  if (!s) return MG_BALANCE_ENOMEM;
  memcpy(&s->addr, sa, mg_upstream_addrlen(sa));
  s->addrlen = mg_upstream_addrlen(sa);
  mg_upstream_text(sa, s->text, sizeof(s->text));
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

/* Resolves host:port (numeric or a name, looked up once at load). */
static int resolve(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                   char *text, size_t textlen) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  char portstr[16];
  snprintf(portstr, sizeof(portstr), "%d", port);
  if (getaddrinfo(host, portstr, &hints, &res) != 0 || !res) return -1;
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  char ip[INET6_ADDRSTRLEN] = "?";
  if (ss->ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)ss, ip, sizeof(ip));
    snprintf(text, textlen, "[%s]:%d", ip, port);
  } else {
    uv_ip4_name((struct sockaddr_in *)ss, ip, sizeof(ip));
    snprintf(text, textlen, "%s:%d", ip, port);
  }
  return 0;
}

/* A TLS error from tls.c, prefixed with the config file like every config error. */
static int tls_fail(walk_t *w, int rc, const char *msg) {
  return rc == MG_ENOMEM ? rc : walk_fail(w, "%s", msg, NULL);
}

/* The listener's `tls` table (normalised by lua/moongate/init.lua) is at the top
 * of the stack; builds l->tls. */
static int walk_listen_tls(walk_t *w, mg_listen_cfg_t *l) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "certs");
  int n = (int)lua_objlen(L, -1);
  char **certs = calloc((size_t)n + 1, sizeof(char *));
  char **keys = calloc((size_t)n + 1, sizeof(char *));
  char **names = calloc((size_t)n + 1, sizeof(char *));
  char *ca = NULL, *ciphers = NULL, *site = NULL, *profile = NULL;
  int rc = MG_ENOMEM;
  if (!certs || !keys || !names) goto out;
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    certs[i] = field_str(L, -1, "cert");
    keys[i] = field_str(L, -1, "key");
    names[i] = field_str(L, -1, "name");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  ca = field_str(L, -1, "client_ca");
  ciphers = field_str(L, -1, "ciphers");
  site = field_str(L, -1, "site");
  profile = field_str(L, -1, "profile");
  mg_tls_server_cfg_t cfg = {
    .cert_files = (const char **)certs, .key_files = (const char **)keys,
    .names = (const char **)names, .ncerts = n,
    .min_version = (int)field_num(L, -1, "min_version", TLS1_2_VERSION),
    .verify_client = (int)field_num(L, -1, "verify_client", 0),
    .client_ca = ca,
    .profile = !profile ? MG_TLS_INTERMEDIATE
               : strcmp(profile, "modern") == 0 ? MG_TLS_MODERN
               : strcmp(profile, "compatible") == 0 ? MG_TLS_COMPATIBLE : MG_TLS_INTERMEDIATE,
    .ciphers = ciphers,
    .session_timeout = (int)field_num(L, -1, "session_timeout", 0),
  };
  l->tls = calloc(1, sizeof(*l->tls));
  if (!l->tls) goto out;
  char err[512];
  rc = mg_tls_server_new(l->tls, &cfg, err, sizeof(err));
  /* named by the mg.listen line (file:line) when the Lua side recorded it */
  if (rc == MG_ECONFIG && site) snprintf(w->err, w->errlen, "%s: %s", site, err);
  else if (rc < 0) rc = tls_fail(w, rc, err);
out:
  for (int i = 0; certs && i < n; i++) {
    free(certs[i]);
    free(keys[i]);
    free(names[i]);
  }
  free(certs);
  free(keys);
  free(names);
  free(ca);
  free(ciphers);
  free(site);
  free(profile);
  return rc;
}

static int walk_listeners(walk_t *w, mg_gen_t *g) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "listeners");
  int n = (int)lua_objlen(L, -1);
  g->listeners = calloc((size_t)n, sizeof(*g->listeners));
  if (!g->listeners) return MG_ENOMEM;
  g->nlisteners = n;
  for (int i = 0; i < n; i++) {
    mg_listen_cfg_t *l = &g->listeners[i];
    lua_rawgeti(L, -1, i + 1);
    lua_getfield(L, -1, "host");
    const char *host = lua_tostring(L, -1);
    int port = (int)field_num(L, -2, "port", 0);
    if (resolve(host, port, &l->addr, &l->addrlen, l->text, sizeof(l->text)) < 0) {
      int rc = walk_fail(w, "mg.listen: cannot resolve '%s'", host, NULL);
      lua_pop(L, 3);
      return rc;
    }
    lua_pop(L, 1);
    l->name = field_str(L, -1, "name");
    l->redirect_https = (int)field_num(L, -1, "redirect_https", 0);
    char *hsts = field_str(L, -1, "hsts");
    if (hsts) {
      size_t hn = sizeof("Strict-Transport-Security: \r\n") + strlen(hsts);
      l->hsts = malloc(hn);
      if (l->hsts) snprintf(l->hsts, hn, "Strict-Transport-Security: %s\r\n", hsts);
      free(hsts);
      if (!l->hsts) {
        lua_pop(L, 2);
        return MG_ENOMEM;
      }
    }
    lua_getfield(L, -1, "deferred");
    l->deferred = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : 1;
    lua_pop(L, 1);
    lua_getfield(L, -1, "proxy_protocol");
    l->proxy_protocol = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "tls");
    if (lua_istable(L, -1)) {
      int rc = walk_listen_tls(w, l);
      if (rc < 0) {
        lua_pop(L, 3);
        return rc;
      }
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  return 0;
}

/* balance = "hash" and sticky (the upstream's table on top), before any server is
 * added. */
static int walk_hash_sticky(walk_t *w, mg_upstream_cfg_t *u, int policy) {
  lua_getfield(w->L, -1, "sticky");
  int sticky = lua_istable(w->L, -1);
  lua_pop(w->L, 1);
  if (policy != MG_BALANCE_HASH && !sticky) return 0;
  /* the Maglev table and the sticky tokens name each server by its key in the
   * balancer ("ip:port", "ip:port#k" for the k-th listing of one address), so a
   * server added at run time gets its place and token like one from the config */
  const mg_str_t *names = NULL;
  int rc = 0;
  if (policy == MG_BALANCE_HASH) {
    lua_getfield(w->L, -1, "hash_bound");
    double bound = lua_isnumber(w->L, -1) ? lua_tonumber(w->L, -1) : INFINITY;
    lua_pop(w->L, 1);
    rc = mg_balancer_hash_init(u->bal, names, bound - 1.0);
    if (rc == 0) {
      lua_getfield(w->L, -1, "hash_key");
      u->hash_spec = xstrdup(lua_isstring(w->L, -1) ? lua_tostring(w->L, -1) : "ip");
      lua_pop(w->L, 1);
      lua_getfield(w->L, -1, "hash_key_fn");
      u->hash_fn = lua_isfunction(w->L, -1);
      lua_pop(w->L, 1);
      const char *err = NULL;
      if (!u->hash_spec) rc = MG_ENOMEM;
      else if (mg_hash_key_parse(u->hash_spec, strlen(u->hash_spec), &u->hash_key, &err) < 0)
        rc = walk_fail(w, "upstream '%s': hash_key: %s", u->name, err);
    }
  }
  if (rc == 0 && sticky) {
    lua_getfield(w->L, -1, "sticky");
    u->sticky_cookie = field_str(w->L, -1, "cookie");
    u->sticky_attrs = field_str(w->L, -1, "attrs");
    lua_getfield(w->L, -1, "secret");
    size_t slen = 0;
    const char *secret = lua_tolstring(w->L, -1, &slen);
    rc = !u->sticky_cookie || !u->sticky_attrs ? MG_ENOMEM
         : mg_balancer_sticky_init(u->bal, names, (mg_str_t){ u->name, strlen(u->name) }, (mg_str_t){ secret, secret ? slen : 0 });
    lua_pop(w->L, 2);
  }
  return rc;
}

/* The upstream's (empty) balancer, from its `balance` (the upstream's table on top). */
static int build_balancer(walk_t *w, mg_upstream_cfg_t *u) {
  lua_getfield(w->L, -1, "balance");
  const char *name = lua_isstring(w->L, -1) ? lua_tostring(w->L, -1) : "round_robin";
  int policy = mg_balance_policy(name);
  if (policy < 0) {
    int rc = walk_fail(w, "upstream '%s': unknown balance '%s'", u->name, name);
    lua_pop(w->L, 1);
    return rc;
  }
  lua_pop(w->L, 1);
  u->bal = mg_balancer_new(policy, NULL, 0);
  if (!u->bal) return MG_ENOMEM;
  mg_balancer_set_data_free(u->bal, free);
  snprintf(u->bal->name, sizeof(u->bal->name), "%s", u->name);
  return walk_hash_sticky(w, u, policy);
}

/* i12-dyn: the upstream's `servers` (its table on top) into its balancer: each
 * entry's addresses (a name may give several: dyn.h), names kept for `resolve`. */
static int walk_servers(walk_t *w, mg_upstream_cfg_t *u) {
  lua_State *L = w->L;
  u->key = field_str(L, -1, "config_key");
  u->resolve_ms = ms(field_num(L, -1, "resolve", 0));
  lua_getfield(L, -1, "servers");
  int ns = (int)lua_objlen(L, -1);
  u->names = calloc((size_t)ns + 1, sizeof(*u->names));
  if (!u->names) {
    lua_pop(L, 1);
    return MG_ENOMEM;
  }
  int rc = 0;
  for (int j = 0; j < ns && rc == 0; j++) {
    lua_rawgeti(L, -1, j + 1);
    lua_getfield(L, -1, "host");
    const char *host = lua_tostring(L, -1);
    int port = (int)field_num(L, -2, "port", 0);
    double weight;
    if (need_num_at(w, -2, "upstream server", "weight", &weight) < 0) {
      lua_pop(L, 3);
      return MG_ECONFIG;
    }
    struct sockaddr_storage addrs[MG_UPSTREAM_ADDRS];
    int n = mg_upstream_lookup(host, port, addrs, MG_UPSTREAM_ADDRS);
    if (n <= 0) rc = walk_fail(w, "upstream '%s': cannot resolve '%s'", u->name, host);
    int from = MG_UPSTREAM_LISTED;
    struct sockaddr_in6 lit;
    if (rc == 0 && uv_ip4_addr(host, port, (struct sockaddr_in *)&lit) != 0 &&
        uv_ip6_addr(host, port, &lit) != 0) { /* a name, not an IP literal: re-resolved */
      from = u->nnames++;
      u->names[from] = (mg_upname_t){ xstrdup(host), port, (int)weight };
      if (!u->names[from].host) rc = MG_ENOMEM;
    }
    for (int k = 0; k < n && rc == 0; k++)
      if (mg_upstream_add(u, (struct sockaddr *)&addrs[k], (int)weight, from, 0) < 0) rc = MG_ENOMEM;
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
  if (rc == 0 && mg_balance_rebuild(u->bal) < 0) rc = MG_ENOMEM;
  return rc;
}

/* ---- i12-health: health, eject, slow_start, panic (the upstream's table on top) ---- */

/* A server was ejected or came back (balance.c's event, from any thread). */
static void peer_event(void *data, int i, const char *what) {
  /* (data: the balancer, which a reload may adopt: not the generation's upstream) */
  const mg_balancer_t *b = data;
  const mg_server_t *s = mg_balance_data(b, i);
  MG_WARN(-1, "upstream %s: server %s %s", b->name, s ? s->text : "?", what);
}

static int walk_health(walk_t *w, mg_upstream_cfg_t *u) {
  lua_State *L = w->L;
  mg_balancer_t *b = u->bal;
  b->event = peer_event;
  b->event_data = b;
  b->slow_start_ms = ms(field_num(L, -1, "slow_start", 0));
  lua_getfield(L, -1, "panic");
  b->panic = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "eject");
  if (lua_istable(L, -1)) {
    b->eject_consecutive = (int)field_num(L, -1, "consecutive", 5);
    b->eject_base_ms = ms(field_num(L, -1, "base", 30));
    b->eject_max_percent = (int)field_num(L, -1, "max_percent", 50);
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "health");
  if (lua_istable(L, -1)) {
    mg_health_cfg_t *h = &u->health;
    char *type = field_str(L, -1, "type");
    h->type = type && strcmp(type, "tcp") == 0 ? MG_HEALTH_TCP : MG_HEALTH_HTTP;
    free(type);
    h->path = field_str(L, -1, "path");
    h->host = field_str(L, -1, "host");
    h->interval_ms = ms(field_num(L, -1, "interval", 2));
    h->timeout_ms = ms(field_num(L, -1, "timeout", 1));
    h->rise = (int)field_num(L, -1, "rise", 2);
    h->fall = (int)field_num(L, -1, "fall", 3);
    lua_getfield(L, -1, "expect");
    if (lua_istable(L, -1))
      for (int k = 1; k <= 16; k++) {
        lua_rawgeti(L, -1, k);
        if (lua_isnumber(L, -1)) h->expect[h->nexpect++] = (int)lua_tonumber(L, -1);
        lua_pop(L, 1);
      }
    lua_pop(L, 1);
    if (!h->path) {
      lua_pop(L, 1);
      return MG_ENOMEM;
    }
  }
  lua_pop(L, 1);
  return 0;
}

/* i12-retry: the upstream's retry, breaker and timeout fields (the upstream's
 * table on top; init.lua filled in every default). */
static int walk_retry(walk_t *w, mg_upstream_cfg_t *u) {
  lua_State *L = w->L;
  u->retry_tries = (int)field_num(L, -1, "retry_tries", 0);
  u->retry_on = (unsigned)field_num(L, -1, "retry_on", MG_RETRY_CONNECT);
  u->per_try_ms = ms(field_num(L, -1, "retry_per_try", 0));
  u->backoff_base_ms = ms(field_num(L, -1, "retry_backoff_base", 0));
  u->backoff_max_ms = ms(field_num(L, -1, "retry_backoff_max", 0));
  u->retry_budget = field_num(L, -1, "retry_budget", 0.2);
  u->retry_buffer = (uint64_t)field_num(L, -1, "retry_buffer", 65536);
  u->max_connections = (int)field_num(L, -1, "max_connections", 0);
  u->max_pending = (int)field_num(L, -1, "max_pending", 0);
  u->max_requests = (int)field_num(L, -1, "max_requests", 0);
  u->connect_ms = ms(field_num(L, -1, "timeout_connect", 0));
  u->read_ms = ms(field_num(L, -1, "timeout_read", 0));
  u->write_ms = ms(field_num(L, -1, "timeout_write", 0));
  lua_getfield(L, -1, "retry_status");
  int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  if (n > (int)(sizeof(u->retry_status) / sizeof(u->retry_status[0]))) {
    lua_pop(L, 1);
    return walk_fail(w, "upstream '%s': retry.on lists too many statuses%s", u->name, NULL);
  }
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    u->retry_status[i] = (int)lua_tonumber(L, -1);
    lua_pop(L, 1);
  }
  u->nretry_status = n;
  lua_pop(L, 1);
  return 0;
}

static int walk_upstreams(walk_t *w, mg_gen_t *g) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "upstreams");
  int n = (int)lua_objlen(L, -1);
  g->upstreams = calloc((size_t)n + 1, sizeof(*g->upstreams));
  if (!g->upstreams) return MG_ENOMEM;
  g->nupstreams = n;
  for (int i = 0; i < n; i++) {
    mg_upstream_cfg_t *u = &g->upstreams[i];
    lua_rawgeti(L, -1, i + 1);
    u->name = field_str(L, -1, "name");
    double ka, ka_timeout, pp, splice;
    if (need_num(w, "upstream", "keepalive", &ka) < 0 ||
        need_num(w, "upstream", "keepalive_timeout", &ka_timeout) < 0 ||
        need_num(w, "upstream", "proxy_protocol", &pp) < 0 || need_num(w, "upstream", "splice", &splice) < 0) {
      lua_pop(L, 2);
      return MG_ECONFIG;
    }
    u->keepalive = (int)ka;
    u->keepalive_ms = ms(ka_timeout);
    u->proxy_protocol = (int)pp; /* 0, 1 or 2: checked by init.lua */
    u->splice = splice != 0;
    lua_getfield(L, -1, "tls");
    if (lua_istable(L, -1)) {
      char *ca = field_str(L, -1, "ca"), *sni = field_str(L, -1, "sni");
      char *cert = field_str(L, -1, "cert"), *key = field_str(L, -1, "key");
      lua_getfield(L, -1, "verify");
      int verify = lua_toboolean(L, -1);
      lua_pop(L, 1);
      mg_tls_client_cfg_t cfg = { .verify = verify, .ca_file = ca, .sni = sni,
                                  .cert_file = cert, .key_file = key };
      int rc = MG_ENOMEM;
      char err[512];
      u->tls = calloc(1, sizeof(*u->tls));
      if (u->tls) {
        rc = mg_tls_client_new(u->tls, &cfg, err, sizeof(err));
        if (rc < 0) rc = tls_fail(w, rc, err);
      }
      free(ca);
      free(sni);
      free(cert);
      free(key);
      if (rc < 0) {
        lua_pop(L, 3);
        return rc;
      }
    }
    lua_pop(L, 1);
    int rc = build_balancer(w, u);
    if (rc == 0) rc = walk_servers(w, u);
    if (rc == 0) rc = walk_health(w, u); /* i12-health */
    if (rc == 0) rc = walk_retry(w, u);
    lua_pop(L, 1);
    if (rc < 0) return rc;
  }
  lua_pop(L, 1);
  return 0;
}

static int parse_method(const char *m) {
  static const struct { const char *name; int id; } known[] = {
    { "GET", HTTP_GET }, { "HEAD", HTTP_HEAD }, { "POST", HTTP_POST }, { "PUT", HTTP_PUT },
    { "DELETE", HTTP_DELETE }, { "OPTIONS", HTTP_OPTIONS }, { "PATCH", HTTP_PATCH },
    { "TRACE", HTTP_TRACE },
  };
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    if (strcmp(m, known[i].name) == 0) return known[i].id;
  return -1;
}

/* Prebuilds a `respond` route's status line and headers once, at load. */
static int build_respond(lua_State *L, mg_route_t *r) {
  lua_getfield(L, -1, "respond");
  r->status = (int)field_num(L, -1, "status", 200);
  lua_getfield(L, -1, "body");
  size_t blen = 0;
  const char *body = lua_tolstring(L, -1, &blen);
  r->resp_body = malloc(blen + 1);
  if (!r->resp_body) return MG_ENOMEM;
  memcpy(r->resp_body, body ? body : "", blen);
  r->resp_body_len = blen;
  lua_pop(L, 1);

  size_t cap = 256, len = 0;
  lua_getfield(L, -1, "headers");
  int nh = (int)lua_objlen(L, -1);
  for (int i = 1; i <= nh; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    cap += lua_objlen(L, -1) + lua_objlen(L, -2) + 4;
    lua_pop(L, 3);
  }
  char *h = malloc(cap);
  if (!h) return MG_ENOMEM;
  len += (size_t)snprintf(h, cap, "HTTP/1.1 %d %s\r\n", r->status, mg_http_reason(r->status));
  for (int i = 1; i <= nh; i++) {
    lua_rawgeti(L, -1, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    len += (size_t)snprintf(h + len, cap - len, "%s: %s\r\n", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 3);
  }
  if (r->status != 204 && r->status != 304)
    len += (size_t)snprintf(h + len, cap - len, "Content-Length: %zu\r\n", blen);
  r->resp_head = h;
  r->resp_head_len = len;
  lua_pop(L, 2);
  return 0;
}

/* i12-split: an upstream index the loader wrote (1-based in Lua) at t[k], the
 * table on top; -1 when absent or out of range (init.lua checked the names). */
static int split_index(lua_State *L, const char *k, int nupstreams) {
  int i = (int)field_num(L, -1, k, 0) - 1;
  return i >= 0 && i < nupstreams ? i : -1;
}

/* i12-split: the route's `split_list` (weighted upstreams) and `split` (header rule)
 * into r->split; the route's table on top. 0 when it has neither. */
static int build_split(walk_t *w, const mg_gen_t *g, mg_route_t *r) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "split_list");
  lua_getfield(L, -2, "split");
  int has_list = lua_istable(L, -2), has_rule = lua_istable(L, -1);
  if (!has_list && !has_rule) {
    lua_pop(L, 2);
    return 0;
  }
  int rc = MG_ENOMEM;
  mg_split_t *sp = r->split = calloc(1, sizeof(*sp));
  if (!sp) goto out;
  sp->present = -1;
  if (has_list) {
    int n = (int)lua_objlen(L, -2);
    int *weights = calloc((size_t)n + 1, sizeof(int));
    sp->ups = calloc((size_t)n + 1, sizeof(int));
    if (!weights || !sp->ups) {
      free(weights);
      goto out;
    }
    sp->nups = n;
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, -2, i + 1);
      sp->ups[i] = split_index(L, "index", g->nupstreams);
      weights[i] = (int)field_num(L, -1, "weight", 0);
      lua_pop(L, 1);
      if (sp->ups[i] < 0 || weights[i] < 1) {
        free(weights);
        rc = walk_fail(w, "route '%s': bad upstream list", r->path, NULL);
        goto out;
      }
    }
    sp->bal = n > 0 ? mg_balancer_new(MG_BALANCE_ROUND_ROBIN, weights, n) : NULL;
    free(weights);
    if (!sp->bal) goto out;
  }
  if (has_rule) {
    char *h = field_str(L, -1, "header");
    if (!h) {
      rc = walk_fail(w, "route '%s': split without a header", r->path, NULL);
      goto out;
    }
    sp->header = (mg_str_t){ h, strlen(h) };
    sp->present = split_index(L, "present_index", g->nupstreams);
    lua_getfield(L, -1, "values");
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
    sp->values = calloc((size_t)n + 1, sizeof(*sp->values));
    sp->value_ups = calloc((size_t)n + 1, sizeof(int));
    if (!sp->values || !sp->value_ups) {
      lua_pop(L, 1);
      goto out;
    }
    for (int i = 0; i < n; i++) {
      lua_rawgeti(L, -1, i + 1);
      size_t len = 0;
      lua_getfield(L, -1, "value");
      const char *v = lua_tolstring(L, -1, &len);
      char *copy = v ? malloc(len + 1) : NULL;
      if (copy) memcpy(copy, v, len + 1);
      lua_pop(L, 1);
      int up = split_index(L, "index", g->nupstreams);
      lua_pop(L, 1);
      if (!copy || up < 0) {
        free(copy);
        lua_pop(L, 1);
        if (v) rc = walk_fail(w, "route '%s': bad split value", r->path, NULL);
        goto out;
      }
      sp->values[i] = (mg_str_t){ copy, len };
      sp->value_ups[i] = up;
      sp->nvalues = i + 1;
    }
    lua_pop(L, 1);
  }
  rc = 0;
out:
  lua_pop(L, 2);
  return rc; /* on an error r->split stays set: freed with the generation */
}

/* ---- i13-compress ---- */

/* The route's `compress` (at the top of the stack): a table the loader completed,
 * or false. 0, MG_ENOMEM or MG_ECONFIG. */
static int build_compress(walk_t *w, mg_route_t *r) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "compress");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  mg_compress_cfg_t *c = calloc(1, sizeof(*c));
  if (!c) {
    lua_pop(L, 1);
    goto nomem;
  }
  r->compress = c; /* freed with the generation, whatever happens below */
  c->min_length = (uint64_t)field_num(L, -1, "min_length", 256);
  lua_getfield(L, -1, "level");
  for (int k = MG_CODING_IDENTITY + 1; k < MG_CODING_MAX; k++) {
    c->level[k] = (int)field_num(L, -1, mg_coding_name(k), 0);
    if (!mg_coding_level_ok(k, c->level[k])) {
      lua_pop(L, 2);
      return walk_fail(w, "compress: level.%s out of range%s", mg_coding_name(k), "");
    }
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "prefer");
  int n = (int)lua_objlen(L, -1);
  for (int i = 1; i <= n && c->nprefer < MG_CODING_MAX; i++) {
    lua_rawgeti(L, -1, i);
    size_t len;
    const char *name = lua_tolstring(L, -1, &len);
    int k = name ? mg_coding_parse((mg_str_t){ name, len }) : -1;
    lua_pop(L, 1);
    if (k <= MG_CODING_IDENTITY) {
      lua_pop(L, 2);
      return walk_fail(w, "compress: prefer: unknown coding %s%s", name ? name : "?", "");
    }
    c->prefer[c->nprefer++] = k;
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "types");
  n = (int)lua_objlen(L, -1);
  c->types = calloc((size_t)n + 1, sizeof(*c->types));
  if (!c->types) {
    lua_pop(L, 2);
    goto nomem;
  }
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    size_t len;
    const char *ty = lua_tolstring(L, -1, &len);
    if (ty && len >= 2 && ty[len - 1] == '*' && ty[len - 2] == '/') len--; /* "text/ *" (a wildcard): the prefix "text/" */
    char *copy = ty ? malloc(len + 1) : NULL;
    lua_pop(L, 1);
    if (!copy) {
      lua_pop(L, 2);
      goto nomem;
    }
    memcpy(copy, ty, len);
    copy[len] = '\0';
    c->types[c->ntypes++] = (mg_str_t){ copy, len };
  }
  lua_pop(L, 2);
  return 0;
nomem:
  return MG_ENOMEM;
}

static int walk_routes(walk_t *w, mg_gen_t *g) {
  lua_State *L = w->L;
  lua_getfield(L, -1, "routes");
  int n = (int)lua_objlen(L, -1);
  g->routes = calloc((size_t)n + 1, sizeof(*g->routes));
  if (!g->routes) return MG_ENOMEM;
  g->nroutes = n;
  for (int i = 0; i < n; i++) {
    mg_route_t *r = &g->routes[i];
    lua_rawgeti(L, -1, i + 1);
    r->listener = field_str(L, -1, "listener");
    char *host = field_str(L, -1, "host");
    if (host && host[0] == '*') {
      r->wildcard = 1;
      memmove(host, host + 1, strlen(host));
    }
    r->host = host;
    r->host_len = host ? strlen(host) : 0;
    r->path = field_str(L, -1, "path");
    r->path_len = r->path ? strlen(r->path) : 0;
    r->upstream = (int)field_num(L, -1, "upstream_index", 0) - 1;
    r->hooks = (unsigned)field_num(L, -1, "hooks", 0);
    r->buffer_body = (uint64_t)field_num(L, -1, "buffer_body", MG_BUFFER_BODY);
    double hook_s = field_num(L, -1, "hook_timeout", 0);
    r->hook_ms = hook_s > 0 ? ms(hook_s) : 0;
    /* i12-retry */
    lua_getfield(L, -1, "idempotent");
    r->idempotent = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "cache");
    r->cache = lua_toboolean(L, -1);
    lua_pop(L, 1);
    r->cache_lock_ms = ms(field_num(L, -1, "cache_lock", 0));
    lua_getfield(L, -1, "cache_range_fetch");
    r->cache_range_fetch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "cache_ttl");
    if (lua_istable(L, -1)) {
      int nt = (int)lua_objlen(L, -1);
      for (int j = 1; j <= nt && r->cache_nttl < 32; j++) {
        lua_rawgeti(L, -1, j);
        r->cache_ttl[r->cache_nttl].status = (int)field_num(L, -1, "status", 0);
        r->cache_ttl[r->cache_nttl].seconds = (int64_t)field_num(L, -1, "seconds", 0);
        r->cache_nttl++;
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    r->connect_ms = ms(field_num(L, -1, "connect_timeout", 0));
    r->read_ms = ms(field_num(L, -1, "read_timeout", 0));
    r->write_ms = ms(field_num(L, -1, "write_timeout", 0));
    lua_getfield(L, -1, "methods");
    if (lua_istable(L, -1)) {
      int nm = (int)lua_objlen(L, -1);
      for (int j = 1; j <= nm; j++) {
        lua_rawgeti(L, -1, j);
        int m = parse_method(lua_tostring(L, -1));
        if (m >= 0) r->methods |= (uint64_t)1 << m;
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    if (r->upstream < 0 && !(r->hooks & (1u << MG_HOOK_RESPOND))) {
      int rc = build_respond(L, r);
      if (rc < 0) return rc;
    }
    int src = build_split(w, g, r); /* i12-split */
    if (src < 0) return src;
    if ((src = build_compress(w, r)) < 0) return src; /* i13-compress */
    lua_getfield(L, -1, "decode");
    r->decode = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

/* limits.connections = "auto": what the open-file limit allows each worker, counting
 * two descriptors per client connection (it may hold an upstream connection) and
 * keeping AUTO_FD_RESERVE for listeners, logs, idle pools and the like. A worker
 * that reaches it answers 503 instead of failing in accept(2) with EMFILE. */
#define AUTO_FD_RESERVE 128
static uint64_t auto_connections(int workers) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  uint64_t fds = (uint64_t)rl.rlim_cur;
  uint64_t per = fds > AUTO_FD_RESERVE ? (fds - AUTO_FD_RESERVE) / (2 * (uint64_t)workers) : 0;
  return per > 0 ? per : 1;
}

static int walk(walk_t *w, mg_gen_t *g) {
  lua_State *L = w->L;
  g->workers = (int)field_num(L, -1, "workers", 0);
  g->hooks = (unsigned)field_num(L, -1, "hooks", 0);
  if (g->workers <= 0) g->workers = (int)uv_available_parallelism();
  g->access_log = field_str(L, -1, "access_log"); /* false -> NULL: off */
  g->error_log = field_str(L, -1, "error_log");
  g->pid = field_str(L, -1, "pid");
  char *lvl = field_str(L, -1, "log_level");
  g->log_level = lvl ? mg_log_level_parse(lvl) : MG_LOG_INFO;
  free(lvl);

  lua_getfield(L, -1, "timeouts");
  mg_timeouts_t *t = &g->timeouts;
  struct { const char *k; uint64_t *v; } tk[] = {
    { "client_header", &t->client_header },
    { "client_body", &t->client_body },
    { "keepalive", &t->keepalive },
    { "send", &t->send },
    { "upstream_connect", &t->upstream_connect },
    { "upstream_read", &t->upstream_read },
    { "upstream_write", &t->upstream_write },
    { "drain", &t->drain },
    { "handshake", &t->handshake },
    { "request", &t->request },
    { "upstream_paused", &t->upstream_paused },
    { "tunnel", &t->tunnel },
    { "hook", &t->hook },
  };
  for (size_t i = 0; i < sizeof(tk) / sizeof(tk[0]); i++) {
    double v;
    if (need_num(w, "timeouts", tk[i].k, &v) < 0) return MG_ECONFIG;
    *tk[i].v = ms(v);
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "limits");
  double head_size, headers, uri_size, body_size, body_rate, per_ip;
  if (need_num(w, "limits", "head_size", &head_size) < 0 || need_num(w, "limits", "headers", &headers) < 0 ||
      need_num(w, "limits", "uri_size", &uri_size) < 0 || need_num(w, "limits", "body_size", &body_size) < 0 ||
      need_num(w, "limits", "body_rate", &body_rate) < 0 ||
      need_num(w, "limits", "connections_per_ip", &per_ip) < 0)
    return MG_ECONFIG;
  g->limits.head_size = (size_t)head_size;
  g->limits.headers = (size_t)headers;
  g->limits.uri_size = (size_t)uri_size;
  g->limits.body_size = (uint64_t)body_size;
  g->limits.body_rate = (uint64_t)body_rate;
  double conns = field_num(L, -1, "connections", -1); /* not a number: "auto" */
  g->limits.connections = conns >= 0 ? (uint64_t)conns : auto_connections(g->workers);
  g->limits.connections_per_ip = (uint64_t)per_ip;
  lua_pop(L, 1);

  lua_getfield(L, -1, "watch");
  g->watch = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "cache");
  if (lua_istable(L, -1)) {
    g->cache_memory = (uint64_t)field_num(L, -1, "memory", 0);
    g->cache_max_object = (uint64_t)field_num(L, -1, "max_object", 0);
    g->cache_heuristic_max = (int64_t)field_num(L, -1, "heuristic_max", 86400);
    lua_getfield(L, -1, "allow_set_cookie");
    g->cache_allow_set_cookie = lua_toboolean(L, -1);
    lua_pop(L, 1);
    g->cache_path = field_str(L, -1, "path");
    g->cache_disk_size = (uint64_t)field_num(L, -1, "size", 0);
  }
  lua_pop(L, 1);
  char *fp = field_str(L, -1, "forward_path");
  g->forward_raw = fp && strcmp(fp, "as_received") == 0;
  free(fp);
  lua_getfield(L, -1, "keep_target"); /* i14-waf-core: set by mg.policy.waf */
  g->keep_target = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "trusted_proxies");
  int ntrusted = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  if (ntrusted > 0) {
    g->trusted = mg_cidr_new();
    if (!g->trusted) return MG_ENOMEM;
  }
  for (int i = 1; i <= ntrusted; i++) {
    lua_rawgeti(L, -1, i);
    size_t len;
    const char *text = lua_tolstring(L, -1, &len);
    int rc = text ? mg_cidr_add(g->trusted, text, len) : MG_EINVAL;
    lua_pop(L, 1);
    if (rc == MG_ENOMEM) return rc;
    if (rc < 0) return walk_fail(w, "mg.config trusted_proxies: not an address or prefix: %s%s", text ? text : "?", "");
  }
  lua_pop(L, 1);
  lua_getfield(L, -1, "shared");
  g->nshared = (int)lua_objlen(L, -1);
  g->shared = calloc((size_t)g->nshared + 1, sizeof(char *));
  g->shared_size = calloc((size_t)g->nshared + 1, sizeof(size_t));
  if (!g->shared || !g->shared_size) return MG_ENOMEM;
  for (int i = 0; i < g->nshared; i++) {
    lua_rawgeti(L, -1, i + 1);
    g->shared[i] = field_str(L, -1, "name");
    double size;
    if (need_num(w, "shared", "size", &size) < 0) {
      lua_pop(L, 2);
      return MG_ECONFIG;
    }
    g->shared_size[i] = (size_t)size;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  size_t slen = 0;
  lua_getfield(L, -1, "source");
  const char *src = lua_tolstring(L, -1, &slen);
  if (!src || !(g->source = malloc(slen + 1))) return MG_ENOMEM;
  memcpy(g->source, src, slen + 1);
  g->source_len = slen;
  lua_pop(L, 1);
  lua_getfield(L, -1, "files");
  g->nfiles = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 0;
  g->files = calloc((size_t)g->nfiles + 1, sizeof(char *));
  if (!g->files) return MG_ENOMEM;
  for (int i = 0; i < g->nfiles; i++) {
    lua_rawgeti(L, -1, i + 1);
    g->files[i] = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  int rc;
  if ((rc = walk_listeners(w, g)) < 0) return rc;
  if ((rc = walk_upstreams(w, g)) < 0) return rc;
  return walk_routes(w, g);
}

int mg_config_explain(const char *path, FILE *f, char *err, size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "%s: out of memory", path);
    return MG_ENOMEM;
  }
  luaL_openlibs(L);
  const char *dir = mg_lua_dir();
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  int rc = MG_ECONFIG;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moongate.private.explain");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    snprintf(err, errlen, "cannot load the moongate Lua library from %s: %s", dir, lua_tostring(L, -1));
    goto done;
  }
  lua_getfield(L, -1, "text");
  lua_pushstring(L, path);
  if (lua_pcall(L, 1, 2, 0) != 0 || !lua_isstring(L, -2)) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "config error");
    goto done;
  }
  size_t len;
  const char *s = lua_tolstring(L, -2, &len);
  fwrite(s, 1, len, f);
  rc = 0;
done:
  lua_close(L);
  return rc;
}

int mg_config_load(const char *path, mg_gen_t **out, char *err, size_t errlen) {
  char abs[4096];
  *out = NULL;
  if (!realpath(path, abs)) {
    snprintf(err, errlen, "%s: cannot open config: %s", path, strerror(errno));
    return MG_ECONFIG;
  }
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "%s: out of memory", path);
    return MG_ENOMEM;
  }
  luaL_openlibs(L);
  const char *dir = mg_lua_dir();
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  int rc = MG_ECONFIG;
  mg_gen_t *g = NULL;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "moongate.private.loader");
  if (lua_pcall(L, 1, 1, 0) != 0) {
    snprintf(err, errlen, "cannot load the moongate Lua library from %s: %s", dir, lua_tostring(L, -1));
    goto done;
  }
  lua_getfield(L, -1, "load");
  lua_pushstring(L, abs);
  if (lua_pcall(L, 1, 2, 0) != 0 || lua_isnil(L, -2)) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "config error");
    goto done;
  }
  lua_pop(L, 1);
  g = calloc(1, sizeof(*g));
  if (!g) goto done;
  atomic_init(&g->refs, 1);
  g->path = xstrdup(abs);
  walk_t w = { L, err, errlen, abs };
  rc = walk(&w, g);
  if (rc == MG_ENOMEM) snprintf(err, errlen, "%s: out of memory", abs);
  if (rc < 0) {
    gen_free(g);
    g = NULL;
  }
done:
  lua_close(L);
  *out = g;
  return g ? 0 : rc;
}

/* Must agree with lua/moongate/router.lua: the list is already sorted there. */
const mg_route_t *mg_route_match(const mg_gen_t *g, const char *listener, int method,
                                 mg_str_t host, mg_str_t path) {
  /* strip the port; keep [v6] literals whole */
  size_t hlen = host.len;
  if (hlen == 0) {
    /* no Host (HTTP/1.0): only host-less routes can match */
  } else if (host.p[0] == '[') {
    const char *close = memchr(host.p, ']', hlen);
    if (close) hlen = (size_t)(close - host.p) + 1;
  } else {
    const char *colon = memchr(host.p, ':', hlen);
    if (colon) hlen = (size_t)(colon - host.p);
  }
  for (int i = 0; i < g->nroutes; i++) {
    const mg_route_t *r = &g->routes[i];
    if (r->listener && (!listener || strcmp(r->listener, listener) != 0)) continue;
    if (r->methods && (method < 0 || method > 63 || !(r->methods & ((uint64_t)1 << method)))) continue;
    if (r->host) {
      if (r->wildcard) {
        if (hlen <= r->host_len ||
            strncasecmp(host.p + hlen - r->host_len, r->host, r->host_len) != 0)
          continue;
      } else if (hlen != r->host_len || strncasecmp(host.p, r->host, hlen) != 0) {
        continue;
      }
    }
    if (path.len < r->path_len || memcmp(path.p, r->path, r->path_len) != 0) continue;
    return r;
  }
  return NULL;
}
