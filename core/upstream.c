#include "upstream.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>


#include "log.h"
#include "proxyproto.h"

/* Response heads from upstreams get generous but finite limits; trailers count
 * against the same byte limit. */
static const mg_h1_limits_t up_limits = { .head_max = 64 * 1024, .headers_max = 200, .uri_max = 0 };


/* The transport is closed: the connection's memory goes (its timer is a worker
 * timer, stopped at the close: no handle of its own). */
static void tp_closed(void *arg) { free(arg); }

#define UP_OF(t) ((mg_upconn_t *)((char *)(t) - offsetof(mg_upconn_t, timer)))

/* The connection's one timer (timer.h: arming it is a list append, not a heap
 * operation: it is re-armed several times per request). */
static void on_timer(mg_timer_t *t);
static void arm(mg_upconn_t *u, uint64_t ms) { mg_timer_start(&u->w->timers, &u->timer, ms, on_timer); }

static void unpool(mg_upconn_t *u) {
  if (u->state != MG_UP_IDLE) return;
  if (u->prev_idle) u->prev_idle->next_idle = u->next_idle;
  else u->pool->idle = u->next_idle;
  if (u->next_idle) u->next_idle->prev_idle = u->prev_idle;
  else u->pool->idle_tail = u->prev_idle;
  u->next_idle = u->prev_idle = NULL;
  u->pool->nidle--;
}

/* Ends the link with the owner (its pointer to u is cleared). */
static void unlink_owner(mg_upconn_t *u) {
  mg_tp_splice_stop(&u->tp);
  u->splice_to = NULL;
  free(u->held_buf); /* a hook held it: what it kept goes with the owner */
  u->held_buf = NULL;
  u->held_len = 0;
  u->held = u->held_eof = 0;
  if (!u->owner) return;
  *u->slot = NULL;
  u->owner = NULL;
  u->slot = NULL;
  u->rhead = NULL;
}

void mg_upstream_request_complete(mg_upconn_t *u) { u->sent_all = 1; }

void mg_upstream_close(mg_upconn_t *u) {
  if (u->state == MG_UP_CLOSED) return;
  unpool(u);
  unlink_owner(u);
  u->state = MG_UP_CLOSED;
  mg_timer_stop(&u->w->timers, &u->timer);
  mg_tp_close(&u->tp);
}

/* Unlinks from the owner, closes, and reports the failure to it. */
static void fail(mg_upconn_t *u, int connect, int timeout) {
  void *owner = u->owner;
  const mg_up_events_t *ev = u->ev;
  int stale = u->reused && !u->got_bytes;
  mg_upstream_close(u);
  if (owner) ev->failed(owner, connect, timeout, stale);
}

/* timeouts.upstream_paused: the client has not taken the response for that long
 * (reading the upstream stopped when the client's queue filled, and it never
 * drained). Waiting longer would hold the upstream connection, and the origin's
 * resources behind it, for as long as the client likes: the exchange ends both
 * ways. The upstream connection is not reusable (its response is half read). */
static void cut_slow_client(mg_upconn_t *u) {
  void *owner = u->owner;
  const mg_up_events_t *ev = u->ev;
  mg_upstream_close(u); /* the owner logs it: it knows the client */
  ev->slow_client(owner);
}

static void arm_rw(mg_upconn_t *u);

/* Tunnel bytes from the upstream go to the owner as they are. */
static void tunnel_data(mg_upconn_t *u, const char *p, size_t n) {
  if (!u->paused) arm_rw(u); /* any byte either way restarts timeouts.tunnel */
  u->ev->body(u->owner, p, n);
}

/* The tunnel is over: the connection closes, the owner is told. */
static void tunnel_end(mg_upconn_t *u, const char *why) {
  void *owner = u->owner;
  const mg_up_events_t *ev = u->ev;
  mg_upstream_close(u);
  if (owner) ev->tunnel_end(owner, why);
}

void mg_upstream_shutdown(mg_upconn_t *u) {
  if (u->state != MG_UP_ACTIVE) return;
  mg_tp_close_notify(&u->tp); /* TLS: close_notify, then the FIN */
  mg_upstream_flush(u);
  if (u->state != MG_UP_ACTIVE) return;
  mg_tp_shutdown(&u->tp);
}

static void on_timer(mg_timer_t *t) {
  mg_upconn_t *u = UP_OF(t);
  switch (u->state) {
  case MG_UP_CONNECTING:
    fail(u, 1, 1);
    break;
  case MG_UP_ACTIVE:
    if (u->tunnel && !u->paused && u->owner) tunnel_end(u, "idle for timeouts.tunnel");
    else if (u->paused && u->owner) cut_slow_client(u);
    else fail(u, 0, 1);
    break;
  default:
    mg_upstream_close(u);
  }
}

/* While request bytes wait to be written the upstream is judged on writing;
 * once the whole request is sent (or an answer has begun), on answering. While it
 * has all it was given and the client is still sending the body, nothing is the
 * upstream's fault: the client's body timeout judges. Re-armed on every bit of
 * progress. */
static void arm_rw(mg_upconn_t *u) {
  if (u->held) { /* a hook waits: its budget judges, not the upstream's timeouts */
    mg_timer_stop(&u->w->timers, &u->timer);
    return;
  }
  if (mg_outq_size(&u->tp.out)) {
    arm(u, u->write_ms);
  } else if (u->owner && !u->sent_all && !u->got_bytes) {
    mg_timer_stop(&u->w->timers, &u->timer);
  } else {
    arm(u, u->read_ms);
  }
}

/* The owner hears why its response was refused (before `failed`). */
static void bad_response(mg_upconn_t *u, const char *why) {
  if (u->owner && u->ev->bad_response) u->ev->bad_response(u->owner, why);
}

/* The response ended (u->done): pool or close the connection, then finish. */
static void finish(mg_upconn_t *u, int extra_bytes) {
  void *owner = u->owner;
  const mg_up_events_t *ev = u->ev;
  if (extra_bytes && u->state == MG_UP_ACTIVE && mg_h1_keepalive(&u->h1))
    MG_WARN(u->w->id, "req %s: upstream %s: bytes after the end of the response: connection not reused",
            u->rid, u->server->text);
  int reusable = !extra_bytes && mg_h1_keepalive(&u->h1) && u->sent_all && !u->w->draining;
  mg_upstream_release(u, reusable);
  ev->end(owner);
}

/* Response bytes (plaintext) through the codec (h1.h), one event at a time:
 * everything the exchange does with a head or a piece of body (its hooks
 * included) runs here, between two parser runs. Returns 0 to go on, -1 when the
 * exchange ended (finished, failed or closed: u may be pooled or gone). */
static int hold_keep(mg_upconn_t *u, const char *p, size_t n);

static int parse(mg_upconn_t *u, const char *p, size_t n) {
  for (;;) {
    mg_h1_ev_t ev;
    size_t used = mg_h1_parse(&u->h1, p, n, &ev);
    p += used;
    n -= used;
    switch (ev.kind) {
    case MG_H1_NEED:
      return 0;
    case MG_H1_INTERIM:
      /* 103 goes to the client (when it can take it); 100 was answered by
       * moongate; other 1xx are dropped */
      if (u->h1.msg.status == 103) {
        u->ev->interim(u->owner, 103);
        if (u->state == MG_UP_CLOSED || !u->owner) return -1;
      }
      continue;
    case MG_H1_HEAD: {
      int status = u->h1.msg.status;
      if (status == 101) {
        if (!u->upgrade) {
          MG_WARN(u->w->id, "req %s: upstream %s: bad response: 101 Switching Protocols to a request "
                  "that did not ask to upgrade", u->rid, u->server->text);
          bad_response(u, "101 Switching Protocols to a request that did not ask to upgrade");
          fail(u, 0, 0);
          return -1;
        }
        u->tunnel = 1;
        u->read_ms = u->write_ms = u->tunnel_ms;
        arm_rw(u); /* timeouts.tunnel from now on */
      }
      if (u->ev->head(u->owner, status, u->h1.msg.has_length, u->h1.msg.content_length) < 0) {
        if (u->state == MG_UP_CLOSED || !u->owner) return -1;
        fail(u, 0, 0); /* the exchange logged why it refused the response */
        return -1;
      }
      if (u->state == MG_UP_CLOSED || !u->owner) return -1;
      if (!u->splice_to) u->tp.read_cap = 0; /* not splicing: read as much as comes */
      if (u->tunnel) { /* what follows the 101 head is the tunnel's */
        if (n) tunnel_data(u, p, n);
        return u->owner ? 0 : -1;
      }
      if (u->held) return hold_keep(u, p, n); /* the response hook waits */
      continue;
    }
    case MG_H1_BODY:
      u->ev->body(u->owner, ev.p, ev.len);
      if (u->state == MG_UP_CLOSED || !u->owner) return -1;
      if (u->held) return hold_keep(u, p, n); /* the body hook waits on that piece */
      continue;
    case MG_H1_END:
      /* bytes after the response make the connection unusable; with TLS they may
       * also wait, still encrypted, in the read BIO */
      finish(u, n > 0 || mg_tp_input_pending(&u->tp));
      return -1;
    default:
      MG_WARN(u->w->id, "req %s: upstream %s: bad response: %s", u->rid, u->server->text,
              ev.why ? ev.why : "unparsable");
      bad_response(u, ev.why ? ev.why : "unparsable");
      fail(u, 0, 0);
      return -1;
    }
  }
}

/* Bytes read while held wait, in order, for mg_upstream_unhold. 0, or -1 when
 * out of memory (the exchange failed). */
static int hold_keep(mg_upconn_t *u, const char *p, size_t n) {
  if (!n) return 0;
  char *more = realloc(u->held_buf, u->held_len + n);
  if (!more) {
    fail(u, 0, 0);
    return -1;
  }
  memcpy(more + u->held_len, p, n);
  u->held_buf = more;
  u->held_len += n;
  return 0;
}

static void tp_read_end(void *arg);
static void on_eof(mg_upconn_t *u);

void mg_upstream_hold(mg_upconn_t *u) {
  if (!u || u->held || u->state != MG_UP_ACTIVE) return;
  u->held = 1;
  mg_tp_read(&u->tp, 0);
  mg_timer_stop(&u->w->timers, &u->timer);
}

void mg_upstream_unhold(mg_upconn_t *u) {
  if (!u->held) return;
  u->held = 0;
  char *p = u->held_buf;
  size_t n = u->held_len;
  int eof = u->held_eof;
  u->held_buf = NULL;
  u->held_len = 0;
  u->held_eof = 0;
  int rc = parse(u, p ? p : "", n); /* even empty: the codec may have an event left (the end) */
  free(p);
  if (rc < 0 || u->state != MG_UP_ACTIVE || !u->owner) return; /* the exchange ended */
  if (u->held) { /* held again: the rest was kept */
    u->held_eof = eof;
    return;
  }
  if (eof) {
    on_eof(u);
    return;
  }
  if (u->paused) {
    arm(u, u->paused_ms);
  } else {
    mg_tp_read(&u->tp, 1);
    arm_rw(u);
  }
  tp_read_end(u); /* what was parsed goes to the client (or the body is spliced) */
}

static void on_eof(mg_upconn_t *u) {
  mg_h1_ev_t ev;
  if (mg_h1_finish(&u->h1, &ev) == MG_H1_END) { /* a body framed by the close */
    finish(u, 1);
    return;
  }
  fail(u, 0, 0);
}

/* Connected (and, with TLS, handshake done): the request may go. */
static void ready(mg_upconn_t *u) {
  u->state = MG_UP_ACTIVE;
  arm_rw(u);
  u->ev->ready(u->owner);
}

/* ---------------- what the transport says ---------------- */

/* Connected, and the TLS handshake done: or not. */
static void tp_ready(void *arg, int rc, int kind, const char *why) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_CONNECTING) return;
  if (rc == 0) {
    ready(u);
    return;
  }
  if (kind == MG_TP_FAIL_CONNECT)
    MG_DEBUG(u->w->id, "upstream %s: connect: %s", u->server->text, why);
  else if (kind == MG_TP_FAIL_CERT)
    MG_WARN(u->w->id, "upstream %s: TLS certificate not accepted: %s", u->server->text, why);
  else if (kind != MG_TP_FAIL_IO)
    MG_WARN(u->w->id, "upstream %s: TLS handshake failed: %s", u->server->text, why);
  if (u->owner && u->ev->connect_error) u->ev->connect_error(u->owner, kind, why);
  fail(u, 1, 0);
}

/* Response bytes (plaintext). Non-zero stops the read: the connection was
 * pooled (bytes nobody asked for close it) or the exchange ended. */
static int tp_data(void *arg, const char *p, size_t n) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_ACTIVE) {
    mg_upstream_close(u);
    return 1;
  }
  u->got_bytes = 1;
  if (u->held) return hold_keep(u, p, n) < 0; /* the rest of a read (TLS records) */
  if (u->tunnel) {
    tunnel_data(u, p, n);
    return !u->owner;
  }
  if (!u->paused) arm_rw(u); /* paused: the upstream_paused timer runs */
  return parse(u, p, n) < 0;
}

/* A read's worth of response was handed over: the exchange writes it out. */
static void tp_read_end(void *arg) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_ACTIVE || !u->owner || u->held) return;
  if (u->splice_to && !u->tunnel) {
    /* the rest of the body by splicing: the head and the body so far go out with
     * its first bytes (mg_tp_splice sends them when those are there) */
    uint64_t left = mg_h1_body_left(&u->h1);
    if (left < MG_SPLICE_MIN || mg_tp_splice(&u->tp, u->splice_to, left) < 0) {
      u->splice_to = NULL; /* too little left, or it cannot be: the codec goes on */
      u->tp.read_cap = 0;
    }
    if (u->state != MG_UP_ACTIVE || !u->owner) return; /* it ended, all spliced */
  }
  u->ev->flush(u->owner); /* what is queued for the client goes out */
}

/* Spliced body bytes went to the client; all of them: the response is over. */
static void tp_spliced(void *arg, size_t n, uint64_t left) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_ACTIVE || !u->owner) return;
  u->got_bytes = 1;
  u->spliced += n;
  if (!u->paused) arm_rw(u);
  u->ev->spliced(u->owner, n);
  if (u->state != MG_UP_ACTIVE || !u->owner || left) return;
  MG_DEBUG(u->w->id, "req %s: upstream %s: %llu body bytes spliced", u->rid, u->server->text,
           (unsigned long long)u->spliced);
  /* the last splice took exactly the body: what the server sent after it waits in
   * the socket, where a read would have found it with the body's end */
  finish(u, mg_tp_input_waiting(&u->tp));
}

void mg_upstream_splice(mg_upconn_t *u, mg_tp_t *to) {
  if (u->may_splice) u->splice_to = to;
}

static void tp_eof(void *arg) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_ACTIVE || !u->owner) mg_upstream_close(u); /* pooled: the server closed it */
  else if (u->held) u->held_eof = 1; /* after what is held (mg_upstream_unhold) */
  else if (u->tunnel) tunnel_end(u, NULL);
  else on_eof(u);
}

static void tp_error(void *arg, int err, const char *why) {
  mg_upconn_t *u = arg;
  if (u->state == MG_UP_CONNECTING) { /* e.g. no memory for the handshake's records */
    MG_WARN(u->w->id, "upstream %s: TLS handshake failed: %s", u->server->text, why);
    fail(u, 1, 0);
    return;
  }
  if (u->state != MG_UP_ACTIVE || !u->owner) {
    mg_upstream_close(u);
    return;
  }
  if (err == MG_TP_ETLS) MG_WARN(u->w->id, "upstream %s: TLS error: %s", u->server->text, why);
  if (u->tunnel) tunnel_end(u, why);
  else fail(u, 0, 0);
}

static void tp_written(void *arg, int status) {
  mg_upconn_t *u = arg;
  if (u->state != MG_UP_ACTIVE || !u->owner) return;
  if (status < 0) {
    fail(u, 0, 0);
    return;
  }
  if (!u->paused) arm_rw(u);
  if (status == MG_OUTQ_DRAINED) u->ev->drained(u->owner);
}

static const mg_tp_events_t tp_events = {
  .ready = tp_ready, .data = tp_data, .read_end = tp_read_end, .eof = tp_eof, .error = tp_error,
  .written = tp_written, .closed = tp_closed, .spliced = tp_spliced,
};

/* BoringSSL has a session for this connection (TLS 1.3: a ticket that came after
 * the handshake): the pool's next connection resumes it. */
int mg_upstream_tls_session(void *owner, SSL_SESSION *session) {
  mg_upconn_t *u = owner;
  SSL_SESSION_free(u->pool->session);
  u->pool->session = session;
  return 1;
}

/* The pool's key hashed (a lookup per request): the address, seeded with the
 * TLS id's first 8 bytes (the id is itself a digest of the TLS settings). */
static uint32_t pool_hash(const struct sockaddr_storage *addr, socklen_t len, const uint8_t *id) {
  uint64_t seed;
  memcpy(&seed, id, sizeof(seed));
  uint64_t h = mg_hash_bytes(addr, len, seed);
  return (uint32_t)(h ^ (h >> 32));
}

/* Doubles the worker's table of pools (chains rehashed); -1: out of memory (the
 * old table stays, only longer chains). */
static int pool_grow(mg_worker_t *w) {
  uint32_t cap = w->pool_cap ? w->pool_cap * 2 : 64;
  mg_pool_t **tab = calloc(cap, sizeof(*tab));
  if (!tab) return -1;
  for (mg_pool_t *p = w->pools; p; p = p->next) {
    p->hnext = tab[p->hash & (cap - 1)];
    tab[p->hash & (cap - 1)] = p;
  }
  free(w->pool_tab);
  w->pool_tab = tab;
  w->pool_cap = cap;
  return 0;
}

/* The worker's pool for server s under these TLS settings, made at first use:
 * O(1) expected however many addresses the upstreams have. */
static mg_pool_t *pool_for(mg_worker_t *w, const mg_server_t *s, const mg_tls_client_t *tls) {
  static const uint8_t plain[32];
  const uint8_t *id = tls ? tls->id : plain;
  uint32_t h = pool_hash(&s->addr, s->addrlen, id);
  if (w->pool_tab)
    for (mg_pool_t *p = w->pool_tab[h & (w->pool_cap - 1)]; p; p = p->hnext)
      if (p->hash == h && memcmp(p->tls_id, id, 32) == 0 && p->addrlen == s->addrlen &&
          memcmp(&p->addr, &s->addr, s->addrlen) == 0)
        return p;
  if ((w->npools + 1 > w->pool_cap) && pool_grow(w) < 0 && !w->pool_tab) return NULL;
  mg_pool_t *p = calloc(1, sizeof(*p));
  if (!p) return NULL;
  memcpy(p->tls_id, id, 32);
  memcpy(&p->addr, &s->addr, s->addrlen);
  p->addrlen = s->addrlen;
  p->hash = h;
  p->next = w->pools;
  w->pools = p;
  p->hnext = w->pool_tab[h & (w->pool_cap - 1)];
  w->pool_tab[h & (w->pool_cap - 1)] = p;
  w->npools++;
  return p;
}

static void link_owner(mg_upconn_t *u, const mg_up_link_t *l, const mg_upstream_cfg_t *cfg,
                       const mg_server_t *s) {
  u->owner = l->owner;
  u->ev = l->ev;
  u->slot = l->slot;
  *u->slot = u;
  u->rid = l->id;
  u->rhead = l->rhead;
  u->sent_all = l->sent_all;
  u->upgrade = l->upgrade;
  u->tunnel = 0;
  u->tunnel_ms = l->tunnel_ms;
  u->splice_to = NULL;
  u->may_splice = l->may_splice;
  u->spliced = 0;
  u->tp.read_cap = l->may_splice ? MG_SPLICE_MIN : 0;
  u->server = s;
  u->got_bytes = 0;
  u->paused = 0;
  u->read_ms = l->read_ms;
  u->write_ms = l->write_ms;
  u->paused_ms = l->paused_ms;
  u->max_idle = cfg->keepalive;
  u->idle_ms = cfg->keepalive_ms;
  mg_h1_init(&u->h1, MG_H1_RESPONSE, &up_limits, NULL, u->rhead, u);
  mg_h1_expect_no_body(&u->h1, l->is_head);
  mg_head_reset(u->rhead);
}

/* Queues the PROXY protocol header on a connection still connecting and hands it
 * to libuv, which writes it once connected, before anything queued later (the TLS
 * ClientHello, the request). Plaintext: no encoder is attached yet. */
static int send_proxy_header(mg_upconn_t *u, int version, const mg_up_link_t *l) {
  char hdr[MG_PP_WRITE_MAX];
  size_t n = version == 2 ? mg_pp_write_v2(hdr, sizeof(hdr), l->pp_src, l->pp_dst)
                          : mg_pp_write_v1(hdr, sizeof(hdr), l->pp_src, l->pp_dst);
  u->named = 1;
  if (mg_outq_append(&u->tp.out, hdr, n) < 0) return UV_ENOMEM;
  return mg_tp_flush(&u->tp);
}

int mg_upstream_get(mg_worker_t *w, const mg_up_link_t *l, const mg_upstream_cfg_t *cfg, const mg_server_t *s) {
  mg_pool_t *pool = pool_for(w, s, cfg->tls);
  if (!pool) return UV_ENOMEM;
  /* a pooled connection is another client's, or had no header (a config without
   * proxy_protocol for the same server): a PROXY header means a new one */
  if (pool->idle && !cfg->proxy_protocol) {
    mg_upconn_t *u = pool->idle;
    unpool(u);
    u->state = MG_UP_ACTIVE;
    u->reused = 1;
    link_owner(u, l, cfg, s);
    arm_rw(u);
    return 1;
  }
  mg_upconn_t *u = calloc(1, sizeof(*u));
  if (!u) return UV_ENOMEM;
  u->w = w;
  u->pool = pool;
  u->state = MG_UP_CONNECTING;
  int rc = mg_tp_connect(&u->tp, &w->tp, &u->connect_req, (const struct sockaddr *)&s->addr, &tp_events, u);
  if (rc < 0) {
    mg_upstream_close(u);
    return rc;
  }
  if (cfg->proxy_protocol && (rc = send_proxy_header(u, cfg->proxy_protocol, l)) < 0) {
    mg_upstream_close(u);
    return rc;
  }
  /* after the header: from here on what is queued goes out as TLS records */
  if (cfg->tls) {
    SSL *ssl = mg_tls_connect_new(cfg->tls, pool->session, u);
    if (!ssl) {
      mg_upstream_close(u);
      return UV_ENOMEM;
    }
    mg_tp_tls(&u->tp, ssl);
  }
  link_owner(u, l, cfg, s);
  arm(u, l->connect_ms);
  return 0;
}

void mg_upstream_release(mg_upconn_t *u, int reusable) {
  unlink_owner(u);
  mg_pool_t *p = u->pool;
  if (!reusable || u->named || u->state != MG_UP_ACTIVE || u->max_idle <= 0 || u->tp.out.pending ||
      u->tp.out.inflight) {
    mg_upstream_close(u);
    return;
  }
  u->state = MG_UP_IDLE;
  u->next_idle = p->idle;
  u->prev_idle = NULL;
  if (p->idle) p->idle->prev_idle = u;
  else p->idle_tail = u;
  p->idle = u;
  p->nidle++;
  p->max_idle = u->max_idle;
  u->paused = 0;
  u->idle_since = uv_now(&u->w->loop);
  mg_tp_read(&u->tp, 1);
  arm(u, u->idle_ms);
  if (p->nidle > p->max_idle && !uv_is_active((uv_handle_t *)&u->w->pool_timer))
    uv_timer_start(&u->w->pool_timer, mg_upstream_trim, MG_POOL_TRIM_MS, 0);
}

void mg_upstream_trim(uv_timer_t *t) {
  mg_worker_t *w = t->data;
  uint64_t now = uv_now(&w->loop), next = 0;
  for (mg_pool_t *p = w->pools; p; p = p->next) {
    while (p->nidle > p->max_idle) {
      mg_upconn_t *u = p->idle_tail;
      uint64_t due = u->idle_since + MG_POOL_TRIM_MS;
      if (due > now) { /* used within the last second: still needed */
        if (!next || due < next) next = due;
        break;
      }
      mg_upstream_close(u);
    }
  }
  if (next) uv_timer_start(t, mg_upstream_trim, next - now, 0);
}

int mg_upstream_flush(mg_upconn_t *u) {
  if (u->state != MG_UP_ACTIVE) return 0;
  int had = mg_outq_has_output(&u->tp.out);
  int rc = mg_tp_flush(&u->tp);
  if (rc < 0) {
    fail(u, 0, 0);
    return rc;
  }
  /* after the flush: what it wrote synchronously decides between the write and
   * the read timeout (see arm_rw); with nothing to write, no progress was made
   * and a running timeout stays as it is (a stopped one starts once the request
   * is complete) */
  if (!u->paused && (had || !mg_timer_active(&u->timer))) arm_rw(u);
  return 0;
}

void mg_upstream_pause(mg_upconn_t *u, int paused) {
  if (u->state != MG_UP_ACTIVE || u->paused == paused) return;
  u->paused = paused;
  if (u->held) return; /* unhold reads (or not) as this says */
  if (paused) {
    /* the upstream is not judged while it waits for the client, but the wait is
     * bounded (cut_slow_client); it restarts each time the client catches up */
    mg_tp_read(&u->tp, 0);
    arm(u, u->paused_ms);
  } else {
    mg_tp_read(&u->tp, 1);
    arm_rw(u);
  }
}

void mg_upstream_close_pools(mg_worker_t *w) {
  for (mg_pool_t *p = w->pools; p; p = p->next)
    while (p->idle) mg_upstream_close(p->idle);
}

void mg_upstream_free_pools(mg_worker_t *w) {
  mg_pool_t *p = w->pools;
  while (p) {
    mg_pool_t *next = p->next;
    SSL_SESSION_free(p->session);
    free(p);
    p = next;
  }
  w->pools = NULL;
  free(w->pool_tab);
  w->pool_tab = NULL;
  w->pool_cap = w->npools = 0;
}
