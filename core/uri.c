/* Path normalization and Host checks: see uri.h for the contracts. */
#include "uri.h"

#include <arpa/inet.h>
#include <stdint.h>

static int is_alpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

/* RFC 3986 2.3: the characters whose escapes mean the same as the character. */
static int is_unreserved(unsigned char c) {
  return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static int is_ctl(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

/* A raw byte that may not appear in a path. A space or control byte cannot be in a
 * request line anyway; '#' and '?' would end the path; '\\' is a separator to some
 * origins (IIS, Windows file servers), so /a\..\admin would walk past routing. */
static int bad_raw_path_byte(unsigned char c) {
  return c < 0x21 || c == 0x7f || c == '#' || c == '?' || c == '\\';
}

/* Decodes one segment of the path (in[i..] up to the next '/' or the end) into
 * out[o..]. Returns the index in `in` where the segment ends, or SIZE_MAX when the
 * segment is refused; *seglen is the number of bytes written. The decoded segment
 * never holds a '/', since %2F is refused. */
static size_t decode_segment(const char *in, size_t len, size_t i, char *out, size_t o,
                             size_t *seglen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t start = o;
  while (i < len && in[i] != '/') {
    unsigned char c = (unsigned char)in[i];
    if (c != '%') {
      if (bad_raw_path_byte(c)) return SIZE_MAX;
      out[o++] = (char)c;
      i++;
      continue;
    }
    int hi = len - i > 2 ? mg_hexval((unsigned char)in[i + 1]) : -1;
    int lo = hi >= 0 ? mg_hexval((unsigned char)in[i + 2]) : -1;
    if (lo < 0) return SIZE_MAX; /* '%' without two hex digits */
    unsigned char v = (unsigned char)(hi * 16 + lo);
    if (v == '/' || v == '\\' || is_ctl(v)) return SIZE_MAX;
    if (is_unreserved(v)) {
      out[o++] = (char)v;
    } else {
      out[o++] = '%';
      out[o++] = hex[hi];
      out[o++] = hex[lo];
    }
    i += 3;
  }
  *seglen = o - start;
  return i;
}

/* Where the output goes back to when a '..' removes the last segment of out[0..o):
 * the position of its last '/', or 0 at the root. */
static size_t pop_segment(const char *out, size_t o) {
  while (o > 0 && out[o - 1] != '/') o--;
  return o > 0 ? o - 1 : 0;
}

/* One pass, segment by segment. Between segments out[0..o) is a normalized path
 * with no trailing slash ("" for the root); each segment is decoded behind a '/'
 * before it is looked at, so a dot segment written as %2E is recognized. Only the
 * last segment decides whether the result ends with a slash. In place is safe:
 * o stays behind i, as each output byte comes from at least one input byte. */
int mg_uri_normalize_path(const char *in, size_t len, char *out, size_t *outlen) {
  if (len == 0 || in[0] != '/') return MG_EINVAL;
  size_t i = 0, o = 0;
  while (i < len) {
    while (i < len && in[i] == '/') i++; /* merge a run of slashes */
    size_t n = 0;
    out[o] = '/';
    i = decode_segment(in, len, i, out, o + 1, &n);
    if (i == SIZE_MAX) return MG_EINVAL;
    const char *seg = out + o + 1;
    int last = i >= len;
    /* Servlet containers (Tomcat, Jetty) cut ";params" off each segment before
     * they resolve dot segments, so "..;x" is ".." and ";x" an empty segment to
     * them: resolved here the same way (their params dropped), or /x/..;/admin
     * would reach /admin past a route. Params on a named segment stay. */
    const char *semi = memchr(seg, ';', n);
    size_t name = semi ? (size_t)(semi - seg) : n;
    if (semi && name == 0) {
      o += last; /* "/;x/a" is "/a"; a last "/a/;x" is "/a/" */
    } else if (name == 1 && seg[0] == '.') {
      o += last; /* "/a/." is "/a/"; elsewhere "." is dropped */
    } else if (name == 2 && seg[0] == '.' && seg[1] == '.') {
      o = pop_segment(out, o) + last; /* "/a/b/.." is "/a/" */
    } else {
      o += 1 + n; /* a name, or the empty segment after a trailing slash */
    }
  }
  *outlen = o;
  return 0;
}

void mg_uri_split_target(mg_str_t target, mg_str_t *path, mg_str_t *query) {
  const char *q = target.len ? memchr(target.p, '?', target.len) : NULL;
  size_t plen = q ? (size_t)(q - target.p) : target.len;
  *path = (mg_str_t){ target.p, plen };
  *query = (mg_str_t){ target.p + plen, target.len - plen };
}

int mg_uri_normalize_target(const char *in, size_t len, char *out, size_t *outlen) {
  mg_str_t path, query;
  mg_uri_split_target((mg_str_t){ in, len }, &path, &query);
  for (size_t i = 0; i < query.len; i++) {
    unsigned char c = (unsigned char)query.p[i];
    if (c < 0x21 || c == 0x7f || c == '#') return MG_EINVAL;
    if (c == '%' && (query.len - i < 3 || mg_hexval((unsigned char)query.p[i + 1]) < 0 ||
                     mg_hexval((unsigned char)query.p[i + 2]) < 0))
      return MG_EINVAL;
  }
  size_t n = 0;
  int rc = mg_uri_normalize_path(path.p, path.len, out, &n);
  if (rc) return rc;
  /* n <= path.len, so the query moves left or stays: memmove for the in-place case */
  memmove(out + n, query.p, query.len);
  *outlen = n + query.len;
  return 0;
}

/* A reg-name as routing accepts it: letters, digits, '-', '_', '.', no empty label
 * (no leading or trailing '.', no ".."); the caller strips the one trailing '.'
 * of a fully qualified name first. */
static int check_reg_name(const char *p, size_t len) {
  if (len == 0 || p[0] == '.' || p[len - 1] == '.') return MG_EINVAL;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)p[i];
    if (!(is_alpha(c) || is_digit(c) || c == '-' || c == '_' || c == '.')) return MG_EINVAL;
    if (c == '.' && i > 0 && p[i - 1] == '.') return MG_EINVAL;
  }
  return 0;
}

/* "[...]" with only hex digits, ':' and '.' inside, and an address inet_pton takes
 * (which needs a NUL-terminated copy; the longest text form is 45 bytes). */
static int check_ipv6_literal(const char *p, size_t len) {
  char buf[INET6_ADDRSTRLEN];
  unsigned char addr[16];
  if (len < 2 || p[0] != '[' || p[len - 1] != ']' || len - 2 >= sizeof(buf)) return MG_EINVAL;
  for (size_t i = 1; i + 1 < len; i++) {
    unsigned char c = (unsigned char)p[i];
    if (!(mg_hexval(c) >= 0 || c == ':' || c == '.')) return MG_EINVAL;
  }
  memcpy(buf, p + 1, len - 2);
  buf[len - 2] = '\0';
  return inet_pton(AF_INET6, buf, addr) == 1 ? 0 : MG_EINVAL;
}

/* 1 to 5 digits, at most 65535; "" (after a ':') is no port. */
static int parse_port(const char *p, size_t len, int *port) {
  if (len == 0) {
    *port = -1;
    return 0;
  }
  if (len > 5) return MG_EINVAL;
  int v = 0;
  for (size_t i = 0; i < len; i++) {
    if (!is_digit((unsigned char)p[i])) return MG_EINVAL;
    v = v * 10 + (p[i] - '0');
  }
  if (v > 65535) return MG_EINVAL;
  *port = v;
  return 0;
}

int mg_uri_check_host(mg_str_t host, mg_str_t *name, int *port) {
  if (host.len == 0) return MG_EINVAL;
  /* The port starts after the last ':', except inside an IPv6 literal's brackets. */
  size_t nlen = host.len;
  if (host.p[0] == '[') {
    const char *rb = memchr(host.p, ']', host.len);
    if (!rb) return MG_EINVAL;
    nlen = (size_t)(rb - host.p) + 1;
    if (nlen < host.len && host.p[nlen] != ':') return MG_EINVAL;
  } else {
    const char *colon = memchr(host.p, ':', host.len);
    if (colon) nlen = (size_t)(colon - host.p);
  }
  int prt = -1;
  if (nlen < host.len && parse_port(host.p + nlen + 1, host.len - nlen - 1, &prt)) return MG_EINVAL;
  if (host.p[0] == '[') {
    if (check_ipv6_literal(host.p, nlen)) return MG_EINVAL;
  } else {
    /* one trailing dot is the root label of a fully qualified name */
    if (nlen > 1 && host.p[nlen - 1] == '.') nlen--;
    if (check_reg_name(host.p, nlen)) return MG_EINVAL;
  }
  if (name) *name = (mg_str_t){ host.p, nlen };
  if (port) *port = prt;
  return 0;
}
