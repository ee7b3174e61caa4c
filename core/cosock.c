#include "cosock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "luavm.h"
#include "resolve.h"
#include "timer.h"
#include "tls.h"
#include "transport.h"
#include "worker.h"

/* A connection's life. */
enum {
  CS_RESOLVING,   /* the name is being resolved (no transport yet) */
  CS_CONNECTING,  /* the TCP connect runs */
  CS_HANDSHAKING, /* sslhandshake: the TLS handshake runs */
  CS_OPEN,        /* connected: a socket uses it */
  CS_IDLE,        /* in its pool, no socket; reading only to notice a close */
  CS_CLOSED,      /* closed; its memory goes when the transport says so */
};

/* What the socket's run waits for (one at a time). */
enum { OP_NONE, OP_CONNECT, OP_HANDSHAKE, OP_SEND, OP_RECV };

/* receive's modes (as the Lua side passes them). */
enum { RX_N = 0, RX_LINE = 1, RX_ALL = 2, RX_ANY = 3 };

typedef struct mg_coconn_s mg_coconn_t;
typedef struct mg_copool_s mg_copool_t;

/* A worker's share (w->cosock): every open connection, the idle pools, the
 * client TLS contexts built so far. */
typedef struct mg_cosock_w_s {
  mg_coconn_t *conns;
  mg_copool_t *pools;
  int npools;
  mg_tls_client_cache_t tls; /* by (verify, CA file); the name is set per connection */
  int closed; /* the worker ends: no more connections */
} mg_cosock_w_t;

struct mg_copool_s {
  mg_copool_t *next;
  mg_coconn_t *head, *tail; /* idle connections, most recently pooled first */
  int n;
  size_t klen;
  char key[];
};

struct mg_coconn_s {
  mg_tp_t tp;
  uv_connect_t creq;
  mg_dnsq_t dnsq;
  mg_timer_t timer; /* the running operation's timeout, or the idle timeout */
  mg_lwait_t lw;
  mg_worker_t *w;
  mg_cosock_w_t *cw;
  mg_coconn_t *prev, *next;   /* cw->conns */
  mg_coconn_t *iprev, *inext; /* pool's idle list, while idle */
  mg_copool_t *pool;          /* while idle */
  struct mg_cosock_s *sock;   /* NULL while idle (or once the socket went) */
  mg_lreq_t *waiter;          /* the run waiting on op */
  int state, op;
  int want_mode;
  size_t want_n;
  int rerr;                   /* a read error (libuv code), kept until closed */
  unsigned tp_open : 1, resolving : 1, eof : 1, timed_out : 1, tls : 1;
  int reused;
  uint64_t tls_id;            /* hash of the TLS settings it was made with */
  char *buf;                  /* read, not yet taken: buf[off..len) */
  size_t off, len, cap;
  size_t klen;
  char key[MG_COSOCK_KEY_MAX];
};

/* The Lua-owned socket (api.h: mg_cosock_t). */
struct mg_cosock_s {
  mg_coconn_t *c;
  mg_lreq_t *run;   /* the run it belongs to (first connect), NULL before */
  mg_lres_t res;    /* in run's list */
  uint64_t connect_ms, send_ms, read_ms;
  int pool_size;    /* connect's opts.pool_size, 0: none */
  int reused;       /* of its last connection */
  int dead;         /* its run ended */
  int pending;      /* an operation waits; its result is not known yet */
  int rc;           /* the last waited operation's result: 0 or -1 with err */
  const char *err;
  char *ca;         /* connect's opts.ssl_ca */
  char errbuf[256];
};

static void on_timer(mg_timer_t *t);

/* ---------------- helpers ---------------- */

static const char *uv_err(int rc) {
  switch (rc) {
  case UV_ECONNREFUSED: return "connection refused";
  case UV_ECONNRESET: return "connection reset by peer";
  case UV_ETIMEDOUT: return "timeout";
  case UV_EPIPE: return "broken pipe";
  case UV_EOF: return "closed";
  case UV_ENOMEM:
  case MG_ENOMEM: return "no memory";
  case UV_EHOSTUNREACH: return "no route to host";
  case UV_ENETUNREACH: return "network is unreachable";
  case UV_ECANCELED: return "closed";
  case MG_TP_ETLS: return "TLS error";
  default: return uv_strerror(rc);
  }
}

static void socks_end(mg_worker_t *w, int stage);

/* Made with the worker's first connect; the worker learns to end it then. */
static mg_cosock_w_t *wstate(mg_worker_t *w) {
  if (!w->cosock && (w->cosock = calloc(1, sizeof(mg_cosock_w_t)))) w->socks_end = socks_end;
  return w->cosock;
}

static void arm(mg_coconn_t *c, uint64_t ms) {
  if (ms) mg_timer_start(&c->w->timers, &c->timer, ms, on_timer);
  else mg_timer_stop(&c->w->timers, &c->timer);
}

static void unpool(mg_coconn_t *c) {
  mg_copool_t *p = c->pool;
  if (!p) return;
  if (c->iprev) c->iprev->inext = c->inext;
  else p->head = c->inext;
  if (c->inext) c->inext->iprev = c->iprev;
  else p->tail = c->iprev;
  c->iprev = c->inext = NULL;
  c->pool = NULL;
  p->n--;
}

/* The waiting operation is over (err: why it failed, NULL: done): the socket
 * keeps the result and its run resumes on the next loop turn. */
static void op_done(mg_coconn_t *c, const char *err) {
  mg_timer_stop(&c->w->timers, &c->timer);
  c->op = OP_NONE;
  if (c->sock) {
    c->sock->pending = 0;
    c->sock->rc = err ? -1 : 0;
    c->sock->err = err;
  }
  mg_lreq_t *r = c->waiter;
  c->waiter = NULL;
  if (r) mg_lua_wake(r, &c->lw);
}

/* Closes c; a run waiting on it wakes to err ("closed" when NULL). */
static void conn_close(mg_coconn_t *c, const char *err) {
  if (c->state == CS_CLOSED) return;
  if (c->waiter) op_done(c, err ? err : "closed");
  c->state = CS_CLOSED;
  c->op = OP_NONE;
  if (c->sock) {
    struct mg_cosock_s *s = c->sock;
    s->reused = c->reused;
    if (s->pending) { /* cancelled: nobody waits for it any more */
      s->pending = 0;
      s->rc = -1;
      s->err = "closed";
    }
    s->c = NULL;
    c->sock = NULL;
  }
  unpool(c);
  if (c->prev) c->prev->next = c->next;
  else c->cw->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  mg_timer_stop(&c->w->timers, &c->timer);
  if (c->resolving) mg_resolve_cancel(&c->dnsq);
  c->resolving = 0;
  free(c->buf);
  c->buf = NULL;
  c->off = c->len = c->cap = 0;
  if (c->tp_open) mg_tp_close(&c->tp); /* tp_closed frees c */
  else free(c);
}

/* The waiting run went away (its request ended, timeouts.hook): the operation
 * is abandoned mid-way, so the connection's state is unknown: it closes. */
static void op_cancel(mg_lwait_t *lw) {
  mg_coconn_t *c = (mg_coconn_t *)((char *)lw - offsetof(mg_coconn_t, lw));
  c->waiter = NULL;
  conn_close(c, NULL);
}

/* How much a waiting receive needs buffered before it can answer. */
static size_t want_limit(const mg_coconn_t *c) {
  switch (c->want_mode) {
  case RX_N: return c->want_n;
  case RX_LINE: return MG_COSOCK_LINE_MAX + 1;
  case RX_ALL: return MG_COSOCK_ALL_MAX + 1;
  default: return 1;
  }
}

/* Reads while what is buffered is below what is wanted (a waiting receive's
 * need, else the read-ahead; idle: any byte, which closes it). */
static void read_ctl(mg_coconn_t *c) {
  if (c->state != CS_OPEN && c->state != CS_IDLE) return;
  size_t have = c->len - c->off;
  size_t lim = c->state == CS_IDLE ? 1 : c->op == OP_RECV ? want_limit(c) : MG_COSOCK_PREFETCH;
  mg_tp_read(&c->tp, !c->eof && !c->rerr && have < lim);
}

/* A waiting receive can answer now (with data, or an end). */
static int rx_ready(const mg_coconn_t *c) {
  size_t have = c->len - c->off;
  if (c->eof || c->rerr || have >= want_limit(c)) return 1;
  return c->want_mode == RX_LINE && have && memchr(c->buf + c->off, '\n', have) != NULL;
}

/* Appends read bytes. The buffer never holds more than the largest limit plus
 * one read: reading stops at the limit (read_ctl). */
static int append(mg_coconn_t *c, const char *p, size_t n) {
  size_t have = c->len - c->off;
  if (c->off && c->cap - c->len < n) {
    memmove(c->buf, c->buf + c->off, have);
    c->off = 0;
    c->len = have;
  }
  if (c->len + n > c->cap) {
    size_t need = c->len + n, cap = c->cap ? c->cap : 4096;
    while (cap < need) cap *= 2;
    size_t hard = (size_t)MG_COSOCK_ALL_MAX + 2 * MG_READ_BUF;
    if (cap > hard) cap = need > hard ? need : hard;
    char *b = realloc(c->buf, cap);
    if (!b) return -1;
    c->buf = b;
    c->cap = cap;
  }
  memcpy(c->buf + c->len, p, n);
  c->len += n;
  return 0;
}

/* ---------------- what the transport says ---------------- */

static void tp_ready(void *arg, int rc, int kind, const char *why) {
  mg_coconn_t *c = arg;
  if (c->state == CS_CLOSED) return;
  struct mg_cosock_s *s = c->sock;
  if (c->op == OP_CONNECT) {
    if (rc < 0) {
      MG_DEBUG(c->w->id, "mg.tcp %.*s: connect: %s", (int)c->klen, c->key, why);
      conn_close(c, uv_err(rc));
      return;
    }
    c->state = CS_OPEN;
    op_done(c, NULL);
    read_ctl(c);
    return;
  }
  if (c->op != OP_HANDSHAKE) return;
  if (rc < 0) {
    const char *err = "handshake failed";
    if (s) {
      snprintf(s->errbuf, sizeof(s->errbuf), "%s: %s",
               kind == MG_TP_FAIL_CERT ? "certificate verify failed" : "handshake failed",
               why ? why : "?");
      err = s->errbuf;
    }
    MG_INFO(c->w->id, "mg.tcp %.*s: TLS: %s", (int)c->klen, c->key, err);
    conn_close(c, err);
    return;
  }
  c->tls = 1;
  c->state = CS_OPEN;
  op_done(c, NULL);
  read_ctl(c);
}

static int tp_data(void *arg, const char *p, size_t n) {
  mg_coconn_t *c = arg;
  if (c->state != CS_OPEN) { /* idle: the peer spoke unasked (or closes): it goes */
    conn_close(c, NULL);
    return 1;
  }
  if (append(c, p, n) < 0) {
    c->rerr = MG_ENOMEM;
    mg_tp_read(&c->tp, 0);
    if (c->op == OP_RECV) op_done(c, NULL);
    return 1;
  }
  if (c->op == OP_RECV && rx_ready(c)) op_done(c, NULL);
  read_ctl(c);
  return 0;
}

static void tp_read_end(void *arg) { (void)arg; }

static void tp_eof(void *arg) {
  mg_coconn_t *c = arg;
  if (c->state == CS_IDLE) {
    conn_close(c, NULL);
    return;
  }
  c->eof = 1;
  if (c->op == OP_RECV) op_done(c, NULL);
}

static void tp_error(void *arg, int err, const char *why) {
  mg_coconn_t *c = arg;
  if (c->state == CS_CLOSED) return;
  if (c->state == CS_IDLE) {
    conn_close(c, NULL);
    return;
  }
  if (c->op == OP_CONNECT || c->op == OP_HANDSHAKE) {
    conn_close(c, err == MG_ENOMEM ? "no memory" : "handshake failed");
    return;
  }
  MG_DEBUG(c->w->id, "mg.tcp %.*s: read: %s", (int)c->klen, c->key, why);
  (void)why;
  c->rerr = err;
  if (c->op == OP_RECV) op_done(c, NULL);
  else if (c->op == OP_SEND) conn_close(c, uv_err(err));
}

static void tp_written(void *arg, int status) {
  mg_coconn_t *c = arg;
  if (c->state == CS_CLOSED) return;
  if (status < 0) {
    conn_close(c, uv_err(status));
    return;
  }
  if (c->op == OP_SEND && mg_outq_size(&c->tp.out) == 0) op_done(c, NULL);
}

static void tp_closed(void *arg) { free(arg); }

static const mg_tp_events_t tp_events = {
  .ready = tp_ready, .data = tp_data, .read_end = tp_read_end, .eof = tp_eof,
  .error = tp_error, .written = tp_written, .closed = tp_closed,
};

/* ---------------- timeouts ---------------- */

static void on_timer(mg_timer_t *t) {
  mg_coconn_t *c = (mg_coconn_t *)((char *)t - offsetof(mg_coconn_t, timer));
  switch (c->op) {
  case OP_RECV: /* the socket stays usable (OpenResty's way): receive says "timeout" */
    c->timed_out = 1;
    op_done(c, NULL);
    read_ctl(c);
    return;
  case OP_CONNECT:
  case OP_HANDSHAKE:
  case OP_SEND: /* half-done: the stream's state is unknown */
    conn_close(c, "timeout");
    return;
  default: /* idle for idle_ms */
    conn_close(c, NULL);
  }
}

/* ---------------- the operations ---------------- */

/* Every operation that may wait: the run calling now, which the socket belongs
 * to from its first connect on. 0, MG_API_EPHASE (no run may wait now), or -1
 * with *err. */
static int begin(mg_cosock_t *s, mg_lreq_t **rp, const char **err) {
  mg_lreq_t *r = mg_lua_running(mg_current_worker);
  if (!r) return MG_API_EPHASE;
  if (s->dead) {
    *err = "closed";
    return -1;
  }
  if (s->run && s->run != r) {
    *err = "bad request (socket of another request)";
    return -1;
  }
  if (!s->run) {
    s->run = r; /* its end closes the socket (sock_done) */
    mg_lua_res_add(r, &s->res);
  }
  *rp = r;
  return 0;
}

/* The operation on c cannot finish now: r waits for it. */
static int wait_op(mg_coconn_t *c, mg_cosock_t *s, mg_lreq_t *r, int op, uint64_t ms) {
  c->op = op;
  c->waiter = r;
  if (mg_lua_wait_io(r, &c->lw) < 0) {
    c->waiter = NULL;
    c->op = OP_NONE;
    return MG_API_EPHASE;
  }
  s->pending = 1;
  arm(c, ms);
  return MG_API_EAGAIN;
}

/* A spurious wake: wait again for the same operation. */
static int rewait(mg_cosock_t *s, mg_lreq_t *r, const char **err) {
  mg_coconn_t *c = s->c;
  if (!c || c->op == OP_NONE) {
    s->pending = 0;
    *err = "closed";
    return -1;
  }
  c->waiter = r;
  if (mg_lua_wait_io(r, &c->lw) < 0) {
    c->waiter = NULL;
    return MG_API_EPHASE;
  }
  return MG_API_EAGAIN;
}

static void sock_done(mg_lres_t *res) {
  mg_cosock_t *s = (mg_cosock_t *)((char *)res - offsetof(mg_cosock_t, res));
  s->run = NULL;
  s->dead = 1;
  if (s->c) conn_close(s->c, NULL);
}

mg_cosock_t *mg_tcp_new(void) {
  mg_cosock_t *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  s->connect_ms = s->send_ms = s->read_ms = 60000;
  s->res.done = sock_done;
  return s;
}

void mg_tcp_free(mg_cosock_t *s) {
  if (!s) return;
  if (s->c) conn_close(s->c, NULL);
  mg_lua_res_remove(&s->res);
  free(s->ca);
  free(s);
}

void mg_tcp_settimeouts(mg_cosock_t *s, double connect_ms, double send_ms, double read_ms) {
  /* < 0: unchanged; 0: no timeout; capped at about a year */
  if (connect_ms >= 0) s->connect_ms = connect_ms > 3e10 ? (uint64_t)3e10 : (uint64_t)connect_ms;
  if (send_ms >= 0) s->send_ms = send_ms > 3e10 ? (uint64_t)3e10 : (uint64_t)send_ms;
  if (read_ms >= 0) s->read_ms = read_ms > 3e10 ? (uint64_t)3e10 : (uint64_t)read_ms;
}

static void on_resolved(mg_dnsq_t *q, int status, const struct sockaddr *addr);

static int start_connect(mg_coconn_t *c, const struct sockaddr *addr) {
  c->tp_open = 1;
  c->state = CS_CONNECTING;
  return mg_tp_connect(&c->tp, &c->w->tp, &c->creq, addr, &tp_events, c);
}

static void on_resolved(mg_dnsq_t *q, int status, const struct sockaddr *addr) {
  mg_coconn_t *c = (mg_coconn_t *)((char *)q - offsetof(mg_coconn_t, dnsq));
  c->resolving = 0;
  if (status < 0) {
    const char *err = "could not be resolved";
    if (c->sock) { /* errbuf holds "<host> could not be resolved" since connect */
      size_t n = strlen(c->sock->errbuf);
      snprintf(c->sock->errbuf + n, sizeof(c->sock->errbuf) - n, " (%s)", uv_strerror(status));
      err = c->sock->errbuf;
    }
    conn_close(c, err);
    return;
  }
  int rc = start_connect(c, addr);
  if (rc < 0) conn_close(c, uv_err(rc));
}

static mg_copool_t *pool_find(mg_cosock_w_t *cw, const char *key, size_t klen) {
  for (mg_copool_t *p = cw->pools; p; p = p->next)
    if (p->klen == klen && memcmp(p->key, key, klen) == 0) return p;
  return NULL;
}

int mg_tcp_connect(mg_cosock_t *s, const char *host, size_t hlen, int port, const char *pool,
                   size_t plen, int pool_size, const char *ca, size_t calen, const char **err) {
  *err = NULL;
  mg_lreq_t *r;
  int rc = begin(s, &r, err);
  if (rc) return rc;
  if (s->pending) return rewait(s, r, err);
  if (hlen == 0 || hlen > MG_DNS_NAME_MAX + 2 || port < 1 || port > 65535 || plen >= MG_COSOCK_KEY_MAX) {
    *err = "bad address or pool name";
    return -1;
  }
  if (s->c) conn_close(s->c, NULL); /* connect on a connected socket: the old one goes */
  mg_worker_t *w = mg_current_worker;
  mg_cosock_w_t *cw = wstate(w);
  if (!cw) {
    *err = "no memory";
    return -1;
  }
  if (cw->closed) {
    *err = "closed";
    return -1;
  }
  s->pool_size = pool_size;
  free(s->ca);
  s->ca = NULL;
  if (calen && !(s->ca = strndup(ca, calen))) {
    *err = "no memory";
    return -1;
  }
  char key[MG_COSOCK_KEY_MAX];
  size_t klen;
  if (plen) {
    memcpy(key, pool, plen);
    klen = plen;
  } else {
    klen = (size_t)snprintf(key, sizeof(key), "%.*s:%d", (int)hlen, host, port);
  }
  mg_copool_t *p = pool_find(cw, key, klen);
  if (p && p->head) { /* a pooled one: ready now */
    mg_coconn_t *c = p->head;
    unpool(c);
    mg_timer_stop(&w->timers, &c->timer);
    c->state = CS_OPEN;
    c->sock = s;
    s->c = c;
    s->reused = ++c->reused;
    read_ctl(c);
    return 0;
  }
  mg_coconn_t *c = calloc(1, sizeof(*c));
  if (!c) {
    *err = "no memory";
    return -1;
  }
  c->w = w;
  c->cw = cw;
  c->lw.cancel = op_cancel;
  c->state = CS_RESOLVING;
  memcpy(c->key, key, klen);
  c->klen = klen;
  c->next = cw->conns;
  if (cw->conns) cw->conns->prev = c;
  cw->conns = c;
  c->sock = s;
  s->c = c;
  s->reused = 0;
  snprintf(s->errbuf, sizeof(s->errbuf), "%.*s could not be resolved", (int)hlen, host);
  struct sockaddr_storage ss;
  rc = mg_resolve(w, &c->dnsq, host, hlen, port, on_resolved, &ss);
  if (rc < 0) {
    if (rc == MG_EINVAL) *err = "bad host name";
    else {
      size_t n = strlen(s->errbuf);
      snprintf(s->errbuf + n, sizeof(s->errbuf) - n, " (%s)", uv_strerror(rc));
      *err = s->errbuf;
    }
    conn_close(c, NULL);
    return -1;
  }
  c->resolving = rc == 0;
  if (rc == 1 && (rc = start_connect(c, (const struct sockaddr *)&ss)) < 0) {
    *err = uv_err(rc);
    conn_close(c, NULL);
    return -1;
  }
  rc = wait_op(c, s, r, OP_CONNECT, s->connect_ms);
  if (rc != MG_API_EAGAIN) conn_close(c, NULL);
  return rc;
}

int mg_tcp_result(mg_cosock_t *s, const char **err) {
  *err = NULL;
  mg_lreq_t *r;
  int rc = begin(s, &r, err);
  if (rc) return rc;
  if (s->pending) return rewait(s, r, err);
  *err = s->err;
  return s->rc;
}

int mg_tcp_reused(mg_cosock_t *s) { return s->c ? s->c->reused : s->reused; }

/* FNV-1a over the TLS settings: a pooled TLS connection is reused as such only
 * by a handshake that asks for no more than it was made with. */
static uint64_t tls_hash(int verify, const char *ca, const char *name, size_t nlen) {
  uint64_t h = 1469598103934665603ull;
  h = (h ^ (uint64_t)(verify ? 1 : 0)) * 1099511628211ull;
  for (const char *q = ca ? ca : ""; *q; q++) h = (h ^ (uint8_t)*q) * 1099511628211ull;
  h = (h ^ 0xff) * 1099511628211ull;
  for (size_t i = 0; i < nlen; i++) h = (h ^ (uint8_t)name[i]) * 1099511628211ull;
  return h;
}

/* begin() for the operations on an open connection: 0 with *cp, else what the
 * operation returns (a wait it already had going is waited on again). */
static int begin_open(mg_cosock_t *s, mg_lreq_t **rp, mg_coconn_t **cp, const char **err) {
  int rc = begin(s, rp, err);
  if (rc) return rc;
  if (s->pending) return rewait(s, *rp, err); /* never 0 */
  *cp = s->c;
  if (!*cp || (*cp)->state != CS_OPEN) {
    *err = "closed";
    return -1;
  }
  return 0;
}

int mg_tcp_sslhandshake(mg_cosock_t *s, const char *name, size_t nlen, int verify, const char **err) {
  *err = NULL;
  mg_lreq_t *r;
  mg_coconn_t *c;
  int rc = begin_open(s, &r, &c, err);
  if (rc) return rc;
  if (nlen > MG_DNS_NAME_MAX) {
    *err = "bad server name";
    return -1;
  }
  uint64_t id = tls_hash(verify, s->ca, name, nlen);
  if (c->tls) { /* a pooled TLS connection */
    if (!verify || c->tls_id == id) return 0;
    *err = "pooled connection was made with other TLS settings";
    return -1;
  }
  const mg_tls_client_t *t = mg_tls_client_cached(&c->cw->tls, verify, s->ca, NULL, s->errbuf,
                                                  sizeof(s->errbuf));
  if (!t) {
    *err = s->errbuf;
    MG_WARN(c->w->id, "mg.tcp sslhandshake: %s", s->errbuf);
    return -1;
  }
  char sni[MG_DNS_NAME_MAX + 1];
  if (nlen) memcpy(sni, name, nlen);
  sni[nlen] = '\0';
  mg_tls_client_t one = *t; /* the shared context, this connection's name */
  one.sni = nlen ? sni : NULL;
  SSL *ssl = mg_tls_connect_new(&one, NULL, NULL);
  if (!ssl) {
    *err = "no memory";
    return -1;
  }
  c->tls_id = id;
  c->state = CS_HANDSHAKING;
  rc = wait_op(c, s, r, OP_HANDSHAKE, s->connect_ms);
  mg_tp_tls_start(&c->tp, ssl); /* owns ssl from here; a failure wakes r */
  if (rc != MG_API_EAGAIN) conn_close(c, NULL);
  return rc;
}

int mg_tcp_send(mg_cosock_t *s, const char *p, size_t len, int more, const char **err) {
  *err = NULL;
  mg_lreq_t *r;
  mg_coconn_t *c;
  int rc = begin_open(s, &r, &c, err);
  if (rc) return rc;
  if (len && mg_outq_append(&c->tp.out, p, len) < 0) {
    *err = "no memory";
    conn_close(c, NULL);
    return -1;
  }
  if (more) return 0;
  if ((rc = mg_tp_flush(&c->tp)) < 0) {
    *err = uv_err(rc);
    conn_close(c, NULL);
    return -1;
  }
  if (mg_outq_size(&c->tp.out) == 0) return 0;
  rc = wait_op(c, s, r, OP_SEND, s->send_ms);
  if (rc != MG_API_EAGAIN) conn_close(c, NULL);
  return rc;
}

static void take(mg_coconn_t *c, size_t n, mg_str_t *out) {
  out->p = c->buf + c->off;
  out->len = n;
  c->off += n;
}

int mg_tcp_receive(mg_cosock_t *s, int mode, size_t n, mg_str_t *out, const char **err) {
  *err = NULL;
  out->p = "";
  out->len = 0;
  mg_lreq_t *r;
  mg_coconn_t *c;
  int rc = begin_open(s, &r, &c, err);
  if (rc) return rc;
  if (mode < RX_N || mode > RX_ANY || (mode == RX_N && n > MG_COSOCK_ALL_MAX)) {
    *err = mode == RX_N ? "too large" : "bad pattern";
    return -1;
  }
  if (mode == RX_ANY && n > MG_COSOCK_ALL_MAX) n = MG_COSOCK_ALL_MAX;
  int timed_out = c->timed_out;
  c->timed_out = 0;
  c->want_mode = mode;
  c->want_n = n;
  size_t have = c->len - c->off;
  const char *b = c->buf + c->off;
  switch (mode) {
  case RX_N:
    if (have >= n) {
      take(c, n, out);
      goto done;
    }
    break;
  case RX_LINE: {
    size_t scan = have < MG_COSOCK_LINE_MAX + 1 ? have : MG_COSOCK_LINE_MAX + 1;
    const char *lf = scan ? memchr(b, '\n', scan) : NULL;
    if (lf) {
      size_t k = (size_t)(lf - b);
      take(c, k + 1, out);
      out->len = k && b[k - 1] == '\r' ? k - 1 : k;
      goto done;
    }
    if (have > MG_COSOCK_LINE_MAX) {
      *err = "too large";
      conn_close(c, NULL); /* the stream is no longer in step with its protocol */
      return -1;
    }
    break;
  }
  case RX_ALL:
    if (have > MG_COSOCK_ALL_MAX) {
      *err = "too large";
      conn_close(c, NULL);
      return -1;
    }
    if (c->eof) {
      take(c, have, out);
      goto done;
    }
    break;
  default:
    if (have) {
      take(c, have < n ? have : n, out);
      goto done;
    }
  }
  /* not there (yet): an end, or a wait; an end hands what came as partial */
  if (timed_out || c->rerr || c->eof) {
    *err = timed_out ? "timeout" : c->rerr ? uv_err(c->rerr) : "closed";
    take(c, have, out);
    return -1;
  }
  rc = wait_op(c, s, r, OP_RECV, s->read_ms);
  read_ctl(c);
  return rc;
done:
  read_ctl(c);
  return 0;
}

int mg_tcp_setkeepalive(mg_cosock_t *s, double idle_ms, int pool_size, const char **err) {
  *err = NULL;
  mg_coconn_t *c = s->c;
  if (!c || s->dead) {
    *err = "closed";
    return -1;
  }
  if (s->pending || c->op != OP_NONE) {
    *err = "socket busy";
    return -1;
  }
  if (c->state != CS_OPEN || c->eof || c->rerr || c->len > c->off || mg_outq_size(&c->tp.out)) {
    *err = c->len > c->off ? "unread data in buffer" : "closed";
    conn_close(c, NULL);
    return -1;
  }
  mg_cosock_w_t *cw = c->cw;
  if (c->w->draining || cw->closed) { /* no pool any more: closed, as the pool would */
    conn_close(c, NULL);
    return 0;
  }
  int size = pool_size > 0 ? pool_size : s->pool_size > 0 ? s->pool_size : MG_COSOCK_POOL_SIZE;
  mg_copool_t *p = pool_find(cw, c->key, c->klen);
  if (!p) {
    if (cw->npools >= MG_COSOCK_POOLS_MAX || !(p = calloc(1, sizeof(*p) + c->klen))) {
      conn_close(c, NULL);
      return 0;
    }
    memcpy(p->key, c->key, c->klen);
    p->klen = c->klen;
    p->next = cw->pools;
    cw->pools = p;
    cw->npools++;
  }
  s->reused = c->reused;
  s->c = NULL;
  c->sock = NULL;
  free(c->buf);
  c->buf = NULL;
  c->off = c->len = c->cap = 0;
  c->state = CS_IDLE;
  c->pool = p;
  c->iprev = NULL;
  c->inext = p->head;
  if (p->head) p->head->iprev = c;
  else p->tail = c;
  p->head = c;
  p->n++;
  while (p->n > size) conn_close(p->tail, NULL); /* the longest idle go first */
  if (c->state == CS_IDLE) {
    /* < 0: the default; 0: no idle timeout (OpenResty's meaning) */
    double ms = idle_ms < 0 ? MG_COSOCK_IDLE_MS : idle_ms > 3e10 ? 3e10 : idle_ms;
    arm(c, (uint64_t)ms);
    read_ctl(c);
  }
  return 0;
}

int mg_tcp_close(mg_cosock_t *s) {
  if (!s->c) return -1;
  conn_close(s->c, NULL);
  return 0;
}

/* ---------------- the worker's side ---------------- */

/* The worker drains: idle pooled connections close (setkeepalive then closes
 * too, seeing w->draining). */
static void close_pools(mg_cosock_w_t *cw) {
  for (mg_copool_t *p = cw->pools; p; p = p->next)
    while (p->head) conn_close(p->head, NULL);
}

/* After the loop ended: the pools' and TLS contexts' memory. */
static void free_all(mg_worker_t *w) {
  mg_cosock_w_t *cw = w->cosock;
  while (cw->pools) {
    mg_copool_t *p = cw->pools;
    cw->pools = p->next;
    free(p);
  }
  mg_tls_client_cache_free(&cw->tls);
  free(cw);
  w->cosock = NULL;
  w->socks_end = NULL;
}

static void socks_end(mg_worker_t *w, int stage) {
  mg_cosock_w_t *cw = w->cosock;
  if (!cw) return;
  switch (stage) {
  case MG_SOCKS_DRAIN:
    close_pools(cw);
    break;
  case MG_SOCKS_CLOSE: /* the loop ends now: busy ones too (a waiting timer callback
                          is dropped later), and no connect from here on */
    cw->closed = 1;
    while (cw->conns) conn_close(cw->conns, NULL);
    break;
  default:
    free_all(w);
  }
}
