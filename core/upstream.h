/* Upstream connections and their per-worker keep-alive pools. */
#ifndef MG_UPSTREAM_H
#define MG_UPSTREAM_H

#include <openssl/ssl.h>
#include <uv.h>

#include "buf.h"
#include "config.h"
#include "h1.h"
#include "http.h"
#include "mg.h"
#include "timer.h"
#include "transport.h"
#include "wctx.h"

enum {
  MG_UP_CONNECTING, /* the connect (and the TLS handshake) pending: upstream_connect timer */
  MG_UP_ACTIVE,     /* serving req: upstream_read/write timer (upstream_paused while paused) */
  MG_UP_IDLE,       /* in the pool: keepalive_timeout timer, reading only to notice a close */
  MG_UP_CLOSED,
};

struct mg_pool_s {
  mg_pool_t *next;
  mg_pool_t *hnext;           /* the worker's hash chain (upstream.c pool_for) */
  uint32_t hash;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  uint8_t tls_id[32];         /* part of the key: mg_tls_client_t.id, all zero for plain
                                 HTTP; TLS and plain, or TLS settings that differ,
                                 never share a pool */
  SSL_SESSION *session;       /* TLS: the last session, resumed by the next connection */
  mg_upconn_t *idle, *idle_tail; /* most recently used first */
  int nidle;
  int max_idle;      /* the upstream's `keepalive`: idle connections kept for good */
};

/* What an upstream connection tells the exchange it serves (its owner). Every
 * call may end the exchange: the connection checks u->owner afterwards. */
typedef struct {
  void (*ready)(void *owner);                          /* connected (and TLS done) */
  /* the connection is closed and unlinked first; stale: it came from the pool and
   * not a byte of response came (the server had closed it: a retry is safe) */
  void (*failed)(void *owner, int connect, int timeout, int stale);
  void (*interim)(void *owner, int status);            /* a 103 head is in the owner's rhead */
  int (*head)(void *owner, int status, int has_length, uint64_t length); /* -1: refuse */
  void (*body)(void *owner, const char *p, size_t len);
  void (*end)(void *owner);     /* the response is complete (the connection is released) */
  void (*flush)(void *owner);   /* a read's worth of response was handed over */
  void (*drained)(void *owner); /* the request's bytes drained below the low water mark */
  void (*slow_client)(void *owner); /* timeouts.upstream_paused ran out (the connection is closed) */
  /* after a 101 to an upgrade request the connection is a tunnel: its bytes come
   * through `body` as they are, and this says it ended (closed by the upstream,
   * an error, or timeouts.tunnel without a byte either way; the connection is
   * closed); `why` is for the log, NULL for a plain close */
  void (*tunnel_end)(void *owner, const char *why);
  /* n more body bytes went to the client by splicing (mg_upstream_splice); the
   * end follows through `end` as usual */
  void (*spliced)(void *owner, size_t n);
  /* optional (NULL: not told): why a new connection failed, just before `failed`
   * (kind: MG_TP_FAIL_*, transport.h; why: the cause as text, valid during the call) */
  void (*connect_error)(void *owner, int kind, const char *why);
  /* optional (NULL: not told): the response was refused as malformed (why: the
   * cause as text, valid during the call; also logged), just before `failed` */
  void (*bad_response)(void *owner, const char *why);
} mg_up_events_t;

/* The exchange's side of a link, given to mg_upstream_get. */
typedef struct {
  void *owner;
  const mg_up_events_t *ev;
  mg_upconn_t **slot; /* the owner's pointer to the connection: set on link, cleared on unlink */
  const char *id;     /* the request id, for log lines */
  mg_head_t *rhead;   /* the owner's response head: parsed into */
  int is_head;        /* the request is HEAD: the response has no body */
  int sent_all;       /* the whole request is in (mg_upstream_request_complete later) */
  int upgrade;        /* the request asks to upgrade: a 101 makes the connection a tunnel */
  int may_splice;     /* the response may be spliced to the client (mg_upstream_splice):
                         its first read is kept short, so most of a large body is left to
                         splice */
  uint64_t tunnel_ms; /* timeouts.tunnel: a tunnel with no byte either way that long ends */
  uint64_t connect_ms, read_ms, write_ms, paused_ms;
  /* The client (what the exchange takes as its address) and the address it
   * connected to: the source and destination of the PROXY protocol header an
   * upstream with proxy_protocol gets first on a new connection. Read during
   * mg_upstream_get only; NULL or an unknown family: a header without addresses. */
  const struct sockaddr *pp_src, *pp_dst;
} mg_up_link_t;

struct mg_upconn_s {
  mg_tp_t tp;        /* the byte stream: socket, TLS, output queue (transport.h) */
  mg_timer_t timer;  /* on the worker's timers (timer.h) */
  uv_connect_t connect_req;
  mg_worker_t *w;
  mg_pool_t *pool;
  mg_upconn_t *next_idle, *prev_idle;
  mg_h1_t h1;        /* the response codec (h1.h) */
  void *owner;              /* the exchange served now; NULL when none (pooled, unlinked) */
  const mg_up_events_t *ev;
  mg_upconn_t **slot;
  const char *rid;          /* the owner's request id */
  mg_head_t *rhead;         /* the owner's response head */
  int sent_all;             /* the whole request has been handed over */
  int upgrade;              /* the request asked to upgrade: a 101 is allowed */
  int tunnel;               /* a 101 came: bytes pass as they are, both ways */
  uint64_t tunnel_ms;
  mg_tp_t *splice_to;  /* the client's transport: the body goes there by splicing */
  int may_splice;      /* the link allowed it (the upstream's `splice`, a plain client...) */
  uint64_t spliced;    /* body bytes spliced for the current response (a debug line) */
  const mg_server_t *server;
  int state;
  int reused;        /* came from the pool */
  int named;         /* began with a PROXY protocol header naming one client: never
                        pooled, so it never serves another */
  int got_bytes;     /* some response byte arrived for the current request */
  int paused;        /* reading stopped: the client is slow (upstream_paused timer) */
  uint64_t idle_ms;
  uint64_t idle_since; /* uv_now when it was pooled */
  int max_idle;
  uint64_t read_ms, write_ms; /* upstream_read / upstream_write timeouts */
  uint64_t paused_ms;         /* upstream_paused: the longest a pause may last */
  int held;                   /* a hook of the owner waits (response, body): nothing is parsed */
  int held_eof;               /* the upstream's end came while held */
  char *held_buf;             /* what was read and not parsed while held */
  size_t held_len;
};

/* Gets a connection to `s` for link->owner and links the two (*link->slot, u->owner). Returns 1
 * when a pooled connection is ready now (the caller goes on with it), 0 when a new
 * connection is being made (ev->ready or ev->failed follows), or a negative libuv
 * error (nothing linked). With u->proxy_protocol the connection is always new: its
 * PROXY header (from link->pp_src/pp_dst) goes first, before any TLS byte, and it
 * is closed, not pooled, when released. */
int mg_upstream_get(mg_worker_t *w, const mg_up_link_t *link, const mg_upstream_cfg_t *u,
                    const mg_server_t *s);
/* Unlinks u from its request; pools it when `reusable` (and keepalive > 0), else
 * closes it. A pool may hold more than `keepalive` idle connections for a moment:
 * the surplus, least recently used first, is closed once it has been idle for
 * MG_POOL_TRIM_MS, so a burst of concurrent requests does not end in a wave of
 * closes and reconnects. */
#define MG_POOL_TRIM_MS 1000
void mg_upstream_release(mg_upconn_t *u, int reusable);
void mg_upstream_close(mg_upconn_t *u);
/* Submits queued bytes. On failure the request is told (and may be freed)
 * and a negative code returned: the caller must not touch the request then. */
int mg_upstream_flush(mg_upconn_t *u);
void mg_upstream_pause(mg_upconn_t *u, int paused);
/* A hook of the owner waits on the head or a piece of body it was handed: the
 * connection parses nothing more (what the read brought is kept), stops reading
 * and its read/write timeouts (timeouts.hook judges the hook). Unhold parses what
 * was kept (the owner's callbacks run: it may end the exchange), then reads on. */
void mg_upstream_hold(mg_upconn_t *u);
void mg_upstream_unhold(mg_upconn_t *u);
/* The response's body goes to `to` by splicing (transport.h), from the end of the
 * read that brought its head on, when at least MG_SPLICE_MIN bytes of it are
 * still to come: the exchange says so at the head when nothing needs to see the
 * body (no filter, framed by the same length, both sides plain). */
#define MG_SPLICE_MIN (16 * 1024)
void mg_upstream_splice(mg_upconn_t *u, mg_tp_t *to);
/* A tunnel's client half-closed: the upstream gets a FIN once what is queued is written. */
void mg_upstream_shutdown(mg_upconn_t *u);
/* The owner read the whole request: from now on the upstream is judged on answering. */
void mg_upstream_request_complete(mg_upconn_t *u);
/* The worker's pool timer: closes the surplus idle connections described above. */
void mg_upstream_trim(uv_timer_t *t);
/* Keeps a new TLS session for the connection's pool (an mg_tls_session_fn,
 * registered by main). */
int mg_upstream_tls_session(void *owner, SSL_SESSION *session);
/* Closes every pooled connection (drain/stop). */
void mg_upstream_close_pools(mg_worker_t *w);
/* Frees the (empty) pool records at worker exit. */
void mg_upstream_free_pools(mg_worker_t *w);

#endif
