/* mg.http (lhttp.h): one HTTP/1.1 call from Lua, over the upstream client. */
#include "lhttp.h"

#include <stdio.h>
#include <stdlib.h>

#include "api.h"
#include "log.h"
#include "luavm.h"
#include "resolve.h"
#include "tls.h"
#include "upstream.h"
#include "wctx.h"

/* What the waiting Lua asks for: the wait ends when it is there (or the call failed). */
enum {
  WANT_NONE,
  WANT_DONE, /* the whole response (mg_http_result, not streaming) */
  WANT_HEAD, /* the head (mg_http_result, streaming) */
  WANT_DATA, /* body bytes, or the end (mg_http_read) */
};

typedef struct mg_hcall_s {
  mg_lwait_t lw;      /* the wait: cancel means the waiting hook went away */
  mg_lres_t own;      /* in the run's list: `done` means the run ended */
  mg_worker_t *w;
  mg_lreq_t *run;     /* the run that started the call: the only one that may use it */
  mg_lreq_t *waiter;  /* run while it waits on the call, else NULL */
  int want;           /* WANT_*: what ends the wait */
  uint32_t slot, gen;
  char *req;          /* the request's bytes (head and body), kept for a retry */
  size_t req_len;
  char *host, *ca, *sni; /* NUL-terminated copies; ca and sni may be NULL */
  /* req, host, ca and sni live in `tail`, one allocation with the call */
  size_t host_len;
  int port, tls, verify;
  int is_head, idempotent, stream, retried;
  uint64_t max_body;  /* 0: no bound */
  uint64_t deadline;  /* loop time (ms) the whole call must end by */
  int resolving;
  mg_dnsq_t dnsq;
  mg_server_t server; /* the address, for mg_upstream_get (read by upstream.c while linked) */
  mg_upconn_t *upc;   /* linked upstream connection, NULL when none (upstream.c clears it) */
  mg_head_t rhead;    /* the response head */
  mg_timer_t timer;   /* the whole call's timeout */
  int status;         /* 0 until the head came */
  int done;           /* the response is complete */
  int failed;
  char err[200];      /* why it failed */
  char cerr[160];     /* why the last connection failed (connect_error) */
  char *hblock;       /* the head's headers for Lua, "name:value\n" each (names in
                         lower case), made at the first mg_http_result */
  size_t hblock_len;
  char *body;         /* body bytes [boff, blen) not yet handed to Lua */
  size_t blen, bcap, boff;
  uint64_t received;  /* body bytes received in all */
  int paused;         /* stream: reading stopped until Lua catches up */
  char tail[];
} mg_hcall_t;

struct mg_lhttp_s {
  mg_hcall_t **slots; /* open calls by slot; NULL: free */
  uint32_t nslots;
  uint32_t *free_slots;
  uint32_t nfree;
  uint32_t gen;       /* the last generation given */
  mg_tls_client_cache_t tls; /* by (verify, ca, sni): the sni is in the pool key */
};

static struct mg_lhttp_s *state(mg_worker_t *w) {
  if (!w->lhttp && (w->lhttp = calloc(1, sizeof(*w->lhttp)))) w->lhttp_free = mg_lhttp_free;
  return w->lhttp;
}

static mg_hcall_t *lookup(uint32_t slot, uint32_t gen) {
  mg_worker_t *w = mg_current_worker;
  if (!w || !w->lhttp || slot >= w->lhttp->nslots) return NULL;
  mg_hcall_t *c = w->lhttp->slots[slot];
  return c && c->gen == gen ? c : NULL;
}

static int slot_take(struct mg_lhttp_s *s, mg_hcall_t *c) {
  if (!s->nfree) {
    uint32_t n = s->nslots ? s->nslots * 2 : 16;
    mg_hcall_t **slots = realloc(s->slots, n * sizeof(*slots));
    if (!slots) return -1;
    s->slots = slots;
    uint32_t *fr = realloc(s->free_slots, n * sizeof(*fr));
    if (!fr) return -1;
    s->free_slots = fr;
    for (uint32_t i = n; i > s->nslots; i--) {
      slots[i - 1] = NULL;
      fr[s->nfree++] = i - 1;
    }
    s->nslots = n;
  }
  c->slot = s->free_slots[--s->nfree];
  c->gen = ++s->gen;
  s->slots[c->slot] = c;
  return 0;
}

/* ---------------- the call's life ---------------- */

static int ready_for(const mg_hcall_t *c) {
  switch (c->want) {
  case WANT_DONE: return c->done || c->failed;
  case WANT_HEAD: return c->status > 0 || c->failed;
  case WANT_DATA: return c->blen > c->boff || c->done || c->failed;
  default: return 0;
  }
}

/* Wakes the waiting hook when what it waits for is there. */
static void notify(mg_hcall_t *c) {
  if (!c->waiter || !ready_for(c)) return;
  mg_lreq_t *r = c->waiter;
  c->waiter = NULL;
  c->want = WANT_NONE;
  mg_lua_wake(r, &c->lw);
}

/* Stops whatever runs for the call: its timer, a lookup, its connection (closed,
 * never pooled: a response may be half read). */
static void stop_io(mg_hcall_t *c) {
  mg_timer_stop(&c->w->timers, &c->timer);
  if (c->resolving) {
    mg_resolve_cancel(&c->dnsq);
    c->resolving = 0;
  }
  if (c->upc) mg_upstream_close(c->upc); /* clears c->upc */
}

static void call_fail(mg_hcall_t *c, const char *fmt, const char *arg) {
  if (c->failed) return;
  c->failed = 1;
  snprintf(c->err, sizeof(c->err), fmt, arg ? arg : "");
  stop_io(c);
  notify(c);
}

static void call_free(mg_hcall_t *c) {
  stop_io(c);
  mg_lua_res_remove(&c->own);
  struct mg_lhttp_s *s = c->w->lhttp;
  s->slots[c->slot] = NULL;
  s->free_slots[s->nfree++] = c->slot;
  mg_head_dispose(&c->rhead);
  free(c->body);
  free(c->hblock);
  free(c);
}

/* The waiting hook went away (its request ended, timeouts.hook), or the run that
 * owns the call ended: the call is abandoned. */
static void on_cancel_wait(mg_lwait_t *op) {
  mg_hcall_t *c = (mg_hcall_t *)((char *)op - offsetof(mg_hcall_t, lw));
  c->waiter = NULL;
  call_free(c);
}

static void on_run_done(mg_lres_t *res) {
  mg_hcall_t *c = (mg_hcall_t *)((char *)res - offsetof(mg_hcall_t, own));
  c->waiter = NULL;
  call_free(c);
}

static void on_timeout(mg_timer_t *t) {
  mg_hcall_t *c = (mg_hcall_t *)((char *)t - offsetof(mg_hcall_t, timer));
  call_fail(c, "timeout%s", NULL);
}

static uint64_t left_ms(const mg_hcall_t *c) {
  uint64_t now = uv_now(&c->w->loop);
  return c->deadline > now ? c->deadline - now : 1;
}

static const mg_up_events_t events;
static void on_ready(void *owner);

/* A connection to c->server: pooled when one is idle, else a new one. */
static void connect_server(mg_hcall_t *c) {
  mg_upstream_cfg_t cfg = { .name = "mg.http", .keepalive = MG_LHTTP_KEEPALIVE,
                            .keepalive_ms = MG_LHTTP_KEEPALIVE_MS };
  if (c->tls) {
    char err[600];
    if (!(cfg.tls = mg_tls_client_cached(&c->w->lhttp->tls, c->verify, c->ca, c->sni, err, sizeof(err)))) {
      call_fail(c, "tls: %s", err);
      return;
    }
  }
  uint64_t ms = left_ms(c);
  mg_up_link_t link = {
    .owner = c, .ev = &events, .slot = &c->upc, .id = c->run->id, .rhead = &c->rhead,
    .is_head = c->is_head, .sent_all = 1,
    .connect_ms = ms, .read_ms = ms, .write_ms = ms, .paused_ms = ms, .tunnel_ms = ms,
  };
  c->cerr[0] = '\0';
  int rc = mg_upstream_get(c->w, &link, &cfg, &c->server);
  if (rc == 1) on_ready(c);
  else if (rc < 0) call_fail(c, "connect failed: %s", uv_strerror(rc));
}

static void resolved(mg_hcall_t *c, const struct sockaddr *sa) {
  size_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  memcpy(&c->server.addr, sa, len);
  c->server.addrlen = (socklen_t)len;
  c->server.weight = 1;
  snprintf(c->server.text, sizeof(c->server.text), "%.50s:%d", c->host, c->port);
  connect_server(c);
}

static void on_resolved(mg_dnsq_t *q, int status, const struct sockaddr *addr) {
  mg_hcall_t *c = (mg_hcall_t *)((char *)q - offsetof(mg_hcall_t, dnsq));
  c->resolving = 0;
  if (status < 0) {
    char why[300];
    snprintf(why, sizeof(why), "'%.200s': %s", c->host, uv_strerror(status));
    call_fail(c, "cannot resolve %s", why);
    return;
  }
  resolved(c, addr);
}

/* ---------------- what the upstream connection says ---------------- */

static void on_ready(void *owner) {
  mg_hcall_t *c = owner;
  if (mg_outq_append(&c->upc->tp.out, c->req, c->req_len) < 0) {
    call_fail(c, "no memory%s", NULL);
    return;
  }
  mg_upstream_flush(c->upc); /* a failure comes through on_failed */
}

static void on_connect_error(void *owner, int kind, const char *why) {
  mg_hcall_t *c = owner;
  const char *what = kind == MG_TP_FAIL_CONNECT ? "connect failed"
                     : kind == MG_TP_FAIL_CERT  ? "tls: certificate verification failed"
                                                : "tls: handshake failed";
  snprintf(c->cerr, sizeof(c->cerr), "%s: %s", what, why ? why : "?");
}

static void on_bad_response(void *owner, const char *why) {
  mg_hcall_t *c = owner;
  snprintf(c->cerr, sizeof(c->cerr), "bad response: %s", why);
}

static void on_failed(void *owner, int connect, int timeout, int stale) {
  mg_hcall_t *c = owner;
  if (c->failed) { /* it refused the response itself (too large) */
    notify(c);
    return;
  }
  /* a pooled connection the server had closed: not a byte of answer came, so
   * sending again is safe for a method that may be repeated */
  if (stale && !timeout && !c->retried && c->idempotent && !c->status) {
    c->retried = 1;
    connect_server(c);
    return;
  }
  if (timeout) call_fail(c, "timeout%s", NULL);
  else if (connect || c->cerr[0]) call_fail(c, "%s", c->cerr[0] ? c->cerr : "connect failed");
  else if (c->status) call_fail(c, "closed before the end of the response%s", NULL);
  else call_fail(c, "closed before a response (connection closed or reset)%s", NULL);
}

static void on_interim(void *owner, int status) { (void)owner; (void)status; } /* 1xx: skipped */

static void too_large(mg_hcall_t *c) { call_fail(c, "response too large%s", NULL); }

static int on_head(void *owner, int status, int has_length, uint64_t length) {
  mg_hcall_t *c = owner;
  c->status = status;
  if (c->max_body && has_length && length > c->max_body) {
    c->failed = 1; /* on_failed follows (the connection is closed, not pooled) */
    snprintf(c->err, sizeof(c->err), "response too large");
    mg_timer_stop(&c->w->timers, &c->timer);
    return -1;
  }
  notify(c);
  return 0;
}

static int body_room(mg_hcall_t *c, size_t len) {
  if (c->boff && c->boff == c->blen) c->boff = c->blen = 0;
  if (c->blen + len <= c->bcap) return 0;
  if (c->boff > 0) { /* stream: what Lua took goes first */
    memmove(c->body, c->body + c->boff, c->blen - c->boff);
    c->blen -= c->boff;
    c->boff = 0;
    if (c->blen + len <= c->bcap) return 0;
  }
  size_t cap = c->bcap ? c->bcap : 16384;
  while (cap < c->blen + len) cap *= 2;
  char *b = realloc(c->body, cap);
  if (!b) return -1;
  c->body = b;
  c->bcap = cap;
  return 0;
}

static void on_body(void *owner, const char *p, size_t len) {
  mg_hcall_t *c = owner;
  if (c->failed) return;
  c->received += len;
  if (c->max_body && c->received > c->max_body) {
    too_large(c); /* closes the connection: the read stops */
    return;
  }
  if (body_room(c, len) < 0) {
    call_fail(c, "no memory%s", NULL);
    return;
  }
  memcpy(c->body + c->blen, p, len);
  c->blen += len;
}

/* A read's worth of body is in: a streaming reader may go on; too much unread
 * stops the reading until it catches up (mg_http_read). */
static void on_flush(void *owner) {
  mg_hcall_t *c = owner;
  if (c->stream && c->upc && !c->paused && c->blen - c->boff > MG_LHTTP_STREAM_HIGH) {
    c->paused = 1;
    mg_upstream_pause(c->upc, 1);
  }
  notify(c);
}

static void on_end(void *owner) {
  mg_hcall_t *c = owner;
  c->done = 1; /* the connection went back to its pool (or was closed) */
  c->paused = 0;
  mg_timer_stop(&c->w->timers, &c->timer);
  notify(c);
}

static void on_drained(void *owner) { (void)owner; }

static void on_slow_client(void *owner) { /* paused past the call's time: closed */
  call_fail(owner, "timeout%s", NULL);
}

static void on_tunnel_end(void *owner, const char *why) {
  call_fail(owner, "closed%s", NULL);
}

static void on_spliced(void *owner, size_t n) { (void)owner; (void)n; } /* never asked for */

static const mg_up_events_t events = {
  .ready = on_ready, .failed = on_failed, .interim = on_interim, .head = on_head, .body = on_body,
  .end = on_end, .flush = on_flush, .drained = on_drained, .slow_client = on_slow_client,
  .tunnel_end = on_tunnel_end, .spliced = on_spliced, .connect_error = on_connect_error,
  .bad_response = on_bad_response,
};

/* ---------------- the FFI functions (api.h) ---------------- */

/* Copies len bytes to *p as a C string there: the string. */
static char *put_str(char **p, const char *s, size_t len) {
  char *d = *p;
  memcpy(d, s, len);
  d[len] = '\0';
  *p += len + 1;
  return d;
}

/* Waits for `want` unless it is there: 0 (there), MG_API_EAGAIN (the hook waits),
 * MG_API_EPHASE (nothing may wait now). */
static int wait_for(mg_hcall_t *c, int want) {
  c->want = want;
  if (ready_for(c)) {
    c->want = WANT_NONE;
    return 0;
  }
  mg_lreq_t *r = mg_lua_running(c->w);
  if (r != c->run || mg_lua_wait_io(r, &c->lw) < 0) {
    c->want = WANT_NONE;
    return MG_API_EPHASE;
  }
  c->waiter = r;
  return MG_API_EAGAIN;
}

int mg_http_start(const mg_http_opts_t *o, uint32_t *slot, uint32_t *gen) {
  mg_worker_t *w = mg_current_worker;
  mg_lreq_t *r = mg_lua_running(w);
  if (!r || r->io) return MG_API_EPHASE;
  if (!o->host || !o->host_len || o->host_len > MG_DNS_NAME_MAX + 2 || o->port < 1 || o->port > 65535 ||
      !o->head || !o->head_len || (o->body_len && !o->body) || !(o->timeout > 0))
    return MG_API_EINVAL;
  struct mg_lhttp_s *s = state(w);
  if (!s) return MG_API_ENOMEM;
  /* one allocation per call: the call, then its request, host, CA file and SNI */
  size_t calen = o->ca ? strlen(o->ca) : 0, snilen = o->sni ? strlen(o->sni) : 0;
  size_t req_len = o->head_len + o->body_len;
  if (req_len < o->head_len || req_len > SIZE_MAX - sizeof(mg_hcall_t) - o->host_len - calen - snilen - 3)
    return MG_API_ENOMEM;
  mg_hcall_t *c = malloc(sizeof(*c) + req_len + o->host_len + calen + snilen + 3);
  if (!c) return MG_API_ENOMEM;
  memset(c, 0, sizeof(*c));
  if (slot_take(s, c) < 0) {
    free(c);
    return MG_API_ENOMEM;
  }
  c->w = w;
  c->run = r;
  c->lw.cancel = on_cancel_wait;
  c->own.done = on_run_done;
  mg_head_init(&c->rhead);
  c->req = c->tail;
  c->req_len = req_len;
  memcpy(c->req, o->head, o->head_len);
  if (o->body_len) memcpy(c->req + o->head_len, o->body, o->body_len);
  char *p = c->tail + req_len;
  c->host = put_str(&p, o->host, o->host_len);
  c->ca = o->ca ? put_str(&p, o->ca, calen) : NULL;
  c->sni = o->sni ? put_str(&p, o->sni, snilen) : NULL;
  c->host_len = o->host_len;
  c->port = o->port;
  c->tls = o->tls != 0;
  c->verify = o->verify != 0;
  c->is_head = o->is_head != 0;
  c->idempotent = o->idempotent != 0;
  c->stream = o->stream != 0;
  c->max_body = o->max_body > 0 ? (o->max_body >= 1.8e19 ? UINT64_MAX : (uint64_t)o->max_body) : 0;
  uint64_t ms = o->timeout >= 1e7 ? (uint64_t)1e10 : (uint64_t)(o->timeout * 1000.0 + 0.5);
  if (!ms) ms = 1;
  c->deadline = uv_now(&w->loop) + ms;
  mg_lua_res_add(r, &c->own);
  *slot = c->slot;
  *gen = c->gen;
  mg_timer_start(&w->timers, &c->timer, ms, on_timeout);

  struct sockaddr_storage addr;
  int rc = mg_resolve(w, &c->dnsq, c->host, c->host_len, c->port, on_resolved, &addr);
  if (rc == 1) resolved(c, (const struct sockaddr *)&addr);
  else if (rc == 0) c->resolving = 1;
  else if (rc == MG_EINVAL) call_fail(c, "bad host name '%s'", c->host);
  else {
    char why[300];
    snprintf(why, sizeof(why), "'%.200s': %s", c->host, rc == UV_ENOMEM ? "no memory" : uv_strerror(rc));
    call_fail(c, "cannot resolve %s", why);
  }
  return wait_for(c, c->stream ? WANT_HEAD : WANT_DONE);
}

/* The response's headers in one block Lua reads with one copy and splits when it
 * first looks at them: "name:value\n" each, names in lower case (header names are
 * tokens: no ':'; values hold no CR or LF, the codec refused those). */
static int head_block(mg_hcall_t *c) {
  size_t n = 0;
  for (size_t i = 0; i < c->rhead.n; i++) n += c->rhead.headers[i].name.len + c->rhead.headers[i].value.len + 2;
  c->hblock = malloc(n + 1);
  if (!c->hblock) return -1;
  char *p = c->hblock;
  for (size_t i = 0; i < c->rhead.n; i++) {
    const mg_header_t *h = &c->rhead.headers[i];
    for (size_t k = 0; k < h->name.len; k++) {
      char ch = h->name.p[k];
      *p++ = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    *p++ = ':';
    memcpy(p, h->value.p, h->value.len);
    p += h->value.len;
    *p++ = '\n';
  }
  c->hblock_len = n;
  return 0;
}

int mg_http_result(uint32_t slot, uint32_t gen, mg_http_res_t *out) {
  mg_hcall_t *c = lookup(slot, gen);
  if (!c) return MG_API_ENOTFOUND;
  if (mg_lua_running(c->w) != c->run) return MG_API_EPHASE;
  int rc = wait_for(c, c->stream ? WANT_HEAD : WANT_DONE);
  if (rc < 0) return rc;
  memset(out, 0, sizeof(*out));
  if (c->failed) {
    out->err = (mg_str_t){ c->err, strlen(c->err) };
    return 0;
  }
  out->status = c->status;
  if (!c->hblock && c->rhead.finished && head_block(c) < 0) return MG_API_ENOMEM;
  out->headers = (mg_str_t){ c->hblock ? c->hblock : "", c->hblock_len };
  if (!c->stream) out->body = (mg_str_t){ c->body ? c->body : "", c->blen };
  return 0;
}

int mg_http_read(uint32_t slot, uint32_t gen, size_t max, mg_str_t *piece, mg_str_t *err) {
  mg_hcall_t *c = lookup(slot, gen);
  if (!c) return MG_API_ENOTFOUND;
  if (mg_lua_running(c->w) != c->run) return MG_API_EPHASE;
  *piece = (mg_str_t){ "", 0 };
  *err = (mg_str_t){ "", 0 };
  /* reading goes on before the piece is taken: nothing may move the buffer
   * between here and Lua's copy of the piece */
  if (c->paused && c->upc && c->blen - c->boff <= MG_LHTTP_STREAM_LOW + max) {
    c->paused = 0;
    mg_upstream_pause(c->upc, 0);
  }
  int rc = wait_for(c, WANT_DATA);
  if (rc < 0) return rc;
  if (c->blen > c->boff) {
    size_t n = c->blen - c->boff;
    if (max && n > max) n = max;
    *piece = (mg_str_t){ c->body + c->boff, n };
    c->boff += n;
    return 0;
  }
  if (c->failed) *err = (mg_str_t){ c->err, strlen(c->err) };
  return 0;
}

void mg_http_close(uint32_t slot, uint32_t gen) {
  mg_hcall_t *c = lookup(slot, gen);
  /* only its own run: another run cannot hold the wait of the suspended one */
  if (c && !c->waiter && mg_lua_running(c->w) == c->run) call_free(c);
}

/* ---------------- the worker's exit ---------------- */

void mg_lhttp_free(mg_worker_t *w) {
  struct mg_lhttp_s *s = w->lhttp;
  if (!s) return;
  for (uint32_t i = 0; i < s->nslots; i++) /* none should be left: their runs ended */
    if (s->slots[i]) call_free(s->slots[i]);
  mg_tls_client_cache_free(&s->tls);
  free(s->slots);
  free(s->free_slots);
  free(s);
  w->lhttp = NULL;
}
