#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "tls.h"

/* Moves what BoringSSL wants to send into the queue. */
static int drain(SSL *ssl, mg_outq_t *q) {
  const uint8_t *p;
  size_t n = mg_tls_out_peek(ssl, &p);
  if (n == 0) return 0;
  if (mg_outq_append(q, p, n) < 0) return MG_ENOMEM;
  mg_tls_out_taken(ssl);
  return 0;
}

/* The pending plaintext becomes records (one SSL_write per block, so small
 * appends end up in few records), queued with whatever else BoringSSL has to
 * send (handshake, alerts, tickets) in front. */
static int encode(mg_outq_t *q) {
  mg_tp_tls_t *t = q->enc_data;
  mg_block_t *b = mg_outq_take(q);
  if (drain(t->ssl, q) < 0) {
    mg_outq_free_blocks(b);
    return MG_ENOMEM;
  }
  int rc = 0;
  while (b) {
    mg_block_t *next = b->next;
    if (rc == 0 && b->len > b->off && SSL_write(t->ssl, mg_block_bytes(b) + b->off, (int)(b->len - b->off)) <= 0)
      rc = UV_EPROTO;
    /* the records of this block move out at once: the BIO stays one block big */
    if (rc == 0 && drain(t->ssl, q) < 0) rc = MG_ENOMEM;
    b->next = NULL;
    mg_outq_free_blocks(b);
    b = next;
  }
  if (rc < 0) return rc;
  if (t->close == 1) { /* after the last plaintext */
    SSL_shutdown(t->ssl);
    t->close = 2;
  }
  return drain(t->ssl, q);
}

static int more(const mg_outq_t *q) {
  const mg_tp_tls_t *t = q->enc_data;
  return t->close == 1 || BIO_pending(SSL_get_wbio(t->ssl)) > 0;
}

static const mg_outq_enc_t tls_enc = { .encode = encode, .more = more };


/* ---------------- TLS steps ---------------- */

/* Advances the handshake: MG_TP_HS_* below; on failure `why` and `kind`. */
/* HS_PAUSED: (servers) the certificate's choice waits (a tls_hello hook waits):
 * nothing goes on until mg_tp_tls_resume. */
enum { HS_DONE, HS_MORE, HS_FAILED, HS_PAUSED };
static int handshake_step(SSL *ssl, char *why, size_t whylen, int *kind) {
  int rc = SSL_do_handshake(ssl);
  if (rc == 1) return HS_DONE;
  int e = SSL_get_error(ssl, rc);
  if (e == SSL_ERROR_WANT_READ) return HS_MORE;
  if (e == SSL_ERROR_PENDING_CERTIFICATE) return HS_PAUSED;
  *kind = MG_TP_FAIL_TLS;
  long v = SSL_is_server(ssl) ? X509_V_OK : SSL_get_verify_result(ssl);
  if (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_HTTP_REQUEST)
    *kind = MG_TP_FAIL_PLAIN_HTTP;
  if (v != X509_V_OK) {
    *kind = MG_TP_FAIL_CERT;
    snprintf(why, whylen, "%s", X509_verify_cert_error_string(v));
  } else if (e == SSL_ERROR_SSL) {
    mg_tls_error(why, whylen);
  } else {
    snprintf(why, whylen, "connection error");
  }
  ERR_clear_error();
  return HS_FAILED;
}

static void attach(mg_tp_t *tp, SSL *ssl) {
  tp->ssl = ssl;
  tp->tls_ready = 0;
  tp->tls.ssl = ssl;
  tp->tls.close = 0;
  tp->out.enc = &tls_enc;
  tp->out.enc_data = &tp->tls;
}

void mg_tp_tls(mg_tp_t *tp, SSL *ssl) { attach(tp, ssl); }

static void client_handshake(mg_tp_t *tp);
void mg_tp_tls_start(mg_tp_t *tp, SSL *ssl) {
  attach(tp, ssl);
  if (tp->closing) return;
  mg_tp_read(tp, 1); /* the server's flights */
  client_handshake(tp);
}

void mg_tp_tls_off(mg_tp_t *tp) {
  if (tp->ssl) BIO_reset(SSL_get_wbio(tp->ssl));
  tp->out.enc = NULL;
  tp->out.enc_data = NULL;
}

void mg_tp_close_notify(mg_tp_t *tp) {
  if (tp->ssl && tp->tls_ready && tp->out.enc && !tp->tls.close) tp->tls.close = 1;
}

void mg_tp_release_tickets(mg_tp_t *tp) {
  if (!tp->ssl) return;
  SSL_write(tp->ssl, "", 0);
  ERR_clear_error();
}

int mg_tp_input_pending(const mg_tp_t *tp) {
  return tp->ssl && (SSL_pending(tp->ssl) > 0 || BIO_pending(SSL_get_rbio(tp->ssl)) > 0);
}

int mg_tp_input_waiting(const mg_tp_t *tp) {
  if (mg_tp_input_pending(tp)) return 1;
  int fd = -1;
  char b;
  if (tp->ctx->net || tp->closing || uv_fileno(&tp->io.handle, &fd) < 0) return 0;
  return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* ---------------- the in-memory network ---------------- */

static void mem_output(mg_tp_t *tp, mg_block_t *b) {
  mg_tp_net_t *net = tp->ctx->net;
  for (mg_block_t *x = b; x; x = x->next)
    if (x->len > x->off) net->output(net, tp, mg_block_bytes(x) + x->off, x->len - x->off);
  mg_outq_free_blocks(b);
}

/* The next loop turn: what was written completes, then a half-close asked meanwhile. */
static void mem_complete(uv_timer_t *t) {
  mg_tp_t *tp = t->data;
  if (tp->closing) return;
  mg_block_t *b = tp->mem_inflight;
  size_t bytes = tp->mem_bytes;
  tp->mem_inflight = NULL;
  tp->mem_bytes = 0;
  if (b || bytes) {
    mem_output(tp, b);
    mg_outq_written(&tp->out, bytes, 0);
    if (tp->closing) return;
  }
  if (tp->mem_shut && !tp->mem_inflight) {
    tp->mem_shut = 0;
    tp->ctx->net->shutdown(tp->ctx->net, tp);
    if (tp->ev->shut) tp->ev->shut(tp->owner, 0);
  }
}

/* Like the socket path: written at once while nothing waits and the queue never
 * went over its high-water mark, else completed on the next loop turn. */
static int mem_flush(mg_tp_t *tp) {
  mg_outq_t *q = &tp->out;
  int rc = mg_outq_encode(q);
  if (rc < 0) return rc;
  if (!q->pending) return 0;
  size_t bytes = q->pending;
  mg_block_t *b = mg_outq_take(q);
  if (!q->above && !tp->mem_inflight && !q->writes) {
    mem_output(tp, b);
    return 0;
  }
  mg_block_t **end = &tp->mem_inflight;
  while (*end) end = &(*end)->next;
  *end = b;
  tp->mem_bytes += bytes;
  q->inflight += bytes;
  q->writes = 1; /* one completion for everything in flight */
  if (!uv_is_active((uv_handle_t *)&tp->io.mem)) uv_timer_start(&tp->io.mem, mem_complete, 0, 0);
  return 0;
}

/* ---------------- reading ---------------- */

static void deliver_end(mg_tp_t *tp) {
  if (!tp->closing) tp->ev->read_end(tp->owner);
}

/* The client side's handshake step, right after the connect and on each read
 * until it is done: what it queued goes out now. */
static void client_handshake(mg_tp_t *tp) {
  char why[160];
  int kind = 0;
  int hs = handshake_step(tp->ssl, why, sizeof(why), &kind);
  int frc = mg_tp_flush(tp);
  if (frc < 0) {
    tp->ev->ready(tp->owner, frc, MG_TP_FAIL_IO, "write failed");
    return;
  }
  if (hs == HS_MORE) return;
  if (hs == HS_FAILED) {
    tp->ev->ready(tp->owner, -1, kind, why);
    return;
  }
  tp->tls_ready = 1;
  tp->ev->ready(tp->owner, 0, 0, NULL);
}

static int tls_records(mg_tp_t *tp) {
  for (;;) {
    int k = SSL_read(tp->ssl, tp->ctx->tbuf, (int)tp->ctx->tcap);
    if (k > 0) {
      if (tp->ev->data(tp->owner, tp->ctx->tbuf, (size_t)k) || tp->closing) return 1;
      continue;
    }
    int e = SSL_get_error(tp->ssl, k);
    if (e == SSL_ERROR_WANT_READ) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) return 2;
    return -1;
  }
}

/* A client's bytes while its handshake is paused are kept for when it goes on
 * (the socket is still read, so that a client that goes away is seen). A
 * client that waits for our ServerHello sends nothing, or little (a TLS 1.3
 * early-data attempt): past this much it is no such client. */
#define PAUSED_INPUT_MAX (64 * 1024)

/* The TLS input that is in the read BIO: the server's handshake (when not done),
 * then records. */
static void tls_input(mg_tp_t *tp) {
  if (!tp->tls_ready) {
    if (tp->upstream) {
      client_handshake(tp);
      if (tp->closing || !tp->tls_ready) return;
    } else {
      char why[160];
      int kind = 0;
      int hs = handshake_step(tp->ssl, why, sizeof(why), &kind);
      if (hs == HS_MORE || hs == HS_PAUSED) { /* our part of the handshake (none while paused) */
        tp->hs_paused = hs == HS_PAUSED;
        int frc = mg_tp_flush(tp);
        if (frc < 0) tp->ev->error(tp->owner, frc, uv_strerror(frc));
        return;
      }
      if (hs == HS_FAILED) {
        tp->ev->ready(tp->owner, -1, kind, why);
        return;
      }
      tp->tls_ready = 1;
      tp->ev->ready(tp->owner, 0, 0, NULL);
      if (tp->closing) return;
    }
  }
  int rd = tp->discard ? 1 : tls_records(tp);
  if (tp->closing) return;
  if (rd == 2) { /* close_notify */
    /* what came before it in this read is handled as any read's is (a plain
     * stream's FIN comes as a read of its own, after that) */
    deliver_end(tp);
    if (tp->closing) return;
    mg_tp_read(tp, 0); /* what follows it would only pile up */
    tp->ev->eof(tp->owner);
    return;
  }
  if (rd < 0) {
    char why[160];
    mg_tls_error(why, sizeof(why));
    tp->ev->error(tp->owner, MG_TP_ETLS, why);
    return;
  }
  mg_tls_release_bios(tp->ssl);
  if (rd == 0) deliver_end(tp);
}

/* One read's bytes: the preamble, then plaintext or TLS records. */
static void input(mg_tp_t *tp, const char *p, size_t n) {
  if (tp->discard) { /* the owner is closing: what still comes is dropped unread */
    deliver_end(tp);
    return;
  }
  if (tp->preamble) {
    if (!tp->ev->preamble(tp->owner, &p, &n) || tp->closing) return;
    tp->preamble = 0;
  }
  if (!tp->ssl || !tp->out.enc) { /* plain, or TLS switched off */
    if (n > 0 && (tp->ev->data(tp->owner, p, n) || tp->closing)) return;
    deliver_end(tp);
    return;
  }
  if (n > 0 && BIO_write(SSL_get_rbio(tp->ssl), p, (int)n) != (int)n) {
    tp->ev->error(tp->owner, MG_ENOMEM, "out of memory");
    return;
  }
  if (tp->hs_paused) { /* kept for mg_tp_tls_resume */
    if (BIO_pending(SSL_get_rbio(tp->ssl)) > PAUSED_INPUT_MAX)
      tp->ev->error(tp->owner, MG_TP_ETLS, "more than 64 KiB of input while the handshake waited");
    return;
  }
  tls_input(tp);
}

void mg_tp_tls_resume(mg_tp_t *tp) {
  if (tp->closing || !tp->hs_paused) return;
  tp->hs_paused = 0;
  tls_input(tp);
}

/* The read side ended: a FIN, or an error. During an upstream's TLS handshake
 * either is the handshake failing. */
static void input_end(mg_tp_t *tp, int err) {
  tp->reading = 0; /* libuv stops reading at EOF and on errors */
  if (tp->upstream && tp->ssl && !tp->tls_ready) {
    char why[160];
    snprintf(why, sizeof(why), "%s before the handshake ended", err == UV_EOF ? "closed" : uv_strerror(err));
    tp->ev->ready(tp->owner, err, MG_TP_FAIL_TLS, why);
    return;
  }
  if (err == UV_EOF) tp->ev->eof(tp->owner);
  else tp->ev->error(tp->owner, err, uv_strerror(err));
}

/* ---------------- splicing ---------------- */

#define SPLICE_PIPE (256 * 1024) /* asked of the kernel; the default is 64 KiB */

static int pipe_open(mg_tp_ctx_t *ctx) {
  if (ctx->pipe[0] >= 0) return 0;
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
  fcntl(fds[1], F_SETPIPE_SZ, SPLICE_PIPE); /* a smaller pipe only means more steps */
  ctx->pipe[0] = fds[0];
  ctx->pipe[1] = fds[1];
  return 0;
}

void mg_tp_ctx_close(mg_tp_ctx_t *ctx) {
  if (ctx->pipe[0] >= 0) {
    close(ctx->pipe[0]);
    close(ctx->pipe[1]);
  }
  ctx->pipe[0] = ctx->pipe[1] = -1;
}

/* Something went wrong with the pipe itself: it may hold bytes, so it is not used
 * again (a new one is made for the next splice). */
static void pipe_broken(mg_tp_ctx_t *ctx) { mg_tp_ctx_close(ctx); }

static void splice_step(mg_tp_t *tp);

int mg_tp_splice(mg_tp_t *tp, mg_tp_t *to, uint64_t n) {
  if (n == 0 || tp->ctx->net || tp->ssl || to->ssl || tp->closing || to->closing || !tp->ev->spliced)
    return -1;
  if (pipe_open(tp->ctx) < 0) return -1;
  tp->splice_to = to;
  tp->splice_left = n;
  /* the rest of the body is likely there already: no need to wait for the loop */
  if (tp->reading) splice_step(tp);
  return 0;
}

void mg_tp_splice_stop(mg_tp_t *tp) {
  tp->splice_to = NULL;
  tp->splice_left = 0;
}

static void input_end(mg_tp_t *tp, int err);

/* A splice cannot go on: reading stops (libuv did not see the end itself, it
 * would go on reading) and the owner hears it as the read side failing. */
static void splice_fail(mg_tp_t *tp, int err) {
  mg_tp_splice_stop(tp);
  mg_tp_read(tp, 0);
  input_end(tp, err);
}

/* The socket is readable while splicing: socket to pipe, pipe to the other
 * socket, what that one does not take (or may not: bytes queued before) through
 * memory into its queue. The pipe is empty again after every step. */
static void splice_step(mg_tp_t *tp) {
  mg_tp_ctx_t *ctx = tp->ctx;
  for (int round = 0; round < 16 && tp->splice_left && !tp->closing; round++) {
    mg_tp_t *to = tp->splice_to;
    int in = -1, out = -1;
    if (ctx->pipe[0] < 0 || uv_fileno(&tp->io.handle, &in) < 0 || uv_fileno(&to->io.handle, &out) < 0) {
      splice_fail(tp, UV_EPIPE);
      return;
    }
    size_t want = tp->splice_left < SPLICE_PIPE ? (size_t)tp->splice_left : SPLICE_PIPE;
    ssize_t n = splice(in, NULL, ctx->pipe[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EAGAIN) return; /* nothing more for now: wait for the socket */
    if (n <= 0) {
      splice_fail(tp, n == 0 ? UV_EOF : -errno);
      return;
    }
    size_t moved = 0;
    /* what was queued before (the head) goes first, in the same packets as the
     * body that follows it now */
    /* (a write error here: what follows is queued, and the next flush meets it) */
    if (!to->closing && to->out.pending) (void)mg_outq_send_more(&to->out, out);
    if (!to->closing && mg_outq_size(&to->out) == 0) {
      ssize_t m = splice(ctx->pipe[0], NULL, out, NULL, (size_t)n, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) moved = (size_t)m;
      /* else: full (EAGAIN), or an error the next flush of `to` meets */
    }
    while (moved < (size_t)n) { /* the rest, in order, into the queue */
      size_t k = (size_t)n - moved;
      if (k > ctx->rcap) k = ctx->rcap;
      ssize_t r = read(ctx->pipe[0], ctx->rbuf, k);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        pipe_broken(ctx);
        splice_fail(tp, UV_EPIPE);
        return;
      }
      if (!to->closing && mg_outq_append(&to->out, ctx->rbuf, (size_t)r) < 0) {
        pipe_broken(ctx);
        splice_fail(tp, MG_ENOMEM);
        return;
      }
      moved += (size_t)r;
    }
    tp->splice_left -= (uint64_t)n;
    uint64_t left = tp->splice_left;
    if (!left) tp->splice_to = NULL;
    tp->ev->spliced(tp->owner, (size_t)n, left);
    if ((size_t)n < want || !tp->reading) return; /* drained the socket, or paused */
  }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)hint;
  mg_tp_t *tp = h->data;
  if (tp->splice_left) { /* no buffer: libuv says "readable" (UV_ENOBUFS) and reads nothing */
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  size_t cap = tp->read_cap && tp->read_cap < tp->ctx->rcap ? tp->read_cap : tp->ctx->rcap;
  *buf = uv_buf_init(tp->ctx->rbuf, (unsigned)cap);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  mg_tp_t *tp = s->data;
  if (nread == 0 || tp->closing) return;
  if (nread == UV_ENOBUFS && tp->splice_left) {
    splice_step(tp);
    return;
  }
  if (nread < 0) input_end(tp, (int)nread);
  else input(tp, buf->base, (size_t)nread);
}

void mg_tp_read(mg_tp_t *tp, int on) {
  if (tp->closing || (int)tp->reading == !!on) return;
  if (tp->ctx->net) {
    tp->reading = !!on;
    return;
  }
  if (on) {
    if (uv_read_start(&tp->io.stream, on_alloc, on_read) == 0) tp->reading = 1;
  } else {
    uv_read_stop(&tp->io.stream);
    tp->reading = 0;
  }
}

size_t mg_tp_mem_input(mg_tp_t *tp, const char *p, size_t n) {
  size_t taken = 0;
  /* a socket read lands in the worker's buffer: so does this one, in pieces as
   * big, while the owner is reading */
  while (taken < n && tp->reading && !tp->closing) {
    size_t k = n - taken < tp->ctx->rcap ? n - taken : tp->ctx->rcap;
    memcpy(tp->ctx->rbuf, p + taken, k);
    taken += k;
    input(tp, tp->ctx->rbuf, k);
  }
  return taken;
}

int mg_tp_mem_eof(mg_tp_t *tp) {
  if (tp->closing || !tp->reading) return 0;
  input_end(tp, UV_EOF);
  return 1;
}

void mg_tp_mem_reset(mg_tp_t *tp) {
  if (tp->closing) return;
  input_end(tp, UV_ECONNRESET);
}

/* ---------------- writing and closing ---------------- */

static void on_out(mg_outq_t *q, int status) {
  mg_tp_t *tp = q->data;
  if (!tp->closing) tp->ev->written(tp->owner, status);
}

int mg_tp_flush(mg_tp_t *tp) {
  if (tp->closing) return 0;
  return tp->ctx->net ? mem_flush(tp) : mg_outq_flush(&tp->out);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  mg_tp_t *tp = req->data;
  free(req); /* runs before the close callback, cancelled or not */
  if (!tp->closing && tp->ev->shut) tp->ev->shut(tp->owner, status);
}

int mg_tp_shutdown(mg_tp_t *tp) {
  if (tp->closing) return 0;
  if (tp->ctx->net) {
    tp->mem_shut = 1;
    if (!uv_is_active((uv_handle_t *)&tp->io.mem)) uv_timer_start(&tp->io.mem, mem_complete, 0, 0);
    return 0;
  }
  uv_shutdown_t *req = malloc(sizeof(*req));
  if (!req) return MG_ENOMEM;
  req->data = tp;
  int rc = uv_shutdown(req, &tp->io.stream, on_shutdown);
  if (rc < 0) free(req);
  return rc;
}

static void on_close(uv_handle_t *h) {
  mg_tp_t *tp = h->data;
  mg_outq_dispose(&tp->out);
  mg_outq_free_blocks(tp->mem_inflight);
  tp->mem_inflight = NULL;
  SSL_free(tp->ssl);
  tp->ssl = NULL;
  mg_tp_splice_stop(tp);
  if (tp->ctx->net) tp->ctx->net->closed(tp->ctx->net, tp);
  tp->ev->closed(tp->owner);
}

void mg_tp_close(mg_tp_t *tp) {
  if (tp->closing) return;
  tp->closing = 1;
  tp->reading = 0;
  uv_close(&tp->io.handle, on_close);
}

/* ---------------- opening ---------------- */

static void init(mg_tp_t *tp, mg_tp_ctx_t *ctx, const mg_tp_events_t *ev, void *owner) {
  memset(tp, 0, sizeof(*tp));
  tp->ctx = ctx;
  tp->ev = ev;
  tp->owner = owner;
  tp->tls_ready = 1;
  mg_outq_init(&tp->out, on_out, tp);
  if (ctx->net) uv_timer_init(ctx->loop, &tp->io.mem);
  else uv_tcp_init(ctx->loop, &tp->io.tcp);
  tp->io.handle.data = tp;
  if (!ctx->net) tp->out.stream = &tp->io.stream;
}

int mg_tp_accept(mg_tp_t *tp, mg_tp_ctx_t *ctx, uv_stream_t *server, const mg_tp_events_t *ev,
                 void *owner) {
  init(tp, ctx, ev, owner);
  if (ctx->net) {
    ctx->net->opened(ctx->net, tp, 0);
    return 0;
  }
  return uv_accept(server, &tp->io.stream);
}

/* Connected: reading starts, then the TLS handshake or, plain, the owner's turn. */
static void connected(mg_tp_t *tp) {
  mg_tp_read(tp, 1);
  if (tp->ssl) {
    client_handshake(tp);
    return;
  }
  tp->ev->ready(tp->owner, 0, 0, NULL);
}

static void on_connect(uv_connect_t *req, int status) {
  mg_tp_t *tp = req->data;
  if (tp->closing) return;
  if (status < 0) {
    tp->ev->ready(tp->owner, status, MG_TP_FAIL_CONNECT, uv_strerror(status));
    return;
  }
  uv_tcp_nodelay(&tp->io.tcp, 1);
  connected(tp);
}

void mg_tp_mem_connected(mg_tp_t *tp, int status) {
  if (tp->closing) return;
  if (status < 0) {
    tp->ev->ready(tp->owner, status, MG_TP_FAIL_CONNECT, uv_strerror(status));
    return;
  }
  connected(tp);
}

int mg_tp_connect(mg_tp_t *tp, mg_tp_ctx_t *ctx, uv_connect_t *req, const struct sockaddr *addr,
                  const mg_tp_events_t *ev, void *owner) {
  init(tp, ctx, ev, owner);
  tp->upstream = 1;
  if (ctx->net) {
    ctx->net->opened(ctx->net, tp, 1);
    return 0;
  }
  req->data = tp;
  return uv_tcp_connect(req, &tp->io.tcp, addr, on_connect);
}

static int mem_addr(struct sockaddr_storage *ss, int port) {
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof(*ss));
  in->sin_family = AF_INET;
  in->sin_port = htons((uint16_t)port);
  in->sin_addr.s_addr = htonl(0x7f000001);
  return 0;
}

int mg_tp_peer(const mg_tp_t *tp, struct sockaddr_storage *ss) {
  if (tp->ctx->net) return mem_addr(ss, tp->upstream ? 8081 : 40000);
  int len = sizeof(*ss);
  return uv_tcp_getpeername(&tp->io.tcp, (struct sockaddr *)ss, &len);
}

int mg_tp_local(const mg_tp_t *tp, struct sockaddr_storage *ss) {
  if (tp->ctx->net) return mem_addr(ss, tp->upstream ? 40001 : 8080);
  int len = sizeof(*ss);
  return uv_tcp_getsockname(&tp->io.tcp, (struct sockaddr *)ss, &len);
}
