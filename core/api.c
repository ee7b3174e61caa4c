/* The FFI ABI (core/api.h). Every function checks the phase it is called in and
 * returns a code; nothing here raises into Lua. */
#include "api.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cache.h"
#include "cidr.h"
#include "rx.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "luavm.h"
#include "proxy.h"
#include "shdict.h"
#include "tls.h"
#include "uri.h"
#include "worker.h"

#include <openssl/x509v3.h>

/* A request object kept by Lua past its request must not reach freed memory:
 * the API serves only the request whose hook is running on this thread, and
 * compares the pointer before reading through it. */
static inline int live(const mg_req_t *r) {
  return mg_current_worker && mg_current_worker->hook_req == r;
}
#define PHASE(r, mask) (live(r) && (((mask) >> (r)->lua.phase) & 1u))
#define BIT(h) (1u << (h))

/* ---- reading the request: any hook that has a request ---- */

/* The query of the current target, "" when none. */
static mg_str_t current_query(const mg_req_t *r) {
  if (r->target.len > r->path.len + 1)
    return (mg_str_t){ r->target.p + r->path.len + 1, r->target.len - r->path.len - 1 };
  return (mg_str_t){ "", 0 };
}

static mg_str_t arena_str(mg_req_t *r, const char *p, size_t n) {
  char *s = p && n ? mg_arena_strdup(&r->arena, p, n) : NULL;
  return s ? (mg_str_t){ s, n } : (mg_str_t){ "", 0 };
}

int mg_req_tls(mg_req_t *r, mg_tls_info_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  memset(out, 0, sizeof(*out));
  SSL *ssl = r->down->ssl;
  if (!ssl) return MG_API_ENOTFOUND;
  const char *v = SSL_get_version(ssl);
  out->version = arena_str(r, v, strlen(v));
  const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
  const char *cn = c ? SSL_CIPHER_get_name(c) : "";
  out->cipher = arena_str(r, cn, strlen(cn));
  const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  out->sni = arena_str(r, sni, sni ? strlen(sni) : 0);
  const uint8_t *alpn;
  unsigned alen;
  SSL_get0_alpn_selected(ssl, &alpn, &alen);
  out->alpn = arena_str(r, (const char *)alpn, alen);
  char subject[1024], issuer[1024], fp[65];
  size_t sl = 0, il = 0;
  if (mg_tls_peer(ssl, subject, sizeof(subject), &sl, issuer, sizeof(issuer), &il, fp,
                  &out->client_verified) == 0) {
    out->client_subject = arena_str(r, subject, sl);
    out->client_issuer = arena_str(r, issuer, il);
    out->client_fingerprint = arena_str(r, fp, 64);
  }
  return 0;
}

/* What a request that moongate refused still has (the log hook runs for it): the
 * method once llhttp read it, the head only once mg_head_finish built it (before,
 * head.n counts header entries whose slices do not exist yet), the path only once
 * the target was split. Anything else reads as absent, never as memory left by
 * another request. */
static int head_ready(const mg_req_t *r) { return r->head.finished; }

int mg_req_info(mg_req_t *r, mg_req_info_t *out) {
  static const mg_str_t none = { NULL, 0 };
  if (!live(r)) return MG_API_EPHASE;
  out->method = none;
  if (r->method >= 0) {
    const char *m = llhttp_method_name(r->method);
    out->method = (mg_str_t){ m, strlen(m) };
  }
  out->path = out->query = out->host = none;
  out->http_minor = -1;
  if (head_ready(r)) {
    if (r->path.p) {
      out->path = r->path;
      out->query = current_query(r);
    }
    out->host = r->host.p ? r->host : MG_STR("");
    out->http_minor = r->http_minor;
  }
  out->client_ip = r->client_ip.len ? r->client_ip : r->down->ip;
  out->id = (mg_str_t){ r->id, 16 };
  out->scheme = r->down->ssl ? MG_STR("https") : MG_STR("http");
  out->route = r->route ? (int)(r->route - r->gen->routes) : -1;
  out->upstream = r->upstream;
  return 0;
}

/* Fills out with the nth match and returns how many headers have that name, so
 * that one call answers the common single-header case. */
static int head_get(const mg_head_t *h, const char *name, size_t nlen, size_t nth, mg_str_t *out) {
  mg_str_t n = { name, nlen };
  int count = 0;
  for (size_t i = 0; i < h->n; i++)
    if (mg_str_caseeq(h->headers[i].name, n)) {
      if ((size_t)count == nth) *out = h->headers[i].value;
      count++;
    }
  return (size_t)count > nth ? count : MG_API_ENOTFOUND;
}

static int head_at(const mg_head_t *h, size_t i, mg_str_t *name, mg_str_t *value) {
  if (i >= h->n) return MG_API_ENOTFOUND;
  *name = h->headers[i].name;
  *value = h->headers[i].value;
  return 0;
}

static int head_set(mg_req_t *r, mg_head_t *h, const char *name, size_t nlen, const char *value,
                    size_t vlen, int op) {
  mg_str_t n = { name, nlen }, v = { value, vlen };
  if (!mg_http_is_token(n) || op < 0 || op > 2) return MG_API_EINVAL;
  if (op != MG_HDR_DEL && mg_http_bad_value(v)) return MG_API_EINVAL;
  return mg_head_set(h, &r->arena, n, v, op) < 0 ? MG_API_ENOMEM : 0;
}

/* A refused request's head may never have been built: no headers then. */
int mg_req_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  if (!head_ready(r)) return MG_API_ENOTFOUND;
  return head_get(&r->head, name, nlen, nth, out);
}

size_t mg_req_header_count(mg_req_t *r) { return live(r) && head_ready(r) ? r->head.n : 0; }

int mg_req_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value) {
  if (!live(r)) return MG_API_EPHASE;
  if (!head_ready(r)) return MG_API_ENOTFOUND;
  return head_at(&r->head, i, name, value);
}

/* ---- changing the request: before the upstream request is written ---- */

#define REQ_WRITABLE (BIT(MG_HOOK_REQUEST) | BIT(MG_HOOK_BALANCE) | BIT(MG_HOOK_UPSTREAM_REQUEST) | BIT(MG_HOOK_RESPOND))

int mg_req_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen,
                      int op) {
  /* the writable hooks all run after the head was built; checked all the same */
  if (!PHASE(r, REQ_WRITABLE) || !head_ready(r)) return MG_API_EPHASE;
  return head_set(r, &r->head, name, nlen, value, vlen, op);
}

/* target = path [? query], rebuilt in the arena */
static int set_target(mg_req_t *r, mg_str_t path, mg_str_t query) {
  for (size_t i = 0; i < path.len; i++)
    if ((unsigned char)path.p[i] <= 0x20 || path.p[i] == '?' || path.p[i] == '#' || path.p[i] == 0x7f)
      return MG_API_EINVAL;
  for (size_t i = 0; i < query.len; i++)
    if ((unsigned char)query.p[i] <= 0x20 || query.p[i] == '#' || query.p[i] == 0x7f) return MG_API_EINVAL;
  if (path.len == 0 || path.p[0] != '/') return MG_API_EINVAL;
  size_t len = path.len + (query.len ? query.len + 1 : 0);
  char *t = mg_arena_alloc(&r->arena, len + 1);
  if (!t) return MG_API_ENOMEM;
  memcpy(t, path.p, path.len);
  if (query.len) {
    t[path.len] = '?';
    memcpy(t + path.len + 1, query.p, query.len);
  }
  r->target = (mg_str_t){ t, len };
  r->path = (mg_str_t){ t, path.len };
  r->raw_target = (mg_str_t){ NULL, 0 }; /* a hook's target goes upstream as set */
  return 0;
}

int mg_req_set_path(mg_req_t *r, const char *p, size_t len) {
  if (!PHASE(r, REQ_WRITABLE) || !head_ready(r)) return MG_API_EPHASE;
  return set_target(r, (mg_str_t){ p, len }, current_query(r));
}

int mg_req_set_query(mg_req_t *r, const char *q, size_t len) {
  if (!PHASE(r, REQ_WRITABLE) || !head_ready(r) || !r->path.p) return MG_API_EPHASE;
  mg_str_t path = r->path;
  return set_target(r, path, (mg_str_t){ q, len });
}

int mg_req_set_upstream(mg_req_t *r, const char *name, size_t len) {
  if (!PHASE(r, BIT(MG_HOOK_REQUEST))) return MG_API_EPHASE;
  for (int i = 0; i < r->gen->nupstreams; i++) {
    const char *n = r->gen->upstreams[i].name;
    if (strlen(n) == len && memcmp(n, name, len) == 0) {
      r->upstream = i;
      return 0;
    }
  }
  return MG_API_ENOTFOUND;
}

int mg_req_respond(mg_req_t *r, int status, const char *headers, size_t hlen, const char *body,
                   size_t blen) {
  if (!PHASE(r, BIT(MG_HOOK_REQUEST) | BIT(MG_HOOK_RESPOND))) return MG_API_EPHASE;
  if (r->rstate != MG_RS_NONE) return MG_API_EPHASE;
  if (status < 200 || status > 599) return MG_API_EINVAL;
  size_t cap = hlen + 128;
  char *head = mg_arena_alloc(&r->arena, cap);
  if (!head) return MG_API_ENOMEM;
  int n = snprintf(head, cap, "HTTP/1.1 %d %s\r\n", status, mg_http_reason(status));
  memcpy(head + n, headers, hlen);
  size_t len = (size_t)n + hlen;
  if (status != 204 && status != 304)
    len += (size_t)snprintf(head + len, cap - len, "Content-Length: %zu\r\n", blen);
  mg_proxy_answer(r, status, head, len, body, blen);
  return 0;
}

int mg_req_upstream_addr(mg_req_t *r, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  if (r->upstream < 0 || r->server < 0) return MG_API_ENOTFOUND;
  const char *t = mg_upstream_server(&r->gen->upstreams[r->upstream], r->server)->text;
  *out = (mg_str_t){ t, strlen(t) };
  return 0;
}

int mg_req_server_count(mg_req_t *r) {
  if (!live(r)) return 0;
  return r->upstream < 0 ? 0 : mg_upstream_nservers(&r->gen->upstreams[r->upstream]);
}

int mg_req_server_at(mg_req_t *r, int i, mg_str_t *addr, int *weight) {
  if (!live(r)) return MG_API_EPHASE;
  if (r->upstream < 0 || i < 0 || i >= mg_upstream_nservers(&r->gen->upstreams[r->upstream])) return MG_API_ENOTFOUND;
  const mg_upstream_cfg_t *u = &r->gen->upstreams[r->upstream];
  const mg_server_t *s = mg_upstream_server(u, i);
  *addr = (mg_str_t){ s->text, strlen(s->text) };
  *weight = atomic_load_explicit(&mg_balance_peer(u->bal, i)->weight, memory_order_relaxed);
  return 0;
}

int mg_req_server_state(mg_req_t *r, int i, int *active, unsigned *ewma_us, int *fails) {
  if (!live(r)) return MG_API_EPHASE;
  if (r->upstream < 0 || i < 0 || i >= mg_upstream_nservers(&r->gen->upstreams[r->upstream])) return MG_API_ENOTFOUND;
  const mg_peer_t *p = mg_balance_peer(r->gen->upstreams[r->upstream].bal, i);
  *active = atomic_load_explicit(&p->active, memory_order_relaxed);
  *ewma_us = atomic_load_explicit(&p->ewma_us, memory_order_relaxed);
  *fails = atomic_load_explicit(&p->fails, memory_order_relaxed);
  return 0;
}

int mg_req_hash_want(mg_req_t *r) {
  if (!PHASE(r, BIT(MG_HOOK_BALANCE)) || r->upstream < 0 || r->hkey_ran) return 0;
  if (!r->gen->upstreams[r->upstream].hash_fn) return 0;
  r->hkey_ran = 1; /* the caller runs it now: not again for a retry, whatever it returns */
  return r->upstream + 1;
}

int mg_req_set_hash_key(mg_req_t *r, const char *p, size_t len) {
  if (!PHASE(r, BIT(MG_HOOK_BALANCE))) return MG_API_EPHASE;
  if (len > 4096) return MG_API_EINVAL;
  char *k = mg_arena_alloc(&r->arena, len + 1);
  if (!k) return MG_API_ENOMEM;
  memcpy(k, p, len);
  r->hkey = (mg_str_t){ k, len };
  r->hkey_set = 1;
  return 0;
}

int mg_req_server_flags(mg_req_t *r, int i) { /* i12-health */
  if (!live(r)) return MG_API_EPHASE;
  if (r->upstream < 0 || i < 0 || i >= mg_upstream_nservers(&r->gen->upstreams[r->upstream])) return MG_API_ENOTFOUND;
  const mg_peer_t *p = mg_balance_peer(r->gen->upstreams[r->upstream].bal, i);
  unsigned f = atomic_load_explicit(&p->flags, memory_order_relaxed) & (MG_PEER_DOWN | MG_PEER_EJECTED);
  uint64_t until = atomic_load_explicit(&p->until_ms, memory_order_relaxed) & ~(1ull << 63); /* (top bit: ended) */
  if ((f & MG_PEER_EJECTED) && mg_balance_now_ms() >= until)
    f &= ~MG_PEER_EJECTED; /* over: the next pick that looks ends it */
  return (int)f;
}

int mg_req_set_server(mg_req_t *r, int i) {
  if (!PHASE(r, BIT(MG_HOOK_BALANCE))) return MG_API_EPHASE;
  if (i < 0 || i >= mg_req_server_count(r)) return MG_API_EINVAL;
  r->pick = i;
  return 0;
}

/* ---- the response: readable from the response hook on, writable in it ---- */

#define RES_READABLE (BIT(MG_HOOK_RESPONSE) | BIT(MG_HOOK_BODY) | BIT(MG_HOOK_LOG))

int mg_res_status(mg_req_t *r) {
  if (!PHASE(r, RES_READABLE)) return MG_API_EPHASE;
  return r->status;
}

int mg_res_set_status(mg_req_t *r, int status) {
  if (!PHASE(r, BIT(MG_HOOK_RESPONSE))) return MG_API_EPHASE;
  if (status < 200 || status > 599) return MG_API_EINVAL;
  r->status = status;
  return 0;
}

int mg_res_compress(mg_req_t *r, int on) { /* i13-compress */
  if (!PHASE(r, BIT(MG_HOOK_REQUEST) | BIT(MG_HOOK_RESPONSE))) return MG_API_EPHASE;
  r->compress_off = !on;
  return 0;
}

/* Without an upstream response head (moongate answered itself: a refusal, an
 * error, a respond route) the log hook reads no response headers; the head of a
 * previous request on this memory is not this one's. */
int mg_res_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out) {
  if (!PHASE(r, RES_READABLE)) return MG_API_EPHASE;
  if (!r->rhead.finished) return MG_API_ENOTFOUND;
  return head_get(&r->rhead, name, nlen, nth, out);
}

size_t mg_res_header_count(mg_req_t *r) {
  return PHASE(r, RES_READABLE) && r->rhead.finished ? r->rhead.n : 0;
}

int mg_res_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value) {
  if (!PHASE(r, RES_READABLE)) return MG_API_EPHASE;
  if (!r->rhead.finished) return MG_API_ENOTFOUND;
  return head_at(&r->rhead, i, name, value);
}

int mg_res_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen,
                      int op) {
  if (!PHASE(r, BIT(MG_HOOK_RESPONSE)) || !r->rhead.finished) return MG_API_EPHASE;
  return head_set(r, &r->rhead, name, nlen, value, vlen, op);
}

/* ---- worker facilities ---- */

void mg_api_log(int level, const char *msg, size_t len) {
  mg_worker_t *w = mg_current_worker;
  if (level < MG_LOG_DEBUG || level > MG_LOG_ERROR) level = MG_LOG_INFO;
  mg_log(level, w ? w->id : -1, "%.*s", (int)len, msg);
}

double mg_api_now(void) {
  mg_worker_t *w = mg_current_worker;
  if (w) return (double)uv_now(&w->loop) / 1000.0;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int mg_api_worker_id(void) {
  mg_worker_t *w = mg_current_worker;
  return w ? w->id : -1;
}

int mg_api_timer(double secs, int id) {
  mg_worker_t *w = mg_current_worker;
  if (!w || !w->lua_wg || secs != secs || secs < 0) return -1;
  return mg_lua_timer_arm(w->lua_wg, id, secs);
}

void mg_api_timer_cancel(int id) {
  mg_worker_t *w = mg_current_worker;
  if (w && w->lua_wg) mg_lua_timer_cancel(w->lua_wg, id);
}

/* ---- request bodies (proxy.c reads and frames them) ---- */

int mg_req_read_body(mg_req_t *r, mg_str_t *err) {
  if (!PHASE(r, BIT(MG_HOOK_REQUEST) | BIT(MG_HOOK_RESPOND))) return MG_API_EPHASE;
  const char *why = "the request was answered already";
  int rc = r->rstate == MG_RS_NONE ? mg_proxy_read_body(r, &why) : -1;
  if (rc == 1) return MG_API_EAGAIN;
  if (rc == 0) return 0;
  *err = (mg_str_t){ why, strlen(why) };
  return MG_API_EINVAL;
}

int mg_req_body(mg_req_t *r, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  if (!r->bb_done && !r->bb_set) return MG_API_ENOTFOUND;
  *out = (mg_str_t){ r->bb ? r->bb : "", r->bb_len };
  return 0;
}

#define BODY_WRITABLE (BIT(MG_HOOK_REQUEST) | BIT(MG_HOOK_UPSTREAM_REQUEST))

int mg_req_set_body(mg_req_t *r, const char *p, size_t len) {
  /* bb_primed: the upstream request is written (never in these hooks; checked) */
  if (!PHASE(r, BODY_WRITABLE) || r->rstate != MG_RS_NONE || r->bb_primed || r->bb_on) return MG_API_EPHASE;
  return mg_proxy_set_body(r, p, len) < 0 ? MG_API_ENOMEM : 0;
}

int mg_req_set_method(mg_req_t *r, const char *m, size_t len) {
  static const struct { int id; const char *name; } methods[] = {
#define MG_METHOD_ROW(num, name, string) { num, #string },
    HTTP_METHOD_MAP(MG_METHOD_ROW)
#undef MG_METHOD_ROW
  };
  if (!PHASE(r, BODY_WRITABLE) || !head_ready(r) || r->bb_primed) return MG_API_EPHASE;
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
    if (strlen(methods[i].name) != len || memcmp(methods[i].name, m, len) != 0) continue;
    if (methods[i].id == HTTP_CONNECT || methods[i].id == HTTP_PRI) break; /* tunnels, HTTP/2's preface */
    r->method = methods[i].id;
    r->method_set = 1;
    return 0;
  }
  return MG_API_EINVAL;
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
  /* (a NUL inside would cut the text short: "1.2.3.4:80\0junk" is refused) */
  if (len == 0 || len >= sizeof(buf) || memchr(a, 0, len)) goto bad;
  memcpy(buf, a, len);
  buf[len] = 0;
  char *colon = strrchr(buf, ':'), *host = buf;
  if (!colon) goto bad;
  *colon = 0;
  long port = 0; /* digits only: no sign, no blanks (strtol would take " +80") */
  const char *d = colon + 1;
  for (; *d >= '0' && *d <= '9' && port <= 65535; d++) port = port * 10 + (*d - '0');
  if (d == colon + 1 || *d || port < 1 || port > 65535) goto bad;
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
bad:;
  static const char msg[] = "bad address (want a numeric ip:port or [ip6]:port)";
  *err = (mg_str_t){ msg, sizeof(msg) - 1 };
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
  int id = publish ? mg_upstream_add(up, (struct sockaddr *)&ss, weight, -1, 1) : -1;
  if (!publish) { /* one of a list: published by mg_ups_publish */
    mg_server_t *s = calloc(1, sizeof(*s));
    if (!s) return balance_err(MG_BALANCE_ENOMEM, err);
    memcpy(&s->addr, &ss, mg_upstream_addrlen((struct sockaddr *)&ss));
    s->addrlen = mg_upstream_addrlen((struct sockaddr *)&ss);
    mg_upstream_text((struct sockaddr *)&ss, s->text, sizeof(s->text));
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
  mg_upstream_text((struct sockaddr *)&ss, key, sizeof(key));
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

/* ---- i12-split ---- */
int mg_req_upstream_name(mg_req_t *r, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  if (r->upstream < 0) return MG_API_ENOTFOUND;
  const char *n = r->gen->upstreams[r->upstream].name;
  *out = (mg_str_t){ n, strlen(n) };
  return 0;
}

/* ---- i12-retry: an upstream's retry and circuit breaker state ---- */

int mg_upstream_stats(const char *name, size_t len, mg_upstream_stats_t *out) {
  mg_worker_t *w = mg_current_worker;
  if (!w || !w->lua_wg) return MG_API_EPHASE;
  const mg_gen_t *g = w->lua_wg->gen;
  for (int i = 0; i < g->nupstreams; i++) {
    const mg_upstream_cfg_t *u = &g->upstreams[i];
    if (!u->bal || strlen(u->name) != len || memcmp(u->name, name, len) != 0) continue;
    mg_balancer_t *b = u->bal;
#define LD(f) ((double)atomic_load_explicit(&b->f, memory_order_relaxed))
    *out = (mg_upstream_stats_t){
      .requests = LD(requests), .retries = LD(retries), .retries_budget_exceeded = LD(retries_budget_exceeded),
      .overflow_connections = LD(overflow_connections), .overflow_pending = LD(overflow_pending),
      .overflow_requests = LD(overflow_requests), .active_requests = LD(rq_active),
      .active_connections = LD(conns), .pending = LD(pending), .active_retries = LD(retries_active),
    };
#undef LD
    return 0;
  }
  return MG_API_ENOTFOUND;
}

/* ---- i13-api: mg.cache (any hook or timer; the store is the process's) ---- */

#define CACHE_KEY_MAX 16384

/* "http://" or "https://" (any case): the length of that prefix, else 0. */
static size_t url_scheme(const char *s, size_t len, mg_str_t *scheme) {
  if (len >= 7 && strncasecmp(s, "http://", 7) == 0) {
    *scheme = MG_STR("http");
    return 7;
  }
  if (len >= 8 && strncasecmp(s, "https://", 8) == 0) {
    *scheme = MG_STR("https");
    return 8;
  }
  return 0;
}

/* The primary key of a URL, as cache_lookup (proxy.c) makes it for a GET of it:
 * the path normalized as routing normalizes it, unless `prefix` (a key prefix:
 * the rest is taken as it is). A malloc'd key into *out (the caller frees it),
 * 0, or MG_API_EINVAL / MG_API_ENOMEM. */
static int url_key(const char *s, size_t len, int prefix, mg_str_t *out) {
  mg_str_t scheme;
  size_t skip = url_scheme(s, len, &scheme);
  const char *a = s + skip, *end = s + len, *e = a;
  while (e < end && *e != '/' && *e != '?') e++;
  mg_str_t host = { a, (size_t)(e - a) };
  if (!host.len || mg_uri_check_host(host, NULL, NULL) < 0) return MG_API_EINVAL;
  size_t tlen = (size_t)(end - e) + 1; /* room for a "/" before a bare "?q" */
  char *target = malloc(tlen), *norm = malloc(tlen);
  size_t cap = 4 + skip + host.len + tlen + 8;
  char *k = malloc(cap);
  int rc = MG_API_ENOMEM;
  if (!target || !norm || !k) goto done;
  size_t n = 0;
  if (e == end || *e == '?') target[n++] = '/';
  memcpy(target + n, e, (size_t)(end - e));
  n += (size_t)(end - e);
  mg_str_t path, query = { NULL, 0 };
  if (prefix) {
    path = (mg_str_t){ target, n }; /* as given: a prefix may end inside a segment */
  } else {
    size_t nlen;
    rc = MG_API_EINVAL;
    if (mg_uri_normalize_target(target, n, norm, &nlen) < 0) goto done;
    const char *qm = memchr(norm, '?', nlen);
    path = (mg_str_t){ norm, qm ? (size_t)(qm - norm) : nlen };
    if (qm) query = (mg_str_t){ qm + 1, (size_t)(norm + nlen - qm - 1) };
  }
  size_t klen = mg_cp_key(k, cap, MG_STR("GET"), scheme, host, path, query);
  rc = MG_API_EINVAL;
  if (!klen) goto done;
  *out = (mg_str_t){ k, klen };
  k = NULL;
  rc = 0;
done:
  free(target);
  free(norm);
  free(k);
  return rc;
}

int mg_api_cache_purge(const char *s, size_t len) {
  mg_cache_t *c = mg_cache_global();
  if (!c) return MG_API_ENOTFOUND;
  mg_str_t scheme;
  int n = mg_cache_remove(c, (mg_str_t){ s, len }); /* the raw key (a hook's key may be a URL) */
  if (url_scheme(s, len, &scheme)) {
    mg_str_t key;
    int rc = url_key(s, len, 0, &key);
    if (rc < 0) return n ? n : rc;
    /* the default key is the URL's, a space and the upstream's name (proxy.c
     * cache_key_of): every upstream's object of that URL goes */
    char *kp = realloc((void *)key.p, key.len + 1);
    if (!kp) {
      free((void *)key.p);
      return n ? n : MG_API_ENOMEM;
    }
    kp[key.len] = ' ';
    n += mg_cache_remove_prefix(c, (mg_str_t){ kp, key.len + 1 });
    free(kp);
  }
  return n;
}

int mg_api_cache_purge_prefix(const char *s, size_t len) {
  mg_cache_t *c = mg_cache_global();
  if (!c) return MG_API_ENOTFOUND;
  mg_str_t scheme;
  if (!url_scheme(s, len, &scheme)) return mg_cache_remove_prefix(c, (mg_str_t){ s, len });
  mg_str_t key;
  int rc = url_key(s, len, 1, &key);
  if (rc < 0) return rc;
  int n = mg_cache_remove_prefix(c, key);
  free((void *)key.p);
  return n;
}

int mg_api_cache_stats(mg_cache_api_stats_t *out) {
  mg_cache_t *c = mg_cache_global();
  if (!c) return MG_API_ENOTFOUND;
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  /* a hit is a stored response found: in memory (st.hits) or, on a memory miss,
   * on disk (st.disk_hits), as the client's Cache-Status says */
  uint64_t hits = st.hits + st.disk_hits;
  *out = (mg_cache_api_stats_t){
    .objects = (double)st.objects, .bytes = (double)st.bytes, .cap = (double)st.cap,
    .lookups = (double)st.lookups, .hits = (double)hits, .misses = (double)(st.lookups - hits),
    .stores = (double)st.stores, .replaced = (double)st.replaced, .rejected = (double)st.rejected,
    .evictions = (double)st.evictions, .too_big = (double)st.too_big,
    .disk_objects = (double)st.disk_objects, .disk_bytes = (double)st.disk_bytes, .disk_cap = (double)st.disk_cap,
    .disk_hits = (double)st.disk_hits, .disk_writes = (double)st.disk_writes,
    .disk_write_errors = (double)st.disk_write_errors, .disk_evictions = (double)st.disk_evictions,
    .disk_corrupt = (double)st.disk_corrupt,
  };
  return 0;
}

/* The access log's policy, consumer and waf fields: a copy of 1 to `max` bytes
 * in the request's arena (JSON-escaped when the line is written). */
static int set_log_field(mg_req_t *r, mg_str_t *field, const char *p, size_t len, size_t max) {
  if (!live(r)) return MG_API_EPHASE;
  if (len == 0 || len > max) return MG_API_EINVAL;
  char *k = mg_arena_strdup(&r->arena, p, len);
  if (!k) return MG_API_ENOMEM;
  *field = (mg_str_t){ k, len };
  return 0;
}

int mg_req_set_policy(mg_req_t *r, const char *p, size_t len) { return set_log_field(r, &r->policy, p, len, 64); }

int mg_req_set_cache_key(mg_req_t *r, const char *p, size_t len) {
  if (!PHASE(r, BIT(MG_HOOK_CACHE_KEY))) return MG_API_EPHASE;
  if (len == 0 || len > CACHE_KEY_MAX) return MG_API_EINVAL;
  char *k = mg_arena_alloc(&r->arena, len);
  if (!k) return MG_API_ENOMEM;
  memcpy(k, p, len);
  r->ckey_user = (mg_str_t){ k, len };
  r->ckey_user_set = 1;
  return 0;
}

/* ---- i14-ratelimit ---- */
mg_cidr_t *mg_api_cidr_new(void) { return mg_cidr_new(); }

int mg_api_cidr_add(mg_cidr_t *set, const char *text, size_t len) {
  if (!set || (!text && len)) return MG_API_EINVAL;
  int rc = mg_cidr_add(set, text, len);
  if (rc == MG_ENOMEM) return MG_API_ENOMEM;
  return rc == 0 ? 0 : MG_API_EINVAL;
}

int mg_api_cidr_match(const mg_cidr_t *set, const char *ip, size_t len) {
  if (!set || (!ip && len)) return 0;
  return mg_cidr_match_text(set, (mg_str_t){ ip, len });
}

size_t mg_api_cidr_count(const mg_cidr_t *set) { return set ? mg_cidr_count(set) : 0; }

void mg_api_cidr_free(mg_cidr_t *set) { mg_cidr_free(set); }

int mg_req_peer_ip(mg_req_t *r, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  *out = r->down->ip;
  return 0;
}

/* ---- i14-auth: the consumer an authentication policy found (the access log's
 * `consumer`), and the client certificate's names ---- */
int mg_req_set_consumer(mg_req_t *r, const char *p, size_t len) {
  return set_log_field(r, &r->consumer, p, len, 256);
}

/* The connection's client certificate, verified or not (the caller checks). */
int mg_req_tls_client_name(mg_req_t *r, int kind, size_t nth, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  SSL *ssl = r->down ? r->down->ssl : NULL;
  if (!ssl) return MG_API_ENOTFOUND;
  X509 *x = SSL_get_peer_certificate(ssl);
  if (!x) return MG_API_ENOTFOUND;
  int count = 0;
  if (kind == MG_TLS_NAME_CN) {
    X509_NAME *name = X509_get_subject_name(x);
    int i = -1;
    while ((i = X509_NAME_get_index_by_NID(name, NID_commonName, i)) >= 0) {
      if ((size_t)count++ != nth) continue;
      ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
      unsigned char *u = NULL;
      int n = ASN1_STRING_to_UTF8(&u, s);
      if (n < 0) { count = MG_API_EINVAL; break; }
      char *c = mg_arena_strdup(&r->arena, (const char *)u, (size_t)n);
      OPENSSL_free(u);
      if (!c) { count = MG_API_ENOMEM; break; }
      *out = (mg_str_t){ c, (size_t)n };
    }
  } else if (kind == MG_TLS_NAME_DNS) {
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (size_t i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
      const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
      if (g->type != GEN_DNS) continue;
      if ((size_t)count++ != nth) continue;
      const ASN1_IA5STRING *s = g->d.dNSName;
      char *c = mg_arena_strdup(&r->arena, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
      if (!c) { count = MG_API_ENOMEM; break; }
      *out = (mg_str_t){ c, (size_t)ASN1_STRING_length(s) };
    }
    GENERAL_NAMES_free(gens);
  } else {
    count = MG_API_EINVAL;
  }
  X509_free(x);
  if (count == 0) return MG_API_ENOTFOUND;
  if (count > 0 && (size_t)count <= nth) return MG_API_ENOTFOUND;
  return count;
}

/* ---- i14-cors: limit_conn ---- */
int mg_req_hold(mg_req_t *r, mg_shdict_t *d, const char *key, size_t klen, double limit, double *count) {
  if (!PHASE(r, BIT(MG_HOOK_REQUEST))) return MG_API_EPHASE;
  if (!d || !key || klen == 0) return MG_API_EINVAL;
  /* the record first: once counted, the request must be able to give it back */
  struct mg_hold_s *h = mg_arena_alloc(&r->arena, sizeof(*h) + klen);
  if (!h) return MG_API_ENOMEM;
  double n = 0;
  int rc = mg_shdict_incr(d, key, klen, 1, 1, 0, 0, &n);
  if (rc < 0) return rc;
  *count = n;
  if (n > limit) { /* over: not held */
    mg_shdict_incr(d, key, klen, -1, 0, 0, 0, &n);
    return 0;
  }
  h->d = d;
  h->klen = klen;
  memcpy(h->key, key, klen);
  h->next = r->holds;
  r->holds = h;
  return 1;
}

/* ---- i14-waf-core: the waf policy's access log field and its body bound ---- */
int mg_req_set_waf(mg_req_t *r, const char *p, size_t len) { return set_log_field(r, &r->waf, p, len, 512); }

double mg_req_body_bound(mg_req_t *r) {
  if (!live(r)) return MG_API_EPHASE;
  uint64_t max = r->route ? r->route->buffer_body : MG_BUFFER_BODY;
  uint64_t limit = r->gen->limits.body_size;
  if (limit && limit < max) max = limit;
  return (double)max;
}

int mg_req_orig_target(mg_req_t *r, mg_str_t *out) {
  if (!live(r)) return MG_API_EPHASE;
  if (!r->orig_target.p) return MG_API_ENOTFOUND;
  *out = r->orig_target;
  return 0;
}
