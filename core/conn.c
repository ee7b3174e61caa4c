#include "conn.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>


#include "connlimit.h"
#include "proxyproto.h"
#include "log.h"
#include "luavm.h"

#define LINGER_MS 2000

static mg_head_t *begin_request(void *owner);
static void head_done(mg_conn_t *c);
static void hook_wait_begin(mg_conn_t *c, const char *data, size_t len);
static void feed_on(mg_conn_t *c, const char *data, size_t len);
static void op_resume(void *arg);
static size_t pull(mg_conn_t *c, const char *data, size_t len);
static void body_bad_end(mg_conn_t *c);
static void conn_start(mg_conn_t *c);
static void connect_waited(void *owner, int rc);
static void hello_waited(void *owner, int rc);

/* ---------------- timers ----------------
 * Two timers (worker timers, see timer.h): `timer` judges the client's input side (header, body, keep-alive
 * idle, linger), `send_timer` runs whenever output is queued and restarts on every
 * completed write (timeouts.send: the client is not reading). */

#define CONN_OF(t, field) ((mg_conn_t *)((char *)(t) - offsetof(mg_conn_t, field)))

/* The error answer to a request cut short; the method, once the codec read it,
 * goes to the log even when the head never completed. */
static void answer_refusal(mg_conn_t *c, int status) {
  if (c->req->method < 0 && c->parser) c->req->method = c->req->down_method = c->parser->msg.method;
  mg_proxy_error(c->req, status, 1);
}

static void on_timer(mg_timer_t *t) {
  mg_conn_t *c = CONN_OF(t, timer);
  switch (c->state) {
  case MG_CS_IDLE:
    if (c->pp_wait)
      MG_INFO(c->w->id, "%s: bad PROXY protocol header: none within %.3g s (connection closed)", c->client,
              (double)(c->tp.ssl ? c->w->gen->timeouts.handshake : c->w->gen->timeouts.client_header) / 1000.0);
    else if (!c->tp.tls_ready)
      MG_INFO(c->w->id, "%s: TLS handshake timeout%s", c->client,
              c->hello_wait ? " (a tls_hello hook waited: cancelled)" : "");
    else MG_DEBUG(c->w->id, "%s: keep-alive timeout", c->client);
    mg_conn_close(c);
    break;
  case MG_CS_HEAD:
  case MG_CS_BODY:
    if (c->hook_wait && c->down.body_pull) { /* a hook reads the body: its read fails, it decides */
      MG_INFO(c->w->id, "%s: client body timeout (a hook reads the body)", c->client);
      mg_proxy_body_failed(c->req, 408, "timeout");
      break;
    }
    MG_INFO(c->w->id, "%s: client %s timeout", c->client, c->state == MG_CS_HEAD ? "header" : "body");
    if (c->req && c->req->rstate == MG_RS_NONE) {
      answer_refusal(c, 408);
    } else {
      mg_conn_close(c);
    }
    break;
  default:
    mg_conn_close(c);
    break;
  }
}

static void on_send_timer(mg_timer_t *t) {
  mg_conn_t *c = CONN_OF(t, send_timer);
  MG_INFO(c->w->id, "%s: send timeout", c->client);
  mg_conn_close(c);
}

static void arm(mg_conn_t *c, uint64_t ms) {
  mg_timer_start(&c->w->timers, &c->timer, ms, on_timer);
}

/* timeouts.request (Envoy's request_timeout): the request must be in, head and
 * body, within it, however the bytes trickle in; client_header and client_body
 * only bound the head and the gaps in the body. */
static void on_req_timer(mg_timer_t *t) {
  mg_conn_t *c = CONN_OF(t, req_timer);
  MG_INFO(c->w->id, "%s: request timeout: not received in full within %.3g s", c->client,
          (double)c->w->gen->timeouts.request / 1000.0);
  if (c->req && c->req->rstate == MG_RS_NONE) answer_refusal(c, 408);
  else mg_conn_close(c);
}

/* A request's first byte: its whole-request clock starts. */
static void request_start(mg_conn_t *c) {
  c->req_held = 0;
  c->body_timing = 0;
  uint64_t ms = c->w->gen->timeouts.request;
  if (ms) mg_timer_start(&c->w->timers, &c->req_timer, ms, on_req_timer);
  else mg_timer_stop(&c->w->timers, &c->req_timer);
}

/* The request is read in full (or the connection is ending). */
static void request_stop(mg_conn_t *c) {
  mg_timer_stop(&c->w->timers, &c->req_timer);
  c->req_held = 0;
  c->body_timing = 0;
}

/* The head is in and a body follows: client_body judges the gaps, and the body's
 * rate is measured from now on (limits.body_rate). */
static void body_start(mg_conn_t *c) {
  arm(c, c->w->gen->timeouts.client_body);
  c->body_since = uv_now(&c->w->loop);
  c->body_ms = 0;
  c->body_bytes = 0;
  c->body_timing = 1;
}

/* Reading the body stops or starts again for moongate's own reasons (the upstream
 * does not take it): that time is not the client's. Neither the request clock nor
 * the body rate counts it. */
/* The request clock (timeouts.request) stops, or goes on with what it had left. */
static void req_clock_hold(mg_conn_t *c, int hold) {
  mg_timers_t *ts = &c->w->timers;
  if (hold) {
    if (mg_timer_active(&c->req_timer)) {
      uint64_t now = uv_now(&c->w->loop);
      c->req_left = c->req_timer.due > now ? c->req_timer.due - now : 1;
      c->req_held = 1;
      mg_timer_stop(ts, &c->req_timer);
    }
  } else if (c->req_held) {
    c->req_held = 0;
    mg_timer_start(ts, &c->req_timer, c->req_left, on_req_timer);
  }
}

static void body_hold(mg_conn_t *c, int hold) {
  uint64_t now = uv_now(&c->w->loop);
  if (hold) {
    if (c->body_timing) c->body_ms += now - c->body_since;
    c->body_timing = 0;
  } else {
    c->body_since = now;
    c->body_timing = 1;
  }
  req_clock_hold(c, hold);
}

/* limits.body_rate: once the body has been read for longer than client_body (its
 * grace: a body's first seconds say little about its rate), its bytes over the
 * time spent reading it must reach the rate. Judged on every read of the body; a
 * client that goes silent instead meets client_body. 1 when the request was
 * answered 408 (or the connection closed). */
static int body_too_slow(mg_conn_t *c) {
  uint64_t rate = c->w->gen->limits.body_rate;
  if (!rate || !c->body_timing) return 0;
  uint64_t ms = c->body_ms + (uv_now(&c->w->loop) - c->body_since);
  /* in doubles: rate (up to 2^40) times ms would overflow 64 bits */
  if (ms <= c->w->gen->timeouts.client_body || (double)c->body_bytes * 1000.0 >= (double)rate * (double)ms)
    return 0;
  MG_INFO(c->w->id, "%s: request body too slow: %llu bytes in %.1f s (%llu B/s, limits.body_rate = %llu B/s)",
          c->client, (unsigned long long)c->body_bytes, (double)ms / 1000.0,
          (unsigned long long)(c->body_bytes * 1000 / ms), (unsigned long long)rate);
  if (c->req && c->req->rstate == MG_RS_NONE) answer_refusal(c, 408);
  else mg_conn_close(c);
  return 1;
}

/* ---------------- reading ---------------- */

static void run_saved(mg_conn_t *c);

/* Reading stops while the upstream is not taking the body, while the client is not
 * taking output, and while more than MG_PIPELINE_MAX bytes of pipelined requests
 * wait. While a request is answered (WAIT) reading goes on, into c->saved: stopping
 * and restarting it for every request would cost epoll_ctl calls each time. */
#define MG_PIPELINE_MAX MG_READ_BUF
void mg_conn_update_reading(mg_conn_t *c) {
  int want;
  switch (c->state) {
  case MG_CS_IDLE:
  case MG_CS_HEAD:
  case MG_CS_BODY:
    /* saved: requests that wait for the output to drain come before new bytes */
    want = !c->down.up_blocked && !mg_outq_full(&c->tp.out) && !c->saved;
    /* a hook waits: what comes meanwhile is kept, up to a bound */
    if (c->hook_wait) want = !c->rd_eof && c->saved_len < MG_PIPELINE_MAX && !mg_outq_full(&c->tp.out);
    break;
  case MG_CS_WAIT:
    want = !c->rd_eof && c->saved_len < MG_PIPELINE_MAX && !mg_outq_full(&c->tp.out);
    break;
  case MG_CS_TUNNEL: /* the client's output filling up pauses the upstream instead */
    want = !c->rd_eof && !c->down.up_blocked;
    break;
  case MG_CS_LINGER:
    want = !c->rd_eof;
    break;
  default:
    want = 0;
  }
  if (c->hook_hold) want = 0;
  if (want && !c->tp.reading) {
    mg_tp_read(&c->tp, 1);
    if (c->state == MG_CS_BODY) {
      arm(c, c->w->gen->timeouts.client_body);
      body_hold(c, 0);
    }
  } else if (!want && c->tp.reading) {
    mg_tp_read(&c->tp, 0);
    /* we stopped reading the body ourselves: the upstream's write timeout or our
     * send timeout judges that, not the client's body, rate or request timeout */
    if (c->state == MG_CS_BODY) {
      mg_timer_stop(&c->w->timers, &c->timer);
      body_hold(c, 1);
    }
  }
}

/* ---------------- closing ---------------- */

/* ---------------- parser state ----------------
 * An idle keep-alive connection holds no parser: it is taken (from the worker's
 * spares) when request bytes arrive and given back once the connection is idle
 * again with nothing pending. */
#ifdef __SANITIZE_ADDRESS__
#define PARSER_SPARES 0
#else
#define PARSER_SPARES 16
#endif

static mg_h1_t *parser_get(mg_conn_t *c) {
  if (c->parser) return c->parser;
  mg_worker_t *w = c->w;
  mg_h1_t *h = w->nspare_parsers > 0 ? w->spare_parsers[--w->nspare_parsers] : malloc(sizeof(*h));
  if (!h) return NULL;
  const mg_limits_t *lim = &w->gen->limits;
  mg_h1_limits_t hl = { .head_max = lim->head_size, .headers_max = lim->headers, .uri_max = lim->uri_size };
  mg_h1_init(h, MG_H1_REQUEST, &hl, begin_request, NULL, c);
  c->parser = h;
  return h;
}

static void parser_put(mg_conn_t *c) {
  mg_h1_t *h = c->parser;
  if (!h) return;
  c->parser = NULL;
  mg_worker_t *w = c->w;
  if (w->nspare_parsers < PARSER_SPARES) w->spare_parsers[w->nspare_parsers++] = h;
  else free(h);
}

/* At the end of a read or of a request: an idle connection gives its parser back
 * (its state is a fresh parser's: between two messages). */
static void parser_idle(mg_conn_t *c) {
  if (c->parser && c->state == MG_CS_IDLE && !c->req && !c->saved && !c->down.in_parser && !c->lead)
    parser_put(c);
}

/* While a TLS connection is in its handshake, BoringSSL's callbacks use the
 * certificates of the generation it was accepted under, and its tls_hello hooks
 * decide (a reload between the accept and the ClientHello changes neither): the
 * connection holds a reference on it until the handshake is over. */
static void tls_gen_release(mg_conn_t *c) {
  if (c->tls_wg) {
    mg_wgen_unref(c->tls_wg);
    c->tls_wg = NULL;
  }
}

/* Gives back the limits.connections_per_ip count taken at accept, once. */
static void release_ip(mg_conn_t *c) {
  if (!c->ip_counted) return;
  c->ip_counted = 0;
  mg_connlimit_release(c->counted_ip ? (mg_str_t){ c->counted_ip, strlen(c->counted_ip) } : mg_conn_ip(c));
}

/* The transport is closed: the connection's memory goes. */
static void tp_closed(void *arg) {
  mg_conn_t *c = arg;
  mg_worker_t *w = c->w;
  if (!c->listed) { /* the accept failed */
    tls_gen_release(c);
    free(c);
    return;
  }
  parser_put(c);
  tls_gen_release(c);
  free(c->saved);
  free(c->pp_buf);
  if (c->prev) c->prev->next = c->next;
  else w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  /* every way a connection ends comes here: timeouts, errors, the connect hook,
   * drains, refusals; a count taken at accept and not given back by
   * mg_conn_close is given back now */
  release_ip(c);
  free(c->counted_ip);
  if (c->refused) w->nrefused--;
  free(c);
  w->conn_closed(w);
}

void mg_conn_close(mg_conn_t *c) {
  if (c->state == MG_CS_CLOSED) return;
  c->state = MG_CS_CLOSED;
  c->down.closed = 1;
  if (c->lua) { /* a connect or tls_hello hook waits: dropped */
    mg_lua_conn_run_done(c->lua);
    c->lua = NULL;
    c->hello_wait = c->hello_ended = 0;
  }
  if (c->req) {
    mg_proxy_abort(c->req);
    mg_req_free(c->req);
    c->req = NULL;
  }
  mg_timer_stop(&c->w->timers, &c->timer);
  mg_timer_stop(&c->w->timers, &c->send_timer);
  request_stop(c);
  /* the count goes back before the socket closes: a client that sees the close
   * and connects again (to this worker or another) must not find it still taken */
  release_ip(c);
  mg_tp_close(&c->tp);
}

/* The FIN went out after the last answer (linger). */
static void tp_shut(void *arg, int status) {
  mg_conn_t *c = arg;
  if (c->state != MG_CS_LINGER) return;
  if (status < 0 || c->rd_eof) mg_conn_close(c);
  else arm(c, LINGER_MS); /* everything is sent: give the client a moment to close */
}

/* Sends what is queued, then half-closes and waits briefly for the client to
 * close, discarding what it still sends: closing at once with unread input would
 * make the kernel send a reset that can destroy the response in flight. When the
 * whole input was read (c->quick_close, set by the caller), nothing can be unread
 * but what a client sends after its own "Connection: close": the connection is
 * closed as soon as the output is written, as nginx does. */
static void linger(mg_conn_t *c) {
  if (c->state == MG_CS_LINGER || c->state == MG_CS_CLOSED) return;
  if (c->req) {
    mg_proxy_abort(c->req);
    mg_req_free(c->req);
    c->req = NULL;
  }
  c->state = MG_CS_LINGER;
  mg_timer_stop(&c->w->timers, &c->timer);
  request_stop(c);
  c->tp.discard = 1; /* what the client still sends is dropped unread */
  mg_tp_close_notify(&c->tp); /* TLS: close_notify after the rest */
  mg_conn_flush(c);
  if (c->state == MG_CS_CLOSED) return;
  if (c->quick_close || c->rd_eof) {
    c->quick_close = 1;
    if (mg_outq_size(&c->tp.out) == 0) mg_conn_close(c); /* else on_out closes */
    else mg_conn_update_reading(c);
    return;
  }
  if (mg_tp_shutdown(&c->tp) < 0) {
    mg_conn_close(c);
    return;
  }
  mg_conn_update_reading(c);
}

void mg_conn_close_after_flush(mg_conn_t *c) {
  c->down.close_after = 1;
  linger(c);
}

/* Everything queued is written: no send timeout, and the keep-alive wait (or a
 * quick close) starts now. Returns 0 when it closed the connection. */
static int output_written(mg_conn_t *c) {
  if (c->state == MG_CS_LINGER && c->quick_close) {
    mg_conn_close(c);
    return 0;
  }
  mg_timer_stop(&c->w->timers, &c->send_timer);
  /* not before the first request: until then the handshake or header timeout runs */
  if (c->state == MG_CS_IDLE && !c->req && c->served) arm(c, c->w->gen->timeouts.keepalive);
  return 1;
}

static void tp_written(void *arg, int status) {
  mg_conn_t *c = arg;
  mg_outq_t *q = &c->tp.out;
  if (c->state == MG_CS_CLOSED) return;
  if (status < 0) {
    MG_DEBUG(c->w->id, "%s: write failed: %s", c->client, uv_strerror(status));
    mg_conn_close(c);
    return;
  }
  if (mg_outq_size(q) == 0) {
    if (!output_written(c)) return;
  } else {
    mg_timer_start(&c->w->timers, &c->send_timer, c->w->gen->timeouts.send, on_send_timer);
  }
  if (status == MG_OUTQ_DRAINED) {
    if (c->state == MG_CS_IDLE && !c->req && c->saved) {
      run_saved(c); /* pipelined requests held back while the output was full */
      return;
    }
    mg_conn_update_reading(c);
    if (c->req) mg_proxy_client_drained(c->req);
  }
}

void mg_conn_flush(mg_conn_t *c) {
  if (c->state == MG_CS_CLOSED || !mg_outq_has_output(&c->tp.out)) return;
  int rc = mg_tp_flush(&c->tp);
  if (rc < 0) {
    MG_DEBUG(c->w->id, "%s: write failed: %s", c->client, uv_strerror(rc));
    mg_conn_close(c);
    return;
  }
  if (mg_outq_size(&c->tp.out) == 0) output_written(c); /* written synchronously */
  else if (!mg_timer_active(&c->send_timer))
    mg_timer_start(&c->w->timers, &c->send_timer, c->w->gen->timeouts.send, on_send_timer);
}

void mg_conn_drain(mg_conn_t *c) {
  c->down.close_after = 1;
  if (c->state != MG_CS_IDLE || c->req || c->saved) return; /* after the current request */
  if (mg_outq_size(&c->tp.out) == 0) mg_conn_close(c);
  else linger(c); /* a response still going out: finish it, then close */
}

/* ---------------- feeding the parser ---------------- */

/* Keeps request bytes that must wait for the request being answered (the rest
 * of a read after a message, or pipelined bytes read while waiting), in order. */
static void save(mg_conn_t *c, const char *p, size_t len) {
  char *more = realloc(c->saved, c->saved_len + len);
  if (!more) {
    mg_conn_close(c);
    return;
  }
  memcpy(more + c->saved_len, p, len);
  c->saved = more;
  c->saved_len += len;
}

/* After a message: 1 when the connection may go on to the next request now. */
static int finish_request(mg_conn_t *c) {
  mg_req_t *r = c->req;
  if (!r->complete && !r->discard_body) c->down.close_after = 1;
  /* a client that half-closed still gets the requests it sent before (saved) */
  if (!r->keepalive || c->w->draining || (c->rd_eof && !c->saved)) c->down.close_after = 1;
  if (c->down.close_after) {
    /* no linger only when the client itself ended the connection: one that
     * expected keep-alive may already be sending its next request */
    if (r->complete && !c->saved && (r->client_close || c->rd_eof)) c->quick_close = 1;
    linger(c);
    return 0;
  }
  if (!r->complete) return 0; /* answered early; keep reading to drop the body */
  mg_req_free(r);
  c->req = NULL;
  c->state = MG_CS_IDLE;
  c->served = 1;
  if (mg_outq_size(&c->tp.out) == 0) arm(c, c->w->gen->timeouts.keepalive);
  else mg_timer_stop(&c->w->timers, &c->timer); /* on_out arms it once the response is out */
  return 1;
}

static void feed(mg_conn_t *c, const char *data, size_t len);

/* One write per batch of input, each way: while parsing, body pieces and answers
 * were only queued. */
static void after_feed(mg_conn_t *c) {
  if (c->state == MG_CS_CLOSED) return;
  if (c->req) mg_proxy_request_flush(c->req);
  if (c->state == MG_CS_CLOSED) return;
  mg_conn_flush(c);
  if (c->state != MG_CS_CLOSED) mg_conn_update_reading(c);
}

void mg_conn_request_done(mg_conn_t *c) {
  if (c->down.in_parser) {
    c->done_pending = 1;
    return;
  }
  if (!finish_request(c)) {
    mg_conn_update_reading(c);
    return;
  }
  run_saved(c);
}

/* Between requests: parses the requests that waited (c->saved), then goes on
 * reading. */
static void run_saved(mg_conn_t *c) {
  if (c->saved) {
    char *s = c->saved;
    size_t n = c->saved_len;
    c->saved = NULL;
    c->saved_len = 0;
    feed(c, s, n);
    free(s);
  }
  after_feed(c);
  if (c->state == MG_CS_CLOSED) return;
  /* half-closed and the requests it sent are all answered (or the last is cut
   * short): nothing more will come */
  if (c->rd_eof && (c->state == MG_CS_IDLE || c->state == MG_CS_HEAD || c->state == MG_CS_BODY) &&
      !c->saved) {
    c->down.close_after = 1;
    c->quick_close = c->state == MG_CS_IDLE && !c->req;
    linger(c);
    return;
  }
  parser_idle(c);
}

/* A request is refused (a bad or too large head, a body over the limit, a hook's
 * failure): answered with `status`, then the connection closes. */
static void refuse_request(mg_conn_t *c, int status, const char *why) {
  if (status == 400 || status == 505)
    MG_INFO(c->w->id, "%s: bad request: %s", c->client, why ? why : mg_http_reason(status));
  else
    MG_INFO(c->w->id, "%s: request refused: %d %s%s%s", c->client, status, mg_http_reason(status),
            why ? ": " : "", why ? why : "");
  if (!c->req) {
    c->req = mg_req_new(c->w, &c->down);
    if (!c->req) {
      mg_conn_close(c);
      return;
    }
  }
  if (c->req->rstate == MG_RS_NONE) answer_refusal(c, status);
  else mg_conn_close(c);
}

/* The head is in: its framing goes into the request, then the exchange's head
 * phase (validation, routing, request hooks, the start of the upstream exchange)
 * runs, here, between two parser runs. 0, or a status to refuse with. */
static int request_head(mg_conn_t *c) {
  mg_req_t *r = c->req;
  const mg_h1_msg_t *m = &c->parser->msg;
  r->method = r->down_method = m->method;
  r->http_minor = m->http_minor;
  r->keepalive = m->keepalive;
  r->client_close = !r->keepalive; /* what the client asked for (keepalive may change below) */
  /* an upgrade: a tunnel if the upstream answers 101; otherwise answered as a
   * plain request, then the connection closes */
  if (m->upgrade) {
    r->keepalive = 0;
    r->upgrade = m->method != HTTP_CONNECT;
  }
  r->body = m->body;
  if (m->body == MG_BODY_CHUNKED && m->http_minor == 0) r->keepalive = 0; /* RFC 9112 6.1 */
  if (m->body == MG_BODY_LENGTH) r->content_length = m->content_length;
  int status = mg_proxy_head(r);
  if (status || c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER) return status;
  head_done(c);
  return 0;
}

/* The head phase is over: the body, if one follows, is read from now on. */
static void head_done(mg_conn_t *c) {
  mg_req_t *r = c->req;
  if (c->state == MG_CS_HEAD &&
      (r->body == MG_BODY_CHUNKED || (r->body == MG_BODY_LENGTH && r->content_length > 0))) {
    c->state = MG_CS_BODY;
    body_start(c);
  }
}

/* A hook of the head phase waits (mg.sleep): the rest of this read is kept, the
 * header timer stops (the head is in), the request clock is held (the wait is
 * not the client's: timeouts.hook bounds it). */
static void hook_wait_begin(mg_conn_t *c, const char *data, size_t len) {
  c->hook_wait = 1;
  if (len) save(c, data, len);
  if (c->state == MG_CS_CLOSED) return;
  /* a hook that waits for the body: the client's gaps are judged (client_body) */
  if (c->down.body_pull && c->state == MG_CS_HEAD) arm(c, c->w->gen->timeouts.client_body);
  else mg_timer_stop(&c->w->timers, &c->timer);
  req_clock_hold(c, 1);
  mg_conn_flush(c); /* a 100 Continue the body's read asked for */
  if (c->state == MG_CS_CLOSED) return;
  mg_conn_update_reading(c);
}

/* The exchange's head phase may go on (down ops `resume`): its answer is taken as
 * if it came from the parse it interrupted, then what waited is parsed. */
static void op_resume(void *arg) {
  mg_conn_t *c = arg;
  if (!c->hook_wait || c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER || !c->req) return;
  c->hook_wait = 0;
  req_clock_hold(c, 0);
  c->done_pending = 0;
  /* what waited is the head phase's input: the hook may read a body from it */
  char *s = c->saved;
  c->saved = NULL;
  c->feed_p = s ? s : "";
  c->feed_len = c->saved_len;
  c->saved_len = 0;
  c->down.in_parser = 1;
  int status = mg_proxy_head_resume(c->req);
  c->down.in_parser = 0;
  const char *rest = c->feed_p;
  size_t n = c->feed_len;
  c->feed_p = NULL;
  c->feed_len = 0;
  if (c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER) goto out;
  if (status == MG_PROXY_WAIT) { /* it waits again, or a respond function after the request hook does */
    hook_wait_begin(c, rest, n);
    goto out;
  }
  c->down.body_pull = 0; /* the head phase is over */
  if (c->body_bad) {
    body_bad_end(c);
    goto out;
  }
  if (status) {
    refuse_request(c, status, NULL);
    goto out;
  }
  head_done(c);
  feed_on(c, rest, n);
  after_feed(c);
  if (c->state != MG_CS_CLOSED) parser_idle(c);
out:
  free(s);
}

/* The request is read in full. */
static void request_end(mg_conn_t *c) {
  mg_req_t *r = c->req;
  r->complete = 1;
  c->state = MG_CS_WAIT;
  mg_timer_stop(&c->w->timers, &c->timer);
  request_stop(c);
  mg_proxy_request_end(r);
}

/* The request was read in full (its END, or its hook read the body to the
 * end): what follows waits for its answer (pipelining), or is parsed now when
 * it was answered already. 1 to parse on from *data. */
static int ended(mg_conn_t *c, const char **data, size_t *len) {
  if (c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER) return 0;
  if (c->req->rstate == MG_RS_DONE) c->done_pending = 1;
  if (!c->done_pending) { /* answered later: what follows waits (pipelining) */
    if (*len > 0) save(c, *data, *len);
    return 0;
  }
  c->done_pending = 0;
  if (!finish_request(c) || *len == 0) return 0;
  /* Answers moongate writes itself come at parser speed: while the client
   * is not taking them, the next pipelined requests wait unparsed (the
   * drain of the output resumes them), so the output stays bounded. */
  if (mg_outq_full(&c->tp.out)) {
    save(c, *data, *len);
    return 0;
  }
  return 1;
}

/* A hook of the head phase reads the body (down.body_pull): the codec goes on
 * over data, handing body pieces to the exchange, up to the body's end (or a
 * fault in it: the read fails). Never past it: the next request waits its turn.
 * Returns the bytes taken. Never ends the connection (the hook runs on it). */
static size_t pull(mg_conn_t *c, const char *data, size_t len) {
  size_t total = 0;
  unsigned in = c->down.in_parser;
  c->down.in_parser = 1; /* answers are queued, written after */
  while (c->down.body_pull && c->state == MG_CS_HEAD) {
    mg_h1_ev_t ev;
    size_t used = mg_h1_parse(c->parser, data, len, &ev);
    data += used;
    len -= used;
    total += used;
    c->req->bytes_in += used;
    c->body_bytes += used;
    if (ev.kind == MG_H1_NEED) break;
    if (ev.kind == MG_H1_BODY) {
      mg_proxy_body(c->req, ev.p, ev.len); /* a failure is the read's */
    } else if (ev.kind == MG_H1_END) {
      request_end(c);
    } else { /* bad framing: the codec parses no further; the hook hears of it */
      MG_INFO(c->w->id, "%s: bad request body: %s", c->client, ev.why ? ev.why : mg_http_reason(ev.status));
      mg_proxy_body_failed(c->req, ev.status, "bad request body");
      c->down.body_pull = 0;
      c->body_bad = 1;
    }
  }
  c->down.in_parser = in;
  return total;
}

/* After the head phase of a request whose body had bad framing (body_bad): it
 * was answered (by its hook, or with the read's status); nothing more is
 * parsed, the answer goes out, then the connection ends. */
static void body_bad_end(mg_conn_t *c) {
  c->down.in_parser = 0;
  c->down.close_after = 1;
  if (c->req && c->req->rstate == MG_RS_DONE) finish_request(c); /* lingers */
  else mg_conn_close(c);
}

/* down ops `pull_body`: from the input the head phase has not parsed yet. */
static void op_pull_body(void *arg) {
  mg_conn_t *c = arg;
  if (c->state != MG_CS_HEAD || !c->parser || !c->feed_p) return;
  size_t used = pull(c, c->feed_p, c->feed_len);
  c->feed_p += used;
  c->feed_len -= used;
}

/* Runs the codec over data and acts on each event: heads, body pieces, ends,
 * errors. Everything the exchange does runs here, between two parser runs.
 * Answers given meanwhile are written once, after the read (in_parser), and a
 * request finished meanwhile is completed here (done_pending). `data` may be
 * c->saved's old buffer: it stays valid. */
static void feed(mg_conn_t *c, const char *data, size_t len) {
  c->done_pending = 0;
  feed_on(c, data, len);
}

/* feed() without forgetting a request finished before it (op_resume). */
static void feed_on(mg_conn_t *c, const char *data, size_t len) {
  if (!parser_get(c)) {
    mg_conn_close(c);
    return;
  }
  /* the head phase read the whole request (a hook's read_body): it ended */
  if (c->state == MG_CS_WAIT && c->req && !ended(c, &data, &len)) return;
  while (c->state != MG_CS_CLOSED && c->state != MG_CS_LINGER) {
    mg_h1_ev_t ev;
    c->down.in_parser = 1;
    size_t used = mg_h1_parse(c->parser, data, len, &ev);
    data += used;
    len -= used;
    if (c->req) c->req->bytes_in += used;
    else if (used) c->lead = 1; /* the empty lines a request may follow: the parser is inside one */
    int status = 0;
    switch (ev.kind) {
    case MG_H1_NEED:
      c->down.in_parser = 0;
      if (c->done_pending) finish_request(c); /* answered early while the body is read */
      return;
    case MG_H1_HEAD:
      c->feed_p = data; /* a hook may read the body from it (pull_body) */
      c->feed_len = len;
      status = request_head(c);
      data = c->feed_p;
      len = c->feed_len;
      c->feed_p = NULL;
      c->feed_len = 0;
      if (status == MG_PROXY_WAIT) { /* a hook waits: parsing stops here until it is done */
        c->down.in_parser = 0;
        hook_wait_begin(c, data, len);
        return;
      }
      c->down.body_pull = 0; /* the head phase is over */
      if (c->body_bad && c->state != MG_CS_CLOSED && c->state != MG_CS_LINGER) {
        body_bad_end(c);
        return;
      }
      if (!status && c->state == MG_CS_WAIT) { /* its hook read the whole body */
        c->down.in_parser = 0;
        if (!ended(c, &data, &len)) return;
        continue;
      }
      break;
    case MG_H1_BODY:
      status = mg_proxy_body(c->req, ev.p, ev.len);
      break;
    case MG_H1_END:
      request_end(c);
      c->down.in_parser = 0;
      if (!ended(c, &data, &len)) return;
      continue;
    case MG_H1_UPGRADE: /* after an upgrade request nothing is HTTP: no more requests */
      c->down.in_parser = 0;
      c->down.close_after = 1;
      linger(c);
      return;
    default:
      c->down.in_parser = 0;
      refuse_request(c, ev.status, ev.why);
      return;
    }
    c->down.in_parser = 0;
    if (c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER) return;
    if (status) {
      refuse_request(c, status, NULL);
      return;
    }
  }
}

static void on_eof(mg_conn_t *c) {
  /* a balancer's health check may connect and close without a byte: only a
   * header cut short is a fault worth a line */
  if (c->pp_wait && c->pp_len)
    MG_INFO(c->w->id, "%s: bad PROXY protocol header: the connection closed inside it (%zu bytes)", c->client,
            c->pp_len);
  /* a client that half-closes after its request, or between requests, still
   * gets what it asked for and what is queued */
  if (c->state == MG_CS_WAIT) {
    if (c->req && c->req->hook_wait) { /* a hook of its response waits: gone, as below */
      MG_INFO(c->w->id, "%s: the client closed while a hook of its request waited: cancelled", c->client);
      mg_conn_close(c);
      return;
    }
    c->rd_eof = 1;
    return;
  }
  if (c->hello_wait) { /* its handshake waits for a tls_hello hook: dropped (mg_conn_close) */
    MG_INFO(c->w->id, "%s: the client closed while a tls_hello hook waited: cancelled", c->client);
    mg_conn_close(c);
    return;
  }
  /* a hook waits for this request: a client that ends its side now has gone
   * (nginx's 499, without proxy_ignore_client_abort): the hook is dropped */
  if (c->hook_wait) {
    MG_INFO(c->w->id, "%s: the client closed while a hook of its request waited: cancelled", c->client);
    mg_conn_close(c);
    return;
  }
  if (c->state == MG_CS_TUNNEL) { /* the upstream gets the FIN; its close ends the tunnel */
    c->rd_eof = 1;
    mg_proxy_tunnel_eof(c->req);
    return;
  }
  if ((c->state == MG_CS_IDLE || c->state == MG_CS_LINGER) && !c->req && mg_outq_size(&c->tp.out)) {
    c->rd_eof = 1;
    if (c->state == MG_CS_LINGER) c->quick_close = 1;
    else linger(c);
    return;
  }
  mg_conn_close(c);
}

/* Request bytes (plaintext), in whatever state the connection is. */
static void input(mg_conn_t *c, const char *p, size_t n) {
  if (c->state == MG_CS_LINGER || c->state == MG_CS_CLOSED) return;
  if (c->state == MG_CS_TUNNEL) {
    mg_proxy_tunnel_in(c->req, p, n);
    return;
  }
  /* pipelined: kept until the current request is done, or behind the requests
   * held back while the output is full (TLS hands over the rest of a read record
   * by record, after feed() stopped: those must not jump the queue) */
  if (c->down.body_pull && c->hook_wait && !c->saved && c->state == MG_CS_HEAD) {
    /* a hook waits for the body: its bytes are parsed now, what follows is kept */
    arm(c, c->w->gen->timeouts.client_body);
    size_t used = pull(c, p, n);
    if (used < n && c->state != MG_CS_CLOSED && c->state != MG_CS_LINGER) save(c, p + used, n - used);
    return;
  }
  if (c->state == MG_CS_WAIT || c->saved || c->hook_wait) {
    save(c, p, n);
    return;
  }
  if (c->state == MG_CS_BODY) {
    arm(c, c->w->gen->timeouts.client_body);
    c->body_bytes += n;
    if (body_too_slow(c)) return;
  }
  feed(c, p, n);
}

/* ---------------- what the transport says ---------------- */

/* Plaintext read: stops once the connection is ending. */
static int tp_data(void *arg, const char *p, size_t n) {
  mg_conn_t *c = arg;
  input(c, p, n);
  return c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER;
}

/* A read was delivered: one write per batch of input, each way; TLS 1.3
 * tickets. */
static void tp_read_end(void *arg) {
  mg_conn_t *c = arg;
  /* TLS 1.3: BoringSSL keeps the session tickets until our first write. When no
   * answer is on its way (the request is not all here), send them now: the
   * client then has its tickets, and the ACK of its Finished rides on them
   * instead of being delayed, which would hold a Nagle client's request. A
   * zero-byte write only flushes them. */
  if (c->fresh && (c->state == MG_CS_IDLE || c->state == MG_CS_HEAD || c->state == MG_CS_BODY) &&
      mg_outq_size(&c->tp.out) == 0)
    mg_tp_release_tickets(&c->tp);
  c->fresh = 0;
  after_feed(c);
  if (c->state != MG_CS_CLOSED) parser_idle(c);
}

static void tp_eof(void *arg) { on_eof(arg); }

static void tp_error(void *arg, int err, const char *why) {
  mg_conn_t *c = arg;
  if (err == MG_TP_ETLS) MG_INFO(c->w->id, "%s: TLS error: %s", c->client, why);
  else MG_DEBUG(c->w->id, "%s: read: %s", c->client, why);
  mg_conn_close(c);
}

/* The TLS handshake ended. */
static void tp_ready(void *arg, int rc, int kind, const char *why) {
  mg_conn_t *c = arg;
  if (rc == 0) {
    c->fresh = 1;
    tls_gen_release(c);
    arm(c, c->w->gen->timeouts.client_header); /* for the first request */
    return;
  }
  MG_INFO(c->w->id, "%s: TLS handshake failed: %s", c->client, why);
  if (kind == MG_TP_FAIL_PLAIN_HTTP) { /* an http:// URL for an https port: say so, in plain text */
    static const char head[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 42\r\nConnection: close\r\n";
    static const char body[] = "\r\nplain HTTP request sent to an HTTPS port\r\n";
    const char *date;
    size_t dlen = mg_http_date_line(&c->w->date, &date);
    mg_tp_tls_off(&c->tp);
    mg_outq_append(&c->tp.out, head, sizeof(head) - 1);
    mg_outq_append(&c->tp.out, date, dlen);
    mg_outq_append(&c->tp.out, body, sizeof(body) - 1);
    c->down.close_after = 1;
    linger(c); /* the client may have more unread bytes: a real linger */
    return;
  }
  c->quick_close = 1;
  linger(c); /* sends the alert, then closes */
}

/* A listener with proxy_protocol: the connection starts with a PROXY protocol
 * header (v1 or v2) from a trusted proxy, which gives the client's address;
 * what follows it is the client's own bytes (TLS or HTTP). The start of a header
 * split across reads is kept in c->pp_buf. Returns 1 once the header is taken
 * (*data, *n: the rest of this read, after the header), 0 when more is needed or
 * the connection was closed. */
static int proxy_header(void *arg, const char **data, size_t *n) {
  mg_conn_t *c = arg;
  const char *p = *data;
  size_t len = *n, before = c->pp_len; /* header bytes from earlier reads */
  if (c->pp_buf) {
    size_t room = MG_PP_V2_FIXED + MG_PP_V2_LEN_MAX - c->pp_len;
    size_t take = len < room ? len : room;
    memcpy(c->pp_buf + c->pp_len, p, take);
    c->pp_len += take;
    p = c->pp_buf;
    len = c->pp_len;
  }
  mg_pp_addr_t a;
  char why[96];
  int used = mg_pp_parse(p, len, &a, why, sizeof(why));
  if (used < 0) {
    MG_INFO(c->w->id, "%s: bad PROXY protocol header: %s (connection closed)", c->client, why);
    mg_conn_close(c);
    return 0;
  }
  if (used == 0) { /* a valid start: never as long as the longest header */
    if (!c->pp_buf) {
      c->pp_buf = malloc(MG_PP_V2_FIXED + MG_PP_V2_LEN_MAX);
      if (!c->pp_buf) {
        mg_conn_close(c);
        return 0;
      }
      memcpy(c->pp_buf, p, len);
      c->pp_len = len;
    }
    return 0;
  }
  if (!a.local) {
    char text[MG_PP_CLIENT_MAX];
    mg_str_t ip;
    size_t tl = mg_pp_format_client(&a, text, sizeof(text), &ip);
    if (tl > 0 && tl < sizeof(c->client)) {
      MG_DEBUG(c->w->id, "%s: PROXY protocol: client %s", c->client, text);
      /* connections_per_ip counted the balancer, not this client: the close gives
       * the balancer's count back */
      if (c->ip_counted && !c->counted_ip) {
        mg_str_t peer = mg_conn_ip(c);
        c->counted_ip = malloc(peer.len + 1);
        if (!c->counted_ip) {
          mg_connlimit_release(peer); /* uncounted from now on, as at accept without memory */
          c->ip_counted = 0;
        } else {
          memcpy(c->counted_ip, peer.p, peer.len);
          c->counted_ip[peer.len] = '\0';
        }
      }
      memcpy(c->client, text, tl + 1);
      c->ip_off = (uint8_t)(ip.p - text);
      c->ip_len = (uint8_t)ip.len;
      c->down.ip = mg_conn_ip(c);
      /* what a PROXY header to an upstream passes on: this one's two ends */
      size_t alen = a.family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
      memcpy(&c->down.peer, &a.src, alen);
      memcpy(&c->down.local, &a.dst, alen);
    }
  }
  c->pp_wait = 0;
  free(c->pp_buf);
  c->pp_buf = NULL;
  c->pp_len = 0;
  /* the header's last bytes came with this read; what follows them is the client's */
  size_t from_this = (size_t)used - before;
  *data += from_this;
  *n -= from_this;
  return 1;
}

/* ---------------- the codec's one callback ---------------- */

/* A request begins (its first byte): its object, timers and the head the codec
 * fills. Runs inside the parser, so it does no more than that. */
static mg_head_t *begin_request(void *owner) {
  mg_conn_t *c = owner;
  if (c->state == MG_CS_CLOSED || c->state == MG_CS_LINGER) return NULL;
  if (!c->req) {
    c->req = mg_req_new(c->w, &c->down);
    if (!c->req) return NULL;
  }
  c->state = MG_CS_HEAD;
  c->lead = 0;
  arm(c, c->w->gen->timeouts.client_header);
  request_start(c);
  return &c->req->head;
}

/* ---------------- accept ---------------- */

/* BoringSSL's certificate choice, through tls.c: the tls_hello hooks, when any.
 * A hook that waits pauses the handshake (MG_TLS_HELLO_WAIT): its run is kept in
 * c->lua, the socket is still read (a client that leaves cancels it: on_eof),
 * and once the run ended (hello_waited) the transport steps the handshake
 * again, which asks here again: then the run's answer is the pick. */
int mg_conn_tls_hello(void *owner, const mg_tls_server_t *t, const char *sni) {
  mg_conn_t *c = owner;
  if (c && c->hello_wait) { /* the second ask, after the wait */
    if (!c->hello_ended) return MG_TLS_HELLO_WAIT; /* (the transport steps only after it) */
    int pick = mg_lua_tls_hello_pick(c->lua, t, sni);
    mg_lua_conn_run_done(c->lua);
    c->lua = NULL;
    c->hello_wait = c->hello_ended = 0;
    return pick;
  }
  /* the hooks of the generation the connection was accepted under: they speak of
   * its certificates (t), and a reload before the hello must not skip them (a
   * hook that refuses some names would be bypassed) */
  mg_wgen_t *wg = c ? c->tls_wg : NULL;
  if (!wg || !((wg->gen->hooks >> MG_HOOK_TLS_HELLO) & 1u)) return -1;
  mg_lreq_t *lr = mg_lua_conn_run(wg, c->client, c, hello_waited);
  if (!lr) return -2;
  int pick = mg_lua_tls_hello(lr, t, sni, c->down.listener);
  if (pick == MG_TLS_HELLO_WAIT) {
    c->lua = lr;
    c->hello_wait = 1;
    return pick;
  }
  mg_lua_conn_run_done(lr);
  return pick;
}

/* A tls_hello hook that waited may go on, or ended (its answer, or its failure
 * which refuses, is taken when the handshake asks again), or was dropped
 * (timeouts.hook: the connection closes; luavm logged it with the hook's name).
 * A timer callback: the transport is in none of its own. */
static void hello_waited(void *owner, int rc) {
  mg_conn_t *c = owner;
  if (rc == 0) rc = mg_lua_tls_hello_resume(c->lua);
  if (rc == MG_LUA_WAIT) return;
  if (rc == MG_LUA_TIMEOUT) {
    MG_WARN(c->w->id, "%s: tls_hello hook took longer than timeouts.hook: connection closed", c->client);
    mg_conn_close(c);
    return;
  }
  c->hello_ended = 1;
  mg_tp_tls_resume(&c->tp);
  if (c->hello_wait && c->state != MG_CS_CLOSED) { /* not asked again: cannot be, but never left behind */
    mg_lua_conn_run_done(c->lua);
    c->lua = NULL;
    c->hello_wait = c->hello_ended = 0;
    mg_conn_close(c);
  }
}

/* A connection over a limit gets this (plain listeners; TLS ones are closed: no
 * handshake is spent on a connection that is refused anyway). No request was read,
 * so there is no request id to give. */
#define REFUSAL_BODY "503 Service Unavailable\ntoo many connections\n"
_Static_assert(sizeof(REFUSAL_BODY) - 1 == 45, "Content-Length below");
static const char refusal[] =
  "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 45\r\n"
  "Retry-After: 1\r\nConnection: close\r\n";
static const char refusal_body[] = "\r\n" REFUSAL_BODY;

/* At most one line a second per worker, however many are refused: a flood of
 * connections must not become a flood of log lines. */
static void log_refusal(mg_conn_t *c, const char *limit, uint64_t max, const char *whose) {
  mg_worker_t *w = c->w;
  uint64_t now = uv_now(&w->loop);
  if (w->refused_logged && now - w->refused_logged < 1000) {
    w->refused_quiet++;
    return;
  }
  if (w->refused_quiet)
    MG_WARN(w->id, "%s: connection refused: %s = %llu reached %s (and %llu more refused since the last such line)",
            c->client, limit, (unsigned long long)max, whose, (unsigned long long)w->refused_quiet);
  else
    MG_WARN(w->id, "%s: connection refused: %s = %llu reached %s", c->client, limit,
            (unsigned long long)max, whose);
  w->refused_logged = now;
  w->refused_quiet = 0;
}

/* limits.connections (this worker's open connections, refused ones aside) and
 * limits.connections_per_ip (every worker's, by client address). Returns 1 when
 * the new connection c (already counted in w->nconns) is refused: it is then
 * answered 503 and closed, or closed (TLS). */
static int over_limit(mg_conn_t *c) {
  mg_worker_t *w = c->w;
  const mg_limits_t *lim = &w->gen->limits;
  if (lim->connections && (uint64_t)(w->nconns - w->nrefused - 1) >= lim->connections) {
    log_refusal(c, "limits.connections", lim->connections, "on this worker");
  } else if (lim->connections_per_ip) {
    int rc = mg_connlimit_acquire(mg_conn_ip(c), lim->connections_per_ip);
    if (rc != 0) {
      c->ip_counted = rc == 1; /* out of memory: let it in, uncounted */
      return 0;
    }
    char whose[64];
    snprintf(whose, sizeof(whose), "for %.*s", (int)c->ip_len, c->client + c->ip_off);
    log_refusal(c, "limits.connections_per_ip", lim->connections_per_ip, whose);
  } else {
    return 0;
  }
  c->refused = 1;
  w->nrefused++;
  if (c->tp.ssl) {
    mg_conn_close(c);
    return 1;
  }
  const char *date;
  size_t dlen = mg_http_date_line(&w->date, &date);
  mg_outq_append(&c->tp.out, refusal, sizeof(refusal) - 1);
  mg_outq_append(&c->tp.out, date, dlen);
  mg_outq_append(&c->tp.out, refusal_body, sizeof(refusal_body) - 1);
  c->down.close_after = 1;
  linger(c); /* the client may be sending its request: read and drop it, briefly */
  return 1;
}

/* The exchange acts on the connection through these (proxy.h mg_down_ops_t). */
static void op_flush(void *c) { mg_conn_flush(c); }
static void op_done(void *c) { mg_conn_request_done(c); }
static void op_close(void *c) { mg_conn_close(c); }
static void op_close_after_flush(void *c) { mg_conn_close_after_flush(c); }
static void op_reading(void *c) { mg_conn_update_reading(c); }
/* A 101 went out: the connection is a tunnel. Bytes the client sent after its
 * request (kept while it waited) are the tunnel's first, and a half-close that
 * came while it waited is the tunnel's too: the upstream gets its FIN after
 * them, as it would have after the 101. */
static void op_tunnel(void *arg) {
  mg_conn_t *c = arg;
  c->state = MG_CS_TUNNEL;
  mg_timer_stop(&c->w->timers, &c->timer);
  request_stop(c);
  if (c->saved) {
    mg_proxy_tunnel_in(c->req, c->saved, c->saved_len);
    free(c->saved);
    c->saved = NULL;
    c->saved_len = 0;
  }
  if (c->rd_eof) {
    mg_proxy_tunnel_eof(c->req); /* may fail the upstream and close c */
    if (c->state == MG_CS_CLOSED) return;
  }
  mg_conn_update_reading(c);
}
static void op_local_addr(void *arg) {
  mg_conn_t *c = arg;
  struct sockaddr_storage ss;
  if (mg_tp_local(&c->tp, &ss) < 0 || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
    c->down.local.sa.sa_family = AF_UNSPEC;
  else
    memcpy(&c->down.local, &ss, ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
}
static const mg_down_ops_t down_ops = {
  .flush = op_flush, .done = op_done, .close = op_close,
  .close_after_flush = op_close_after_flush, .reading = op_reading, .tunnel = op_tunnel,
  .local_addr = op_local_addr, .resume = op_resume, .pull_body = op_pull_body,
};

static const mg_tp_events_t tp_events = {
  .ready = tp_ready, .preamble = proxy_header, .data = tp_data, .read_end = tp_read_end, .eof = tp_eof,
  .error = tp_error, .written = tp_written, .shut = tp_shut, .closed = tp_closed,
};

void mg_conn_accept(mg_listener_t *l) {
  mg_worker_t *w = l->w;
  mg_conn_t *c = calloc(1, sizeof(*c));
  if (!c) return;
  c->w = w;
  c->down.listener = l->name;
  c->down.redirect_https = l->cfg->redirect_https;
  c->down.hsts = l->hsts;
  if (mg_tp_accept(&c->tp, &w->tp, (uv_stream_t *)&l->tcp, &tp_events, c) < 0) {
    mg_tp_close(&c->tp);
    return;
  }
  c->down.conn = c;
  c->down.tp = &c->tp;
  c->down.ops = &down_ops;
  c->down.out = &c->tp.out;
  c->down.client = c->client;
  if (l->cfg->tls) {
    SSL *ssl = mg_tls_accept_new(l->cfg->tls, c);
    if (!ssl) {
      mg_tp_close(&c->tp);
      return;
    }
    mg_tp_tls(&c->tp, ssl);
    c->down.ssl = ssl;
    c->tls_wg = w->wg;
    mg_wgen_ref(c->tls_wg);
  }

  struct sockaddr_storage ss;
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0, v6 = 0;
  if (mg_tp_peer(&c->tp, &ss) == 0) {
    v6 = ss.ss_family == AF_INET6;
    if (ss.ss_family == AF_INET || v6) /* kept for a PROXY header to an upstream */
      memcpy(&c->down.peer, &ss, v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    if (v6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
  }
  /* "ip:port" or "[ip6]:port", without printf: this runs for every connection */
  size_t iplen = strlen(ip), n = 0;
  if (v6) c->client[n++] = '[';
  memcpy(c->client + n, ip, iplen);
  n += iplen;
  if (v6) c->client[n++] = ']';
  c->client[n++] = ':';
  char digits[5];
  size_t nd = 0;
  do {
    digits[nd++] = (char)('0' + port % 10);
    port /= 10;
  } while (port && nd < sizeof(digits));
  while (nd) c->client[n++] = digits[--nd];
  c->client[n] = '\0';
  c->ip_off = (uint8_t)v6;
  c->ip_len = (uint8_t)iplen;
  c->down.ip = mg_conn_ip(c);
  c->listed = 1;
  c->next = w->conns;
  if (w->conns) w->conns->prev = c;
  w->conns = c;
  w->nconns++;
  c->state = MG_CS_IDLE;
  if (l->cfg->proxy_protocol) {
    /* only a trusted proxy may say who the client is */
    if (!w->gen->trusted || !mg_cidr_match_text(w->gen->trusted, mg_conn_ip(c))) {
      MG_WARN(w->id, "%s: PROXY protocol listener %s: the peer is not in trusted_proxies (connection closed)",
              c->client, l->cfg->text);
      mg_conn_close(c);
      return;
    }
    c->pp_wait = 1;
    c->tp.preamble = 1;
  }
  if (over_limit(c)) return;
  if ((w->gen->hooks >> MG_HOOK_CONNECT) & 1u) {
    mg_lreq_t *lr = mg_lua_conn_run(w->wg, c->client, c, connect_waited);
    int keep = lr ? mg_lua_connect(lr, mg_conn_ip(c), c->down.listener) : -1;
    if (keep == MG_LUA_WAIT) { /* nothing is read (no handshake either) until it is done */
      c->lua = lr;
      c->hook_hold = 1;
      return;
    }
    mg_lua_conn_run_done(lr);
    if (keep < 0) {
      mg_conn_close(c); /* refused by the connect hook */
      return;
    }
  }
  conn_start(c);
}

/* The connection may be read: its first timer (handshake or header) starts. */
static void conn_start(mg_conn_t *c) {
  mg_worker_t *w = c->w;
  arm(c, c->tp.ssl ? w->gen->timeouts.handshake : w->gen->timeouts.client_header);
  if (w->draining) c->down.close_after = 1;
  mg_conn_update_reading(c);
}

/* A connect hook that waited may go on, or was dropped (timeouts.hook: the
 * connection closes; luavm logged it with the hook's name). */
static void connect_waited(void *owner, int rc) {
  mg_conn_t *c = owner;
  if (rc == 0) rc = mg_lua_connect_resume(c->lua);
  if (rc == MG_LUA_WAIT) return;
  mg_lua_conn_run_done(c->lua);
  c->lua = NULL;
  c->hook_hold = 0;
  if (rc != 0) {
    if (rc == MG_LUA_TIMEOUT)
      MG_WARN(c->w->id, "%s: connect hook took longer than timeouts.hook: connection closed", c->client);
    mg_conn_close(c);
    return;
  }
  conn_start(c);
}
