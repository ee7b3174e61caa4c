#include "h1.h"

#include <string.h>

/* Every llhttp callback below either records into the codec or pauses the parser
 * with the event it found (h->ev), which mg_h1_parse hands to the caller. */

static int refuse(mg_h1_t *h, int status, const char *why) {
  h->error_status = status;
  h->why = why;
  return -1;
}

static int response(const mg_h1_t *h) { return h->p.type == HTTP_RESPONSE; }

static int on_message_begin(llhttp_t *p) {
  mg_h1_t *h = p->data;
  h->head_done = 0;
  h->trailer_bytes = 0;
  h->chunk_ext = 0;
  h->msg.method = -1;
  if (h->begin) {
    h->head = h->begin(h->owner);
    if (!h->head) return refuse(h, response(h) ? 502 : 500, "out of memory");
  } else {
    mg_head_reset(h->head); /* one head for every message of the stream */
  }
  return 0;
}

/* A piece that did not go into the head: trailers (counted, dropped), or a fault. */
static int append_slow(mg_h1_t *h, int what, size_t len, int rc) {
  if (h->head_done) {
    /* trailers come through the same callbacks: the head is complete (slices
     * point into it), so they are counted against the limit, and dropped */
    h->trailer_bytes += len;
    if (h->trailer_bytes > h->lim.head_max)
      return refuse(h, response(h) ? 502 : 431, response(h) ? "trailers larger than the head limit"
                                                           : "trailers larger than limits.head_size");
    return 0;
  }
  if (rc == MG_ELIMIT) {
    if (response(h))
      return refuse(h, 502, h->head->n >= h->lim.headers_max ? "too many header fields" : "response head too large");
    return refuse(h, what == MG_HEAD_URL ? 414 : 431, what == MG_HEAD_URL ? "target too long" : "head too large");
  }
  return refuse(h, response(h) ? 502 : 500, "out of memory");
}

/* Inline in each callback below (what is a constant there): every piece of
 * every head goes through it, both ways. */
static inline int append(llhttp_t *p, int what, const char *at, size_t len) {
  mg_h1_t *h = p->data;
  if (h->head_done) return append_slow(h, what, len, 0);
  int rc = mg_head_append(h->head, what, at, len, h->lim.head_max, h->lim.headers_max);
  if (rc < 0) return append_slow(h, what, len, rc);
  if (what == MG_HEAD_URL && h->lim.uri_max && h->head->url_len > h->lim.uri_max)
    return refuse(h, 414, "target too long");
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  mg_h1_t *h = p->data;
  h->msg.method = p->method; /* known now: logged even if the head fails */
  return append(p, MG_HEAD_URL, at, len);
}
static int on_status(llhttp_t *p, const char *at, size_t len) { return append(p, MG_HEAD_URL, at, len); }
static int on_header_field(llhttp_t *p, const char *at, size_t len) { return append(p, MG_HEAD_FIELD, at, len); }
/* obs-fold, which llhttp takes, was refused before llhttp ran (mg_head_scan) */
static int on_header_value(llhttp_t *p, const char *at, size_t len) { return append(p, MG_HEAD_VALUE, at, len); }

static int on_chunk_ext(llhttp_t *p, const char *at, size_t len) {
  mg_h1_t *h = p->data;
  h->chunk_ext += len;
  if (h->chunk_ext > MG_CHUNK_EXT_MAX)
    return refuse(h, response(h) ? 502 : 400, "chunk extensions longer than 4096 bytes");
  return 0;
}

/* The last chunk (size 0): its trailer section follows. llhttp takes a bare LF
 * as its empty line, and obs-fold in it, as in a head: the parser pauses so the
 * trailer lines are scanned like a head's. */
static int on_chunk_header(llhttp_t *p) {
  mg_h1_t *h = p->data;
  h->chunk_ext = 0;
  if (p->content_length == 0) {
    h->trailers = 1;
    return HPE_PAUSED;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  mg_h1_t *h = p->data;
  mg_h1_msg_t *m = &h->msg;
  if (p->http_major != 1 || p->http_minor > 1) return refuse(h, response(h) ? 502 : 505, "HTTP version not 1.x");
  h->head_done = 1;
  m->http_minor = p->http_minor;
  m->keepalive = llhttp_should_keep_alive(p) ? 1 : 0;
  m->upgrade = 0;
  m->has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  m->content_length = m->has_length ? p->content_length : 0;
  m->body = (p->flags & F_CHUNKED) ? MG_BODY_CHUNKED : m->has_length ? MG_BODY_LENGTH : MG_BODY_NONE;
  if (mg_head_finish(h->head) < 0) return refuse(h, response(h) ? 502 : 500, "out of memory");
  if (!response(h)) {
    m->method = p->method;
    m->upgrade = p->upgrade ? 1 : 0;
    if (p->method == HTTP_CONNECT) { /* llhttp reads no body of CONNECT, whatever it says */
      m->body = MG_BODY_NONE;
      m->content_length = 0;
    }
    h->ev.kind = MG_H1_HEAD;
    /* a request without body ends with its head: llhttp goes straight on to the
     * end of the message, where it pauses; the HEAD is reported, then the END
     * (one parser run less per bodiless request) */
    if (m->body == MG_BODY_NONE || (m->body == MG_BODY_LENGTH && m->content_length == 0)) return 0;
    return HPE_PAUSED;
  }
  int status = p->status_code;
  m->status = status;
  if (status < 100 || status > 599) return refuse(h, 502, "status code out of range (100-599)");
  if (status < 200 && status != 101) {
    /* an interim response ends with its head (RFC 9110 15.2), whatever framing
     * it claims: what follows is the next response, never its content */
    h->ev.kind = MG_H1_INTERIM;
    return 1;
  }
  h->ev.kind = MG_H1_HEAD;
  if (status == 101) return HPE_PAUSED; /* what follows is not HTTP */
  /* no body: llhttp knows that of HEAD only when told, and of 204/304 only when
   * they come without Content-Length. It goes on to the end of the message,
   * where the HEAD event is reported, and the END after it. */
  if (h->no_body || status == 204 || status == 304) return 1;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  mg_h1_t *h = p->data;
  if (len == 0) return 0; /* llhttp repeats a span it paused in, empty, when resumed */
  h->ev.kind = MG_H1_BODY;
  h->ev.p = at;
  h->ev.len = len;
  /* the last piece of a body of known length: llhttp ends the message next, in
   * this run, and pauses there; the piece is reported, then the END */
  if ((p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED) && p->content_length == 0) return 0;
  return HPE_PAUSED;
}

static int on_message_complete(llhttp_t *p) {
  mg_h1_t *h = p->data;
  mg_head_scan_reset(&h->scan); /* the next message's head */
  if (h->ev.kind == MG_H1_INTERIM) {
    h->interim = 1;
    return HPE_PAUSED;
  }
  if (h->ev.kind == MG_H1_HEAD || h->ev.kind == MG_H1_BODY) h->end_pending = 1; /* reported first, END next */
  else h->ev.kind = MG_H1_END;
  if (!response(h) && p->upgrade) h->upgraded = 1;
  return HPE_PAUSED;
}

/* One table for both directions: llhttp calls on_url only for requests and
 * on_status only for responses. */
static const llhttp_settings_t settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
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

void mg_h1_init(mg_h1_t *h, int type, const mg_h1_limits_t *lim, mg_h1_begin_fn begin, mg_head_t *head,
                void *owner) {
  /* field by field: an upstream connection re-initialises its codec for every
   * response, and most of the struct is llhttp's, which llhttp_init sets */
  llhttp_init(&h->p, type == MG_H1_RESPONSE ? HTTP_RESPONSE : HTTP_REQUEST, &settings);
  h->msg = (mg_h1_msg_t){ .method = -1 };
  h->trailer_bytes = h->chunk_ext = 0;
  h->ev.kind = MG_H1_NEED;
  h->error_status = 0;
  h->why = NULL;
  h->head_done = h->paused = h->end_pending = h->interim = h->trailers = h->no_body = h->upgraded = 0;
  h->p.data = h;
  h->lim = *lim;
  h->begin = begin;
  h->head = head;
  h->owner = owner;
  mg_head_scan_reset(&h->scan);
}

static void error_event(mg_h1_t *h, llhttp_errno_t err, mg_h1_ev_t *ev) {
  ev->kind = MG_H1_ERROR;
  ev->p = NULL;
  ev->len = 0;
  if (h->error_status) {
    ev->status = h->error_status;
    ev->why = h->why;
    return;
  }
  ev->status = response(h) ? 502 : err == HPE_INVALID_VERSION ? 505 : 400;
  const char *reason = llhttp_get_error_reason(&h->p);
  ev->why = reason && *reason ? reason : llhttp_errno_name(err);
}

size_t mg_h1_parse(mg_h1_t *h, const char *p, size_t n, mg_h1_ev_t *ev) {
  ev->p = NULL;
  ev->len = 0;
  if (h->end_pending) { /* reported HEAD first; the message ended with it */
    h->end_pending = 0;
    ev->kind = MG_H1_END;
    return 0;
  }
  if (h->upgraded) { /* nothing after an upgrade request is HTTP */
    ev->kind = MG_H1_UPGRADE;
    return 0;
  }
  if (h->interim) { /* the next response head starts afresh */
    h->interim = 0;
    h->head_done = 0;
    h->trailer_bytes = 0;
    mg_head_reset(h->head);
  }
  size_t total = 0;
  for (;;) {
    if (h->paused) {
      llhttp_resume(&h->p);
      h->paused = 0;
    }
    /* The line scan goes first: llhttp would take what it refuses. When it
     * finds a fault, llhttp still parses the bytes before the faulty one, so
     * that the first fault in the stream decides the answer however the bytes
     * were cut into reads. llhttp cannot pause in there: a head or trailer
     * section is never paused inside. */
    mg_head_scan_t before = h->scan;
    int scan = mg_head_scan(&h->scan, p, n);
    size_t upto = n;
    if (scan < 0) {
      h->scan = before;
      upto = 0;
      while (upto < n && mg_head_scan(&h->scan, p + upto, 1) >= 0) upto++;
    }
    h->ev.kind = MG_H1_NEED;
    h->error_status = 0;
    h->why = NULL;
    llhttp_errno_t err = llhttp_execute(&h->p, p, upto);
    if (scan < 0 && err == HPE_OK) {
      ev->kind = MG_H1_ERROR;
      ev->status = response(h) ? 502 : 400;
      ev->why = mg_head_scan_error(scan);
      return total + upto;
    }
    n = upto; /* an error or a pause came first: it is what counts */
    size_t used = n;
    if (err != HPE_OK) {
      const char *pos = llhttp_get_error_pos(&h->p);
      used = pos && pos >= p && pos <= p + n ? (size_t)(pos - p) : n;
    }
    total += used;
    if (err == HPE_OK) {
      ev->kind = MG_H1_NEED;
      return total;
    }
    if (err == HPE_PAUSED) {
      h->paused = 1;
      p += used;
      n -= used;
      if (h->trailers) { /* the trailer section is scanned like a head, then parsed */
        h->trailers = 0;
        mg_head_scan_trailers(&h->scan);
        continue;
      }
      *ev = h->ev;
      if (ev->kind == MG_H1_NEED) ev->kind = MG_H1_END; /* cannot happen: a pause has its event */
      return total;
    }
    if (err == HPE_PAUSED_UPGRADE) {
      h->upgraded = 1;
      ev->kind = MG_H1_UPGRADE;
      return total;
    }
    error_event(h, err, ev);
    return total;
  }
}

int mg_h1_finish(mg_h1_t *h, mg_h1_ev_t *ev) {
  ev->p = NULL;
  ev->len = 0;
  if (h->paused) {
    llhttp_resume(&h->p);
    h->paused = 0;
  }
  h->ev.kind = MG_H1_NEED;
  h->error_status = 0;
  h->why = NULL;
  llhttp_errno_t err = llhttp_finish(&h->p);
  if (err == HPE_PAUSED) { /* a body framed by the close ended */
    h->paused = 1;
    *ev = h->ev;
    return ev->kind;
  }
  if (err == HPE_OK) {
    ev->kind = MG_H1_NEED;
    return MG_H1_NEED;
  }
  error_event(h, err, ev);
  return MG_H1_ERROR;
}

/* What the head said (msg.keepalive, from llhttp_should_keep_alive when it was
 * complete): the message's end adds nothing to it, so it is not asked twice. */
int mg_h1_keepalive(const mg_h1_t *h) { return h->msg.keepalive; }
