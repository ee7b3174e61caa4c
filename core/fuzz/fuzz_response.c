/* llhttp as moongate's response parser: the strict build of vendor/, driven the
 * way core/upstream.c drives it (mg_head_scan over each read first; interim 1xx
 * responses end with their head, whatever framing they claim, and the next head is
 * scanned anew; no body after HEAD, 204 or 304; 101 and a status outside 100-599
 * refused; the last chunk pauses so the trailer section is scanned like a head;
 * llhttp_finish at the end of the stream ends an until-close body). An upstream's
 * bytes arrive cut anywhere, so the stream is parsed in one piece and cut at points
 * the input chooses, and both runs must see:
 *  - the same responses (interim heads, final heads, bodies) ending at the same
 *    offsets;
 *  - the same end: running, a refusal (llhttp's own error: same error at the same
 *    offset with the same body bytes before it), the same end-of-stream verdict.
 * proxy.c's check of a final head (header names are tokens, values hold no CR, LF
 * or NUL: else 502) is made here the same way, as a refusal. The scan and llhttp
 * agree on where each head and trailer section ends: llhttp never takes a byte of
 * one past the end the scan saw. And every response
 * taken must be framed one way: no body in a 1xx, after HEAD, in a 204 or a 304,
 * never Content-Length with chunked, and a sized body exactly its size.
 *
 * After a final response the stream goes on as the response to the next request
 * of a reused connection (upstream.c makes a new parser for each: llhttp_init).
 *
 * Input: byte 0 = flags (bits 0-5: response i answers a HEAD request when bit
 * i % 6 is set; bit 6: cut every (byte 1 & 63) + 1 bytes instead of at one point),
 * bytes 1-2 = the cut point (16-bit LE, modulo the data length), then the stream.
 *
 * fuzz-options: -max_len=8192 -dict=spec/fuzz/http.dict */
#include <llhttp.h>

#include "fuzz.h"
#include "http.h"

/* upstream.c's limits for response heads */
#define UP_HEAD_MAX (64 * 1024)
#define UP_HEADERS_MAX 200

enum { RUNNING, END_SCAN, END_LLHTTP, END_REFUSED };

typedef struct {
  llhttp_t p;
  mg_head_scan_t scan;
  mg_head_t head;
  uint8_t head_bits;  /* which responses answer a HEAD */
  size_t nresp;       /* responses begun (final ones) */
  int is_head, head_done, done, rescan;
  int chunked, sized; /* framing of the final response */
  uint64_t clen;
  size_t trailer_bytes, chunk_ext;
  const char *why;    /* a callback's refusal */
  fz_buf_t body;      /* body of the final response so far */
  fz_buf_t out;       /* every head and complete response, with its end offset */
  size_t base;        /* stream offset of the piece being parsed */
  const char *chunk;  /* the piece llhttp runs over, at stream offset base */
  size_t scan_end;    /* stream offset just past the section the scan saw end */
  int end, code;
  size_t pos;
} drv_t;

static int refuse(drv_t *d, const char *why) {
  d->why = why;
  return -1;
}

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
  if (d->head_done) {
    d->trailer_bytes += len;
    return d->trailer_bytes > UP_HEAD_MAX ? refuse(d, "trailers too large") : 0;
  }
  int rc = mg_head_append(&d->head, what, at, len, UP_HEAD_MAX, UP_HEADERS_MAX);
  if (rc == MG_ELIMIT) return refuse(d, "head too large");
  FUZZ_CHECK(rc == 0);
  return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len) { return append(p, MG_HEAD_URL, at, len); }
static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  return append(p, MG_HEAD_FIELD, at, len);
}
static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  return append(p, MG_HEAD_VALUE, at, len);
}

static int on_chunk_ext(llhttp_t *p, const char *at, size_t len) {
  drv_t *d = p->data;
  d->chunk_ext += len;
  return d->chunk_ext > MG_CHUNK_EXT_MAX ? refuse(d, "chunk extensions too long") : 0;
}

static int on_chunk_header(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->head_done && d->chunked);
  d->chunk_ext = 0;
  if (p->content_length == 0) {
    mg_head_scan_trailers(&d->scan);
    d->rescan = 1;
    return HPE_PAUSED;
  }
  return 0;
}

/* The head, into the transcript; its headers checked. */
static void put_head(drv_t *d, const llhttp_t *p) {
  FUZZ_CHECK(mg_head_finish(&d->head) == 0);
  mg_str_t reason = mg_head_url(&d->head); /* not forwarded: proxy.c writes its own */
  fz_put_u64(&d->out, p->status_code);
  fz_put_u64(&d->out, (uint64_t)p->http_major << 8 | p->http_minor);
  fz_put_str(&d->out, reason.p, reason.len);
  fz_put_u64(&d->out, d->head.n);
  for (size_t i = 0; i < d->head.n; i++) {
    const mg_header_t *h = &d->head.headers[i];
    fz_put_str(&d->out, h->name.p, h->name.len);
    fz_put_str(&d->out, h->value.p, h->value.len);
  }
}

static int on_headers_complete(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(!d->head_done);
  FUZZ_CHECK(d->scan.done); /* the head llhttp ends, the scan saw end */
  int status = p->status_code;
  if (status < 100 || status > 599) return refuse(d, "status out of range");
  if (status == 101) return refuse(d, "101");
  put_head(d, p);
  if (status < 200) return 1; /* interim: the head is all of it */
  d->head_done = 1;
  /* proxy.c's check_response_headers (interim heads are only dropped) */
  for (size_t i = 0; i < d->head.n; i++)
    if (!mg_http_is_token(d->head.headers[i].name) || mg_http_bad_value(d->head.headers[i].value))
      return refuse(d, "bad header");
  d->chunked = (p->flags & F_CHUNKED) != 0;
  d->sized = (p->flags & F_CONTENT_LENGTH) != 0;
  FUZZ_CHECK(!(d->chunked && d->sized));
  d->clen = d->sized ? p->content_length : 0;
  int bodiless = d->is_head || status == 204 || status == 304;
  fz_put_u64(&d->out, (uint64_t)d->chunked << 2 | (uint64_t)d->sized << 1 | (uint64_t)bodiless);
  fz_put_u64(&d->out, d->clen);
  return bodiless ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->head_done && len > 0); /* never in an interim response */
  FUZZ_CHECK(!d->is_head && p->status_code != 204 && p->status_code != 304);
  fz_put(&d->body, at, len);
  FUZZ_CHECK(!d->sized || d->body.len <= d->clen);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  drv_t *d = p->data;
  FUZZ_CHECK(d->scan.done); /* the head, or the trailer section after a last chunk */
  if (!d->head_done) { /* an interim response: the final one follows */
    mg_head_reset(&d->head);
    mg_head_scan_reset(&d->scan);
    d->rescan = 1;
    return HPE_PAUSED;
  }
  int bodiless = d->is_head || p->status_code == 204 || p->status_code == 304;
  if (bodiless) FUZZ_CHECK(d->body.len == 0);
  else if (d->sized) FUZZ_CHECK(d->body.len == d->clen);
  d->done = 1;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
  .on_status = on_status,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
  .on_chunk_extension_name = on_chunk_ext,
  .on_chunk_extension_value = on_chunk_ext,
  .on_chunk_header = on_chunk_header,
};

/* What upstream.c's link_req does for each request sent on the connection. */
static void link_next(drv_t *d) {
  d->is_head = (d->head_bits >> (d->nresp % 6)) & 1;
  d->nresp++;
  d->head_done = d->done = d->rescan = 0;
  d->chunked = d->sized = 0;
  d->clen = 0;
  d->trailer_bytes = d->chunk_ext = 0;
  d->why = NULL;
  d->body.len = 0;
  mg_head_scan_reset(&d->scan);
  llhttp_init(&d->p, HTTP_RESPONSE, &settings);
  d->p.data = d;
  mg_head_reset(&d->head);
}

static void drv_init(drv_t *d, uint8_t head_bits) {
  memset(d, 0, sizeof(*d));
  d->head_bits = head_bits;
  mg_head_init(&d->head);
  link_next(d);
}

static void drv_dispose(drv_t *d) {
  mg_head_dispose(&d->head);
  fz_free(&d->body);
  fz_free(&d->out);
}

/* A final response ended at stream offset `at`. */
static void response_end(drv_t *d, size_t at) {
  fz_put_str(&d->out, d->body.p, d->body.len);
  fz_put_u64(&d->out, d->trailer_bytes);
  fz_put_u64(&d->out, at);
}

/* One read, as upstream.c's parse takes it; a final response that ends in it is
 * followed by the next one. */
static void feed(drv_t *d, const char *p, size_t n) {
  while (d->end == RUNNING) {
    int rc = scan(d, p, n);
    if (rc < 0) {
      d->end = END_SCAN;
      d->code = rc;
      return;
    }
    d->chunk = p;
    llhttp_errno_t err = llhttp_execute(&d->p, p, n);
    if (err == HPE_OK) {
      d->base += n;
      return;
    }
    const char *pos = llhttp_get_error_pos(&d->p);
    FUZZ_CHECK(pos >= p && pos <= p + n);
    size_t used = (size_t)(pos - p);
    if (err == HPE_PAUSED && (d->rescan || d->done)) {
      p += used;
      n -= used;
      d->base += used;
      if (d->done) {
        response_end(d, d->base);
        link_next(d);
      } else {
        d->rescan = 0;
        llhttp_resume(&d->p);
      }
      continue;
    }
    d->pos = d->base + used;
    if (d->why) {
      d->end = END_REFUSED;
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
  if (d->end != RUNNING) return;
  /* the upstream closed: upstream.c's on_eof */
  llhttp_errno_t err = llhttp_finish(&d->p);
  fz_put_u64(&d->out, 1000 + (uint64_t)err);
  if ((err == HPE_OK || err == HPE_PAUSED) && d->done) response_end(d, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  fz_in_t in = { p, n };
  uint8_t flags = fz_u8(&in);
  uint16_t cut = fz_u16(&in);
  const uint8_t *data = in.p;
  size_t len = in.n;
  size_t every = flags & 64 ? (size_t)(cut & 63) + 1 : 0;

  drv_t a, b;
  drv_init(&a, flags & 63);
  drv_init(&b, flags & 63);
  run(&a, data, len, 0, len);
  run(&b, data, len, every, cut % (len + 1));

  FUZZ_CHECK(fz_eq(&a.out, &b.out));
  FUZZ_CHECK((a.end == RUNNING) == (b.end == RUNNING));
  if (a.end == b.end && a.end == END_SCAN) FUZZ_CHECK(a.code == b.code);
  if (a.end == b.end && a.end == END_REFUSED) FUZZ_CHECK(strcmp(a.why, b.why) == 0);
  if (a.end == END_LLHTTP && b.end == END_LLHTTP) {
    FUZZ_CHECK(a.code == b.code && a.pos == b.pos);
    FUZZ_CHECK(a.head_done == b.head_done && fz_eq(&a.body, &b.body));
  }
  if (a.end == RUNNING) {
    FUZZ_CHECK(a.head_done == b.head_done && a.done == b.done);
    FUZZ_CHECK(fz_eq(&a.body, &b.body));
  }
  drv_dispose(&a);
  drv_dispose(&b);
  return 0;
}
