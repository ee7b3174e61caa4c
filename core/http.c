#include "http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

void mg_head_init(mg_head_t *h) { memset(h, 0, sizeof(*h)); }

void mg_head_reset(mg_head_t *h) {
  h->len = 0;
  h->n = 0;
  h->url_off = h->url_len = 0;
  h->last = MG_HEAD_NONE;
  h->finished = 0;
}

void mg_head_dispose(mg_head_t *h) {
  free(h->buf);
  free(h->ent);
  free(h->headers);
  mg_head_init(h);
}

int mg_head_grow(mg_head_t *h, size_t need) {
  if (h->len + need <= h->cap) return 0;
  size_t cap = h->cap ? h->cap * 2 : 1024;
  while (cap < h->len + need) cap *= 2;
  char *b = realloc(h->buf, cap);
  if (!b) return MG_ENOMEM;
  h->buf = b;
  h->cap = cap;
  return 0;
}

int mg_head_grow_ent(mg_head_t *h) {
  size_t ncap = h->ncap ? h->ncap * 2 : 16;
  void *e = realloc(h->ent, ncap * sizeof(*h->ent));
  if (!e) return MG_ENOMEM;
  h->ent = e;
  h->ncap = ncap;
  return 0;
}

int mg_head_finish(mg_head_t *h) {
  /* room for a few headers that hooks add without a realloc each */
  if (!h->headers || h->hcap < h->n + 8) {
    size_t cap = h->n + 8;
    mg_header_t *hs = realloc(h->headers, cap * sizeof(*hs));
    if (!hs) return MG_ENOMEM;
    h->headers = hs;
    h->hcap = cap;
  }
  /* a head of empty pieces only (an empty reason phrase, a header ":") has no
   * buffer yet: its slices point at an empty string, never at NULL + 0 */
  const char *buf = h->buf ? h->buf : "";
  for (size_t i = 0; i < h->n; i++) {
    h->headers[i].name = (mg_str_t){ buf + h->ent[i].no, h->ent[i].nl };
    /* llhttp hands values with leading whitespace stripped; strip trailing too */
    size_t vl = h->ent[i].vl;
    const char *v = buf + h->ent[i].vo;
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
    h->headers[i].value = (mg_str_t){ v, vl };
  }
  h->finished = 1;
  return 0;
}

const mg_header_t *mg_head_get(const mg_head_t *h, mg_str_t name) {
  for (size_t i = 0; i < h->n; i++)
    if (mg_str_caseeq(h->headers[i].name, name)) return &h->headers[i];
  return NULL;
}

int mg_head_set(mg_head_t *h, mg_arena_t *a, mg_str_t name, mg_str_t value, int op) {
  if (op != 1) { /* drop the fields of that name: find the first, then close up from it */
    size_t i = 0;
    while (i < h->n && !mg_str_caseeq(h->headers[i].name, name)) i++;
    if (i < h->n) {
      size_t j = i;
      for (i++; i < h->n; i++)
        if (!mg_str_caseeq(h->headers[i].name, name)) h->headers[j++] = h->headers[i];
      h->n = j;
    }
  }
  if (op == 2) return 0;
  if (h->n == h->hcap) {
    size_t cap = h->hcap * 2 + 8;
    mg_header_t *hs = realloc(h->headers, cap * sizeof(*hs));
    if (!hs) return MG_ENOMEM;
    h->headers = hs;
    h->hcap = cap;
  }
  char *n = mg_arena_strdup(a, name.p, name.len);
  char *v = mg_arena_strdup(a, value.p, value.len);
  if (!n || !v) return MG_ENOMEM;
  h->headers[h->n].name = (mg_str_t){ n, name.len };
  h->headers[h->n].value = (mg_str_t){ v, value.len };
  h->n++;
  return 0;
}

/* Runs once over every head byte both ways, so it goes line by line with memchr
 * (vectorized in libc) rather than byte by byte: per line, find the CR, check no
 * LF came before it, then look at the byte after it. */
int mg_head_scan(mg_head_scan_t *s, const char *p, size_t n) {
  if (s->done) return MG_SCAN_END;
  size_t i = 0;
  while (i < n) {
    if (s->cr) { /* the byte after a CR: LF, ending the line */
      if (p[i++] != '\n') return MG_SCAN_BARE_CR;
      s->cr = 0;
      if (s->line_len == 0) {
        if (s->lines == 0) continue; /* empty lines before the start line */
        s->done = 1;
        return MG_SCAN_END;
      }
      s->lines++;
      s->line_len = 0;
      continue;
    }
    if (s->line_len == 0 && s->lines > 0 && (p[i] == ' ' || p[i] == '\t')) return MG_SCAN_FOLD;
    const char *cr = memchr(p + i, '\r', n - i);
    size_t end = cr ? (size_t)(cr - p) : n;
    if (end > i && memchr(p + i, '\n', end - i)) return MG_SCAN_BARE_LF;
    size_t grown = s->line_len + (end - i);
    s->line_len = grown > UINT32_MAX ? UINT32_MAX : (uint32_t)grown;
    if (!cr) return MG_SCAN_MORE;
    s->cr = 1;
    i = end + 1;
  }
  return MG_SCAN_MORE;
}

const char *mg_head_scan_error(int rc) {
  switch (rc) {
  case MG_SCAN_BARE_LF: return "a line ends in LF without CR";
  case MG_SCAN_BARE_CR: return "CR not followed by LF";
  case MG_SCAN_FOLD: return "a header line starts with whitespace (obs-fold)";
  default: return "ok";
  }
}

/* Asked of every header both ways: by length first, so most names are told
 * apart without a compare. */
int mg_http_is_hop_by_hop(mg_str_t n) {
  switch (n.len) {
  case 2: return MG_NAME_IS(n, "te");
  case 7: return MG_NAME_IS(n, "trailer") || MG_NAME_IS(n, "upgrade");
  case 10: return MG_NAME_IS(n, "connection") || MG_NAME_IS(n, "keep-alive");
  case 16: return MG_NAME_IS(n, "proxy-connection");
  case 17: return MG_NAME_IS(n, "transfer-encoding");
  case 18: return MG_NAME_IS(n, "proxy-authenticate");
  case 19: return MG_NAME_IS(n, "proxy-authorization");
  default: return 0;
  }
}

int mg_http_next_token(mg_str_t list, size_t *pos, mg_str_t *tok) {
  const char *p = list.p + *pos, *end = list.p + list.len;
  while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) p++;
  if (p == end) {
    *pos = list.len;
    return 0;
  }
  const char *s = p;
  while (p < end && *p != ',') p++;
  const char *e = p;
  while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
  *tok = (mg_str_t){ s, (size_t)(e - s) };
  *pos = (size_t)(p - list.p);
  return 1;
}

int mg_http_token_in_list(mg_str_t list, mg_str_t name) {
  size_t pos = 0;
  mg_str_t tok;
  while (mg_http_next_token(list, &pos, &tok))
    if (mg_str_caseeq(tok, name)) return 1;
  return 0;
}

/* 8 bytes at a time: a byte of x is zero when (x - 0x01..) & ~x & 0x80.. has its
 * top bit (the classic test; it can flag a 0x01 byte after a zero one, never
 * miss one), so x ^ (byte repeated) finds that byte; the rest one by one. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static inline int has_zero(uint64_t x) { return ((x - ONES) & ~x & HIGHS) != 0; }

int mg_http_bad_value(mg_str_t v) {
  size_t i = 0;
  for (; i + 8 <= v.len; i += 8) {
    uint64_t x;
    memcpy(&x, v.p + i, 8);
    if (has_zero(x) || has_zero(x ^ (ONES * '\r')) || has_zero(x ^ (ONES * '\n'))) break;
  }
  for (; i < v.len; i++) {
    unsigned char c = (unsigned char)v.p[i];
    if (c <= '\r' && (c == 0 || c == '\r' || c == '\n')) return 1; /* one compare for most bytes */
  }
  return 0;
}

/* tchar (RFC 9110 5.6.2), one bit per byte value: checked for every header name
 * both ways, so a table rather than a search per byte */
static const uint8_t tchar[256] = {
  ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
  ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
  ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
  ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1,
  ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
  ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
  ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
  ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
  ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int mg_http_is_tchar(unsigned char c) { return tchar[c]; }

int mg_http_is_token(mg_str_t s) {
  if (s.len == 0) return 0;
  for (size_t i = 0; i < s.len; i++)
    if (!tchar[(unsigned char)s.p[i]]) return 0;
  return 1;
}

const char *mg_http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 103: return "Early Hints";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 203: return "Non-Authoritative Information";
  case 204: return "No Content";
  case 205: return "Reset Content";
  case 206: return "Partial Content";
  case 300: return "Multiple Choices";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 422: return "Unprocessable Content";
  case 425: return "Too Early";
  case 426: return "Upgrade Required";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 451: return "Unavailable For Legal Reasons";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}

size_t mg_http_date_line(mg_http_date_t *d, const char **line) {
  static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
  static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
  time_t now = time(NULL);
  if (d->sec != (int64_t)now || d->line[0] == '\0') {
    struct tm tm;
    gmtime_r(&now, &tm);
    int n = snprintf(d->line, sizeof(d->line), "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                     days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
    d->len = n > 0 && (size_t)n < sizeof(d->line) ? (size_t)n : 0;
    d->sec = (int64_t)now;
  }
  *line = d->line;
  return d->len;
}

int mg_http_head_has(const char *head, size_t len, mg_str_t lname) {
  for (size_t i = 0; i + lname.len + 1 < len; i++) {
    if (head[i] != '\n') continue;
    const char *n = head + i + 1;
    if ((size_t)(head + len - n) > lname.len && n[lname.len] == ':' &&
        mg_str_caseeq((mg_str_t){ n, lname.len }, lname))
      return 1;
  }
  return 0;
}
