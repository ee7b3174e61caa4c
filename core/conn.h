/* A downstream (client) connection: reads and parses requests with llhttp, runs
 * them one at a time (pipelined requests wait their turn), keeps the connection
 * alive between them, and owns every timeout on the client side. */
#ifndef MG_CONN_H
#define MG_CONN_H

#include <openssl/ssl.h>
#include <uv.h>

#include "buf.h"
#include "h1.h"
#include "http.h"
#include "proxy.h"
#include "mg.h"
#include "timer.h"
#include "tls.h"
#include "transport.h"
#include "wctx.h"

/* Connection states. */
enum {
  MG_CS_IDLE,   /* between requests: keep-alive timer, nothing read yet */
  MG_CS_HEAD,   /* reading a request head: client_header timer */
  MG_CS_BODY,   /* reading a request body: client_body timer */
  MG_CS_WAIT,   /* request read: waiting for the response to finish; reading paused */
  MG_CS_TUNNEL, /* a 101 went out: the client's bytes go to the upstream as they are */
  MG_CS_LINGER, /* last response queued: half-closed, discarding input until EOF */
  MG_CS_CLOSED, /* the transport is closing */
};

struct mg_conn_s {
  mg_tp_t tp;             /* the byte stream: socket, TLS, output queue (transport.h) */
  mg_timer_t timer;      /* input side: header, body, keep-alive, linger */
  mg_timer_t send_timer; /* output queued: timeouts.send between writes */
  mg_timer_t req_timer;  /* timeouts.request: from a request's first byte to its last,
                            stopped while reading waits for the upstream */
  uint64_t req_left;     /* ms of timeouts.request left while req_timer is held */
  uint64_t body_since;   /* loop time (ms) the body has been read since (body_timing) */
  uint64_t body_ms;      /* ms spent reading the body before body_since */
  uint64_t body_bytes;   /* body bytes read (with their chunk framing): limits.body_rate */
  mg_worker_t *w;
  mg_conn_t *prev, *next; /* worker's list */
  mg_h1_t *parser;        /* the request codec (h1.h), while a request is read or waits;
                             NULL when idle (mg_worker_t spares) */
  mg_down_t down;         /* what the exchange knows of this connection (proxy.h); it holds
                             close_after, up_blocked and in_parser */
  int state;
  unsigned done_pending : 1; /* the request finished while in_parser */
  unsigned rd_eof : 1;       /* the client half-closed: answer what was read, then close */
  unsigned quick_close : 1;  /* LINGER without lingering: close once the output is written */
  unsigned fresh : 1;        /* the TLS handshake ended in this read (tickets) */
  unsigned listed : 1;       /* in the worker's list (the accept succeeded) */
  unsigned hook_wait : 1;    /* the head phase waits in a hook: nothing more is parsed (what
                                comes is kept in saved) until the exchange resumes it */
  unsigned lead : 1;         /* the codec took bytes before a request began (an empty line's
                                CR): it keeps its state, the connection keeps it */
  unsigned served : 1;       /* a request was answered: idle now means keep-alive */
  unsigned body_timing : 1;  /* the body is being read now: body_since runs */
  unsigned req_held : 1;     /* req_timer stopped with req_left to go (backpressure) */
  unsigned refused : 1;      /* over a connection limit: a 503 (or a close), nothing else */
  unsigned ip_counted : 1;   /* counted in limits.connections_per_ip (connlimit.h) */
  unsigned body_bad : 1;     /* a hook's read of the body met bad framing: the codec is done,
                                the connection ends after the answer */
  unsigned hook_hold : 1;    /* the connect hook waits: nothing is read until it is done */
  unsigned hello_wait : 1;   /* the TLS handshake waits for a tls_hello hook (its run in lua) */
  unsigned hello_ended : 1;  /* that hook's run ended: the handshake's next ask takes its pick */
  char *saved;            /* bytes after the request being answered (pipelined requests),
                             parsed when its turn comes */
  size_t saved_len;
  const char *feed_p;     /* while the head phase runs: the input not parsed yet (after the
                             head), which a hook reading the body takes from (pull_body) */
  size_t feed_len;
  char client[56];        /* "ip:port" or "[ip6]:port"; a PROXY protocol header replaces it */
  char *pp_buf;           /* PROXY protocol: the start of a header split across reads */
  size_t pp_len;
  unsigned pp_wait : 1;   /* the listener expects a PROXY protocol header first */
  char *counted_ip;       /* connections_per_ip counted the peer (a balancer) whose address a
                             PROXY header then replaced in client: what to give back (NUL-
                             terminated); NULL: mg_conn_ip() */
  uint8_t ip_off, ip_len; /* the address alone: mg_conn_ip() */
  mg_req_t *req;          /* the request being read or answered */
  mg_lreq_t *lua;         /* a connect or tls_hello hook that waits (luavm.h); NULL when none */
  struct mg_wgen_s *tls_wg; /* the generation accepted under (its certificates, its tls_hello
                               hooks): ref held during the handshake */
};

/* The client's address without port or brackets (a slice of c->client). */
static inline mg_str_t mg_conn_ip(const mg_conn_t *c) {
  return (mg_str_t){ c->client + c->ip_off, c->ip_len };
}

/* The tls_hello hook bridge (an mg_tls_hello_fn, registered by main). */
int mg_conn_tls_hello(void *owner, const mg_tls_server_t *t, const char *sni);

/* Accepts a connection from `server` into a new conn. */
void mg_conn_accept(mg_listener_t *l);
/* Starts closing (idempotent); memory is freed once every handle is closed. */
void mg_conn_close(mg_conn_t *c);
/* Ends the connection after what is queued has been written (a response cut
 * short mid-body: the client sees the bytes so far, then the close). */
void mg_conn_close_after_flush(mg_conn_t *c);
/* The current request is finished (response queued in full): start the next one,
 * or close. Called by proxy.c. */
void mg_conn_request_done(mg_conn_t *c);
/* Recomputes whether the connection should be reading, and starts/stops. */
void mg_conn_update_reading(mg_conn_t *c);
/* Flushes queued output; closes on a write error. */
void mg_conn_flush(mg_conn_t *c);
/* Drain: close if idle; otherwise close after the current request. */
void mg_conn_drain(mg_conn_t *c);

#endif
