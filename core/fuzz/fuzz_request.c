/* llhttp as moongate's request parser: the strict build of vendor/, driven the way
 * core/conn.c drives it (mg_head_scan over each read first, a pause at the end of
 * every message and at the last chunk, whose trailer section is then scanned like
 * a head; the head kept with mg_head_append under limits; chunk extensions
 * bounded). A client's bytes arrive cut anywhere, so the request stream is parsed
 * in one piece and cut at points the input chooses, and both runs must see:
 *  - the same complete messages (method, version, target, headers, body, framing);
 *  - the same end: running, an upgrade at the same offset, or a refusal; when both
 *    are llhttp's own errors, the same error at the same offset, with the same
 *    body bytes delivered before it; when both are refusals, the same one.
 * proxy.c's checks of a head that decide whether it is taken at all (not CONNECT,
 * header names are tokens, values hold no CR, LF or NUL, Transfer-Encoding is
 * "chunked") are made here the same way, as a refusal. The scan and llhttp agree
 * on where each head and trailer section ends: llhttp never takes a byte of one
 * past the end the scan saw. And every message taken must be framed one way: never
 * Content-Length with chunked, a body exactly as long as the framing says, none
 * without framing.
 *
 * Input: byte 0 = flags (bit 0: small limits, so that they are reached; bit 1: cut
 * every (byte 1 & 63) + 1 bytes instead of at one point), bytes 1-2 = the cut
 * point (16-bit LE, modulo the data length), then the request stream.
 *
 * fuzz-options: -max_len=8192 -dict=spec/fuzz/http.dict */
#include <llhttp.h>

#include "fuzz.h"
#include "http.h"

enum { RUNNING, END_SCAN, END_LLHTTP, END_REFUSED, END_UPGRADE };

typedef struct {
  llhttp_t p;
  mg_head_scan_t scan;
  mg_head_t head;
  size_t head_max, headers_max, uri_max;
  int in_msg, head_done, trailers;
  int chunked, sized;   /* the framing of the message being parsed */
  uint64_t clen;        /* its Content-Length (llhttp counts p->content_length down) */
  size_t trailer_bytes, chunk_ext;
  int refused;    /* the status a callback refused the request with (conn.c's err_status) */
  fz_buf_t cur;   /* the head of the message being parsed, once complete */
  fz_buf_t body;  /* its body so far */
  fz_buf_t msgs;  /* every complete message */
  size_t base;    /* stream offset of the piece being parsed */
  const char *chunk;  /* the piece llhttp runs over, at stream offset base */
  size_t scan_end;    /* stream offset just past the section the scan saw end */
  int end, code;  /* how the stream ended (RUNNING while it goes on) */
  size_t pos;     /* stream offset of the end (END_LLHTTP, END_UPGRADE) */
} drv_t;

/* mg_head_scan over p[0..n), as the driver calls it; when the section ends in it,
 * where: the scan is run again from the same state one byte at a time. */
static int scan(drv_t *d, const char *p, size_t n) {
  mg_head_scan_t before = d->scan;
  int rc = mg_head_scan(&d->scan, p, n);
  if (rc == MG_SCAN_END && !before.done) {
    size_t i = 0;
    while (i < n && mg_head_scan(&before, p + i, 1) == MG_SCAN_MORE) i++;
    FUZZ_CHECK(i < n && before.done);
    d->scan_end = d->base + i + 1;
  }
  return rc;
}

/* No byte of a head or trailer section that llhttp takes lies past the end the
 * scan saw: what llhttp reads as part of it was checked line by line. */
static void within_scan(const drv_t *d, const char *at, size_t len) {
  if (d->scan.done) FUZZ_CHECK(d->base + (size_t)(at - d->chunk) + len <= d->scan_end);
}

static int append(llhttp_t *p, int what, const char *at, size_t len) {
  drv_t *d = p->data;
  within_scan(d, at, len);
  FUZZ_CHECK(d->in_msg);
  if (d->head_done) { /* trailers: counted against the head limit, dropped */
    d->trailer_bytes += len;
    if (d->trailer_bytes > d->head_max) {
      d->refused = 431;
      return -1;
    }
    return 0;
  }
  int rc = mg_head_append(&d->head, what, at, len, d->head_max, d->headers_max);
  if (rc == MG_ELIMIT) {
    d->refused = what == MG_HEAD_URL ? 414 : 431;
    return -1;
  }
  FUZZ_CHECK(rc == 0);
  if (what == MG_HEAD_URL && d->head.url_len > d->uri_max) {
    d->refused = 414;
    return -1;
  }
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(!d->in_msg);
  d->in_msg = 1;
  d->head_done = 0;
  d->trailer_bytes = 0;
  d->chunk_ext = 0;
  d->cur.len = d->body.len = 0;
  mg_head_reset(&d->head);
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) { return append(p, MG_HEAD_URL, at, len); }
static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  return append(p, MG_HEAD_FIELD, at, len);
}
static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  return append(p, MG_HEAD_VALUE, at, len);
}

static int on_chunk_ext(llhttp_t *p, const char *at, size_t len) {
  drv_t *d = p->data;
  d->chunk_ext += len;
  if (d->chunk_ext > MG_CHUNK_EXT_MAX) {
    d->refused = 400;
    return -1;
  }
  return 0;
}

static int on_chunk_header(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->head_done);
  d->chunk_ext = 0;
  if (p->content_length == 0) {
    d->trailers = 1;
    return HPE_PAUSED;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->in_msg && !d->head_done);
  FUZZ_CHECK(d->scan.done); /* the head llhttp ends, the scan saw end */
  if (p->http_major != 1 || p->http_minor > 1) {
    d->refused = 505;
    return -1;
  }
  d->head_done = 1;
  FUZZ_CHECK(mg_head_finish(&d->head) == 0);
  if (p->method == HTTP_CONNECT) { /* mg_proxy_head: 501 (llhttp reads no body of it) */
    d->refused = 501;
    return -1;
  }
  mg_str_t url = mg_head_url(&d->head);
  FUZZ_CHECK(url.len > 0);
  FUZZ_CHECK(!mg_http_bad_value(url) && !memchr(url.p, ' ', url.len));
  int chunked = (p->flags & F_CHUNKED) != 0, sized = (p->flags & F_CONTENT_LENGTH) != 0;
  FUZZ_CHECK(!(chunked && sized));
  d->chunked = chunked;
  d->sized = sized;
  d->clen = sized ? p->content_length : 0;
  fz_put_u64(&d->cur, p->method);
  fz_put_u64(&d->cur, p->http_minor);
  fz_put_u64(&d->cur, (uint64_t)chunked << 1 | (uint64_t)sized);
  fz_put_u64(&d->cur, sized ? p->content_length : 0);
  fz_put_u64(&d->cur, (uint64_t)llhttp_should_keep_alive(p) << 1 | p->upgrade);
  fz_put_str(&d->cur, url.p, url.len);
  fz_put_u64(&d->cur, d->head.n);
  for (size_t i = 0; i < d->head.n; i++) {
    const mg_header_t *h = &d->head.headers[i];
    fz_put_str(&d->cur, h->name.p, h->name.len);
    fz_put_str(&d->cur, h->value.p, h->value.len);
    /* proxy.c's check_headers: what it answers 400 or 501 instead of forwarding */
    if (!mg_http_is_token(h->name) || mg_http_bad_value(h->value)) d->refused = 400;
    else if (mg_str_caseeq(h->name, MG_STR("transfer-encoding")) &&
             !mg_str_caseeq(h->value, MG_STR("chunked")))
      d->refused = 501;
    if (d->refused) return -1;
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->head_done && len > 0);
  fz_put(&d->body, at, len);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->in_msg && d->head_done);
  FUZZ_CHECK(d->scan.done); /* the head, or the trailer section after a last chunk */
  /* a request without framing has no body; a sized one has exactly its size */
  FUZZ_CHECK(d->body.len == (d->chunked ? d->body.len : d->clen));
  fz_put(&d->msgs, d->cur.p, d->cur.len);
  fz_put_str(&d->msgs, d->body.p, d->body.len);
  fz_put_u64(&d->msgs, d->trailer_bytes);
  d->in_msg = 0;
  mg_head_scan_reset(&d->scan); /* the next message's head */
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
  .on_chunk_extension_name = on_chunk_ext,
  .on_chunk_extension_value = on_chunk_ext,
  .on_chunk_header = on_chunk_header,
};

static void drv_init(drv_t *d, int small) {
  memset(d, 0, sizeof(*d));
  /* conn.c's limits: the config's defaults, or small ones that a short input reaches */
  d->head_max = small ? 256 : 32768;
  d->headers_max = small ? 4 : 100;
  d->uri_max = small ? 32 : 8192;
  mg_head_init(&d->head);
  mg_head_scan_reset(&d->scan);
  llhttp_init(&d->p, HTTP_REQUEST, &settings);
  d->p.data = d;
}

static void drv_dispose(drv_t *d) {
  mg_head_dispose(&d->head);
  fz_free(&d->cur);
  fz_free(&d->body);
  fz_free(&d->msgs);
}

/* One read, as conn.c's feed takes it. */
static void feed(drv_t *d, const char *data, size_t len) {
  while (d->end == RUNNING) {
    int rc = scan(d, data, len);
    if (rc < 0) {
      d->end = END_SCAN;
      d->code = rc;
      return;
    }
    d->chunk = data;
    llhttp_errno_t err = llhttp_execute(&d->p, data, len);
    if (err == HPE_OK) {
      d->base += len;
      return;
    }
    const char *pos = llhttp_get_error_pos(&d->p);
    FUZZ_CHECK(pos >= data && pos <= data + len);
    size_t used = (size_t)(pos - data);
    if (err == HPE_PAUSED) { /* a message ended, or its last chunk began */
      if (d->trailers) {
        d->trailers = 0;
        mg_head_scan_trailers(&d->scan);
      } else {
        FUZZ_CHECK(!d->in_msg);
      }
      data += used;
      len -= used;
      d->base += used;
      llhttp_resume(&d->p);
      continue;
    }
    d->pos = d->base + used;
    if (err == HPE_PAUSED_UPGRADE) {
      d->end = END_UPGRADE;
    } else if (d->refused) {
      d->end = END_REFUSED;
      d->code = d->refused;
    } else {
      d->end = END_LLHTTP;
      d->code = (int)err;
    }
  }
}

static void run(drv_t *d, const uint8_t *data, size_t len, size_t every, size_t cut) {
  size_t from = 0;
  while (from < len && d->end == RUNNING) {
    size_t to = every ? (len - from > every ? from + every : len) : from < cut ? cut : len;
    char *piece = fz_dup(data + from, to - from);
    feed(d, piece, to - from);
    free(piece);
    from = to;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  fz_in_t in = { p, n };
  uint8_t flags = fz_u8(&in);
  uint16_t cut = fz_u16(&in);
  const uint8_t *data = in.p;
  size_t len = in.n;
  size_t every = flags & 2 ? (size_t)(cut & 63) + 1 : 0;

  drv_t a, b;
  drv_init(&a, flags & 1);
  drv_init(&b, flags & 1);
  run(&a, data, len, 0, len);
  run(&b, data, len, every, cut % (len + 1));

  FUZZ_CHECK(fz_eq(&a.msgs, &b.msgs));
  FUZZ_CHECK((a.end == RUNNING) == (b.end == RUNNING));
  FUZZ_CHECK((a.end == END_UPGRADE) == (b.end == END_UPGRADE));
  if (a.end == END_UPGRADE) FUZZ_CHECK(a.pos == b.pos);
  if (a.end == b.end && a.end != RUNNING && a.end != END_UPGRADE) FUZZ_CHECK(a.code == b.code);
  if (a.end == END_REFUSED && b.end == END_REFUSED && a.head_done && b.head_done)
    FUZZ_CHECK(fz_eq(&a.cur, &b.cur)); /* the same head refused for the same reason */
  if (a.end == END_LLHTTP && b.end == END_LLHTTP) {
    FUZZ_CHECK(a.pos == b.pos);
    FUZZ_CHECK(a.in_msg == b.in_msg && a.head_done == b.head_done);
    if (a.head_done) FUZZ_CHECK(fz_eq(&a.cur, &b.cur) && fz_eq(&a.body, &b.body));
  }
  if (a.end == RUNNING) { /* the input ended inside a message, or between two */
    FUZZ_CHECK(a.in_msg == b.in_msg && a.head_done == b.head_done);
    FUZZ_CHECK(memcmp(&a.scan, &b.scan, sizeof(a.scan)) == 0);
    if (a.head_done) FUZZ_CHECK(fz_eq(&a.cur, &b.cur) && fz_eq(&a.body, &b.body));
  }
  drv_dispose(&a);
  drv_dispose(&b);
  return 0;
}
