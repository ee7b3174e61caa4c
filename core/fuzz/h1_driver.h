/* The HTTP/1 codec (core/h1.h) driven over a byte stream the way conn.c (requests)
 * and upstream.c (responses) drive it: events acted on one at a time, bytes taken
 * as the codec says. Used by fuzz_request.c and fuzz_response.c.
 *
 * A run writes a transcript: every head (first line, framing, every header), the
 * body bytes of each message, every end, and how the stream stopped (an error with
 * its status, an upgrade, a 101, or the input running out; responses then get the
 * EOF). The properties checked on every run:
 *  - the codec never takes more bytes than it was given, and stops taking any
 *    after an error, an upgrade or a 101;
 *  - a message is framed one way: never chunked with a Content-Length; a body of
 *    exactly Content-Length bytes; none when there is no framing (requests), or
 *    on 1xx, 204, 304 and the answer to HEAD (responses);
 *  - events come in order: a head, body pieces, an end;
 *  - every header of a head is a token name and a value without CR, LF or NUL
 *    is not promised (proxy.c checks those), but no slice points outside the head.
 * And two runs over the same bytes, one whole and one cut at chosen points, must
 * give the same transcript. */
#ifndef MG_FUZZ_H1_DRIVER_H
#define MG_FUZZ_H1_DRIVER_H

#include "fuzz.h"
#include "h1.h"
#include "http.h"

typedef struct {
  mg_h1_t h;
  mg_head_t head;
  fz_buf_t t;        /* the transcript */
  fz_buf_t body;     /* the body of the message being parsed: pieces are joined (their
                        cut follows the reads), then written out whole */
  int in_msg;        /* a head came, its end not yet */
  int framing;       /* MG_BODY_* of the message */
  int no_body;       /* the message can have no body */
  uint64_t want, got; /* Content-Length and the body bytes so far */
  int stopped;       /* an error, an upgrade or a 101: nothing more is taken */
  int response;
} h1d_t;

static mg_head_t *h1d_begin(void *owner) {
  h1d_t *d = owner;
  mg_head_reset(&d->head);
  return &d->head;
}

static void h1d_init(h1d_t *d, int response, int small, int head_request) {
  memset(d, 0, sizeof(*d));
  mg_head_init(&d->head);
  mg_h1_limits_t lim = small ? (mg_h1_limits_t){ 256, 8, 64 } : (mg_h1_limits_t){ 32768, 100, 8192 };
  if (response) lim.uri_max = 0;
  mg_h1_init(&d->h, response ? MG_H1_RESPONSE : MG_H1_REQUEST, &lim, response ? NULL : h1d_begin,
             response ? &d->head : NULL, d);
  mg_h1_expect_no_body(&d->h, head_request);
  d->response = response;
}

static void h1d_body_out(h1d_t *d) {
  if (!d->body.len) return;
  fz_put_u64(&d->t, MG_H1_BODY);
  fz_put_str(&d->t, d->body.p, d->body.len);
  d->body.len = 0;
}

static void h1d_head(h1d_t *d, int kind) {
  const mg_h1_msg_t *m = &d->h.msg;
  const mg_head_t *hd = &d->head;
  FUZZ_CHECK(!d->in_msg);
  FUZZ_CHECK(!(m->body == MG_BODY_CHUNKED && m->has_length));
  fz_put_u64(&d->t, (uint64_t)kind);
  fz_put_u64(&d->t, (uint64_t)(d->response ? m->status : m->method));
  fz_put_u64(&d->t, (uint64_t)m->http_minor | (uint64_t)m->keepalive << 8 | (uint64_t)m->upgrade << 16 |
                        (uint64_t)m->body << 24);
  fz_put_u64(&d->t, m->content_length);
  mg_str_t url = mg_head_url(hd);
  FUZZ_CHECK(hd->url_off + (size_t)hd->url_len <= hd->len);
  fz_put_str(&d->t, url.p, url.len);
  fz_put_u64(&d->t, hd->n);
  for (size_t i = 0; i < hd->n; i++) {
    const mg_header_t *x = &hd->headers[i];
    FUZZ_CHECK(x->name.len == 0 || (x->name.p >= hd->buf && x->name.p + x->name.len <= hd->buf + hd->len));
    FUZZ_CHECK(x->value.len == 0 || (x->value.p >= hd->buf && x->value.p + x->value.len <= hd->buf + hd->len));
    fz_put_str(&d->t, x->name.p, x->name.len);
    fz_put_str(&d->t, x->value.p, x->value.len);
  }
  if (kind == MG_H1_INTERIM) return; /* no body, no end of its own */
  d->in_msg = 1;
  d->framing = m->body;
  d->want = m->content_length;
  d->got = 0;
  d->no_body = d->response && (m->status == 204 || m->status == 304 || d->h.no_body);
}

/* One piece of the stream; returns 0 once the run stopped. */
static int h1d_feed(h1d_t *d, const char *p, size_t n) {
  while (!d->stopped) {
    mg_h1_ev_t ev;
    size_t used = mg_h1_parse(&d->h, p, n, &ev);
    FUZZ_CHECK(used <= n);
    p += used;
    n -= used;
    switch (ev.kind) {
    case MG_H1_NEED:
      FUZZ_CHECK(n == 0);
      return 1;
    case MG_H1_HEAD:
    case MG_H1_INTERIM:
      h1d_head(d, ev.kind);
      if (ev.kind == MG_H1_HEAD && d->response && d->h.msg.status == 101) {
        fz_put_u64(&d->t, 101000);
        d->stopped = 1;
      }
      break;
    case MG_H1_BODY:
      FUZZ_CHECK(d->in_msg && !d->no_body && ev.len > 0);
      FUZZ_CHECK(d->response || d->framing != MG_BODY_NONE);
      d->got += ev.len;
      if (d->framing == MG_BODY_LENGTH) FUZZ_CHECK(d->got <= d->want);
      fz_put(&d->body, ev.p, ev.len);
      break;
    case MG_H1_END:
      FUZZ_CHECK(d->in_msg);
      if (d->framing == MG_BODY_LENGTH && !d->no_body) FUZZ_CHECK(d->got == d->want);
      d->in_msg = 0;
      h1d_body_out(d);
      fz_put_u64(&d->t, MG_H1_END);
      break;
    case MG_H1_UPGRADE:
      FUZZ_CHECK(!d->response && !d->in_msg);
      fz_put_u64(&d->t, MG_H1_UPGRADE);
      d->stopped = 1;
      break;
    default:
      FUZZ_CHECK(ev.kind == MG_H1_ERROR && ev.status >= 400 && ev.status <= 505 && ev.why);
      h1d_body_out(d);
      /* the status is not compared: a request with two faults (a bad byte in the
       * target past its length limit, say) may get 400 or 414 depending on where
       * the reads cut it, as llhttp checks spans as they end; what must not
       * change is every message before it and that it is refused */
      fz_put_u64(&d->t, MG_H1_ERROR);
      d->stopped = 1;
      break;
    }
  }
  return 0;
}

/* The whole stream: in one piece (every == 0 and cut == len), cut at one point,
 * or cut every `every` bytes; each piece in a buffer of its own. */
static void h1d_run(h1d_t *d, const uint8_t *data, size_t len, size_t every, size_t cut) {
  size_t off = 0;
  while (off < len) {
    size_t n = every ? every : (off < cut ? cut - off : len - off);
    if (n > len - off) n = len - off;
    char *piece = fz_dup(data + off, n);
    int go = h1d_feed(d, piece, n);
    free(piece);
    off += n;
    if (!go) break;
  }
  if (d->response && !d->stopped) { /* the upstream closes */
    mg_h1_ev_t ev;
    int k = mg_h1_finish(&d->h, &ev);
    if (k == MG_H1_END) {
      FUZZ_CHECK(d->in_msg && d->framing == MG_BODY_NONE);
      d->in_msg = 0;
    }
    h1d_body_out(d);
    fz_put_u64(&d->t, 900 + (uint64_t)k);
  }
  h1d_body_out(d);
  fz_put_u64(&d->t, (uint64_t)d->in_msg);
}

static void h1d_dispose(h1d_t *d) {
  mg_head_dispose(&d->head);
  fz_free(&d->t);
  fz_free(&d->body);
}

/* Input: byte 0 = flags (bit 0: small limits; bit 1: cut every (byte 1 & 63) + 1
 * bytes instead of at one point; bit 3: responses answer a HEAD), bytes 1-2 = the
 * cut point (16-bit LE, modulo the data length), then the stream. */
static int h1d_fuzz(const uint8_t *p, size_t n, int response) {
  fz_in_t in = { p, n };
  uint8_t flags = fz_u8(&in);
  uint16_t cut = fz_u16(&in);
  size_t every = flags & 2 ? (size_t)(cut & 63) + 1 : 0;
  h1d_t a, b;
  h1d_init(&a, response, flags & 1, response && (flags & 8));
  h1d_init(&b, response, flags & 1, response && (flags & 8));
  h1d_run(&a, in.p, in.n, 0, in.n);
  h1d_run(&b, in.p, in.n, every, cut % (in.n + 1));
  FUZZ_CHECK(fz_eq(&a.t, &b.t));
  h1d_dispose(&a);
  h1d_dispose(&b);
  return 0;
}

#endif
