/* HTTP/1.1 message heads on top of llhttp: header storage that survives the read
 * buffer, header classification (hop-by-hop), reason phrases. */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include "arena.h"
#include "mg.h"

typedef struct {
  mg_str_t name, value;
} mg_header_t;

/* A message head being parsed: the target URL (or status text) and header bytes are
 * copied out of the per-worker read buffer into `buf` as llhttp reports them (they
 * may arrive split across reads). Offsets, not pointers, until mg_head_finish, so
 * the buffer may grow. Owned by the request; freed by mg_head_dispose. */
typedef struct {
  char *buf;
  size_t len, cap;
  struct { uint32_t no, nl, vo, vl; } *ent;
  size_t n, ncap;
  uint32_t url_off, url_len;
  int last;             /* MG_HEAD_URL / FIELD / VALUE: what was appended last */
  mg_header_t *headers; /* after mg_head_finish: n slices into buf (or the arena) */
  int finished;         /* mg_head_finish ran since the last reset: headers are valid */
  size_t hcap;          /* room in headers */
} mg_head_t;

enum { MG_HEAD_NONE, MG_HEAD_URL, MG_HEAD_FIELD, MG_HEAD_VALUE };

void mg_head_init(mg_head_t *h);
void mg_head_reset(mg_head_t *h); /* empties it, keeps the memory */
void mg_head_dispose(mg_head_t *h);
/* The slow paths of mg_head_append: room for `need` more bytes in buf, room for
 * one more entry. 0 or MG_ENOMEM. */
int mg_head_grow(mg_head_t *h, size_t need);
int mg_head_grow_ent(mg_head_t *h);
/* Appends a piece of URL/field/value. MG_ELIMIT when buf would pass max_bytes or the
 * header count would pass max_headers; MG_ENOMEM. Inline: the codec calls it for
 * every piece of every head, with `what` a constant, which folds its branches. */
static inline int mg_head_append(mg_head_t *h, int what, const char *p, size_t len, size_t max_bytes,
                                 size_t max_headers) {
  if (h->len + len > max_bytes) return MG_ELIMIT;
  if (what == MG_HEAD_FIELD) {
    if (h->last != MG_HEAD_FIELD) { /* a new header */
      if (h->n >= max_headers) return MG_ELIMIT;
      if (h->n == h->ncap && mg_head_grow_ent(h) < 0) return MG_ENOMEM;
      h->ent[h->n].no = (uint32_t)h->len;
      h->ent[h->n].nl = 0;
      h->ent[h->n].vo = (uint32_t)h->len;
      h->ent[h->n].vl = 0;
      h->n++;
    }
  } else if (what == MG_HEAD_VALUE) {
    if (h->last != MG_HEAD_VALUE && h->n > 0) h->ent[h->n - 1].vo = (uint32_t)h->len;
  } else if (what == MG_HEAD_URL && h->last != MG_HEAD_URL) {
    h->url_off = (uint32_t)h->len;
  }
  if (len) { /* an empty piece (an empty URL llhttp reports) may find no buffer yet */
    if (h->len + len > h->cap && mg_head_grow(h, len) < 0) return MG_ENOMEM;
    memcpy(h->buf + h->len, p, len);
  }
  h->len += len;
  if (what == MG_HEAD_FIELD) h->ent[h->n - 1].nl += (uint32_t)len;
  else if (what == MG_HEAD_VALUE) {
    if (h->n > 0) h->ent[h->n - 1].vl += (uint32_t)len;
  } else if (what == MG_HEAD_URL) h->url_len += (uint32_t)len;
  h->last = what;
  return 0;
}
int mg_head_finish(mg_head_t *h);
static inline mg_str_t mg_head_url(const mg_head_t *h) { /* "" when nothing was appended */
  return (mg_str_t){ h->buf ? h->buf + h->url_off : "", h->url_len };
}
/* First header with that name (case-insensitive), or NULL. */
const mg_header_t *mg_head_get(const mg_head_t *h, mg_str_t name);

/* Changes a finished head: op 0 replaces every `name` header by one with `value`,
 * 1 adds one, 2 removes them all. Name and value are copied into `a`. */
int mg_head_set(mg_head_t *h, mg_arena_t *a, mg_str_t name, mg_str_t value, int op);

/* Line framing of a message head, checked on the raw bytes before llhttp sees them
 * (llhttp, even strict, takes a bare LF after the start line and "CRLF LF" as the
 * end of the head). Every line of a head must end in CRLF, a CR must be followed
 * by LF, and no line after the start line may begin with SP or HT (obs-fold, or
 * whitespace before the first header: RFC 9112 2.2 and 5.2). Empty lines before
 * the start line are skipped, as llhttp does. State survives split reads; reset it
 * (mg_head_scan_reset) when a new message begins. */
typedef struct {
  uint32_t line_len; /* bytes in the current line so far */
  uint32_t lines;    /* complete non-empty lines seen */
  uint8_t cr;        /* the last byte was CR */
  uint8_t done;      /* the head ended: the body is not scanned */
} mg_head_scan_t;

/* Chunk extensions are skipped, but not without end: a peer could otherwise hold a
 * connection with one endless chunk-size line. Bytes per chunk line, both ways. */
#define MG_CHUNK_EXT_MAX 4096

enum { MG_SCAN_MORE = 0, MG_SCAN_END = 1, MG_SCAN_BARE_LF = -1, MG_SCAN_BARE_CR = -2, MG_SCAN_FOLD = -3 };

static inline void mg_head_scan_reset(mg_head_scan_t *s) { memset(s, 0, sizeof(*s)); }
/* The trailer section of a chunked body is a field section like a head without
 * a start line: its lines are checked the same way from the byte after the last
 * chunk's size line (an empty first line ends it). */
static inline void mg_head_scan_trailers(mg_head_scan_t *s) {
  memset(s, 0, sizeof(*s));
  s->lines = 1;
}
/* Scans p[0..n) (stopping at the end of the head). Returns MG_SCAN_MORE (the head
 * goes on), MG_SCAN_END (the head ended within p[0..n)), or
 * a negative MG_SCAN_* naming the fault. Once done, returns MG_SCAN_END at once
 * (the body is not looked at). */
int mg_head_scan(mg_head_scan_t *s, const char *p, size_t n);
const char *mg_head_scan_error(int rc);

/* True when `n` is the header name `lower` (given in lower case, of length len),
 * ASCII letters compared without case (what mg_str_caseeq does), inline: the
 * header names on the request path are checked against a few names each, after
 * a switch on their length. */
static inline int mg_http_name_is(mg_str_t n, const char *lower, size_t len) {
  if (n.len != len) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)n.p[i];
    if ((unsigned)(c - 'A') < 26u) c = (unsigned char)(c + ('a' - 'A'));
    if (c != (unsigned char)lower[i]) return 0;
  }
  return 1;
}
#define MG_NAME_IS(n, lit) mg_http_name_is((n), (lit), sizeof(lit) - 1)

/* Headers a proxy never forwards (RFC 9110 7.6.1 and the usual extras). */
int mg_http_is_hop_by_hop(mg_str_t name);
/* The next element of a comma-separated list (spaces around it trimmed, empty
 * elements skipped), from *pos on: 1 and *tok, or 0 at the end. */
int mg_http_next_token(mg_str_t list, size_t *pos, mg_str_t *tok);
/* True if `name` is one of the comma-separated tokens of a Connection header value. */
int mg_http_token_in_list(mg_str_t list, mg_str_t name);
/* True when the value holds a byte no header value may carry (NUL, CR, LF). */
int mg_http_bad_value(mg_str_t v);
/* True when every byte is a tchar (RFC 9110 5.6.2) and there is at least one. */
int mg_http_is_token(mg_str_t s);
/* True when c is a tchar (RFC 9110 5.6.2). */
int mg_http_is_tchar(unsigned char c);
/* s without optional whitespace (spaces and tabs, RFC 9110 5.6.3) at either end. */
static inline mg_str_t mg_http_trim(mg_str_t s) {
  while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) s.p++, s.len--;
  while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t')) s.len--;
  return s;
}
const char *mg_http_reason(int status);

/* A Date header line ("Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n", IMF-fixdate, RFC
 * 9110 5.6.7) for the current second. The cache is the caller's (one per worker):
 * formatted once per second. Returns the line's length (39). */
typedef struct {
  int64_t sec;
  size_t len;
  char line[48];
} mg_http_date_t;
size_t mg_http_date_line(mg_http_date_t *d, const char **line);
/* True when the head text (header lines) has a header of that name (lowercase). */
int mg_http_head_has(const char *head, size_t len, mg_str_t lname);

#endif
