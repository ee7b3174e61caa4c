/* core/uri.h: the canonical request path that routing sees, and the Host check.
 * The whole input is tried as a request target and as a Host value.
 *
 * Target (mg_uri_normalize_target, and mg_uri_normalize_path on its path):
 *  - the result is that of a model written from the contract in uri.h, which
 *    splits the path into segments, decodes them and resolves dot segments with a
 *    stack (the real one works in one pass, in place);
 *  - in place and into another buffer give the same result; the output is never
 *    longer than the input (the buffer has exactly the input's size, for ASan);
 *  - normalizing the output again gives the same output (idempotent);
 *  - the output path starts with '/', has no "//", no "." or ".." segment (also
 *    written "..;x"), no segment starting with ';', no NUL, control byte, '\\',
 *    '#' or '?', and only escapes of reserved bytes, upper-case; the query comes
 *    through unchanged;
 *  - a target of plain path bytes without '%' is always accepted.
 * Host (mg_uri_check_host): agrees with a model of its contract; the name is a
 * slice of the input that checks again to itself; the port matches the digits.
 *
 * fuzz-options: -max_len=2048 -dict=spec/fuzz/uri.dict */
#include <arpa/inet.h>

#include "fuzz.h"
#include "uri.h"

static int hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int unreserved(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

static int bad_raw(uint8_t c) {
  return c < 0x21 || c == 0x7f || c == '#' || c == '?' || c == '\\';
}

/* One segment decoded as uri.h says, into seg (room for n bytes). -1 if refused. */
static long decode(const uint8_t *in, size_t n, char *seg) {
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    if (in[i] != '%') {
      if (bad_raw(in[i])) return -1;
      seg[o++] = (char)in[i++];
      continue;
    }
    if (n - i < 3 || hexval(in[i + 1]) < 0 || hexval(in[i + 2]) < 0) return -1;
    uint8_t v = (uint8_t)(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
    if (v == '/' || v == '\\' || v < 0x20 || v == 0x7f) return -1;
    if (unreserved(v)) {
      seg[o++] = (char)v;
    } else {
      static const char hex[] = "0123456789ABCDEF";
      seg[o++] = '%';
      seg[o++] = hex[v >> 4];
      seg[o++] = hex[v & 15];
    }
    i += 3;
  }
  return (long)o;
}

/* The path as uri.h describes it: segments between slashes (empty ones dropped,
 * except a last one: a trailing slash), each decoded; its name is the part before
 * a ';'. A segment with an empty name (";x"), "." or ".." is not kept, ".." also
 * drops the segment before it; when the last segment is not kept, the path ends
 * in '/'. Returns the output length or -1. */
static long model_path(const uint8_t *in, size_t n, char *out) {
  if (n == 0 || in[0] != '/') return -1;
  size_t *start = malloc(n * sizeof(size_t)); /* stack of kept segments: offsets in out */
  char *seg = malloc(n);
  FUZZ_CHECK(start && seg);
  size_t depth = 0, o = 0;
  int trailing = 0;
  size_t i = 1;
  for (;;) {
    size_t j = i;
    while (j < n && in[j] != '/') j++;
    int last = j >= n;
    long sl = decode(in + i, j - i, seg);
    if (sl < 0) {
      o = (size_t)-1;
      break;
    }
    const char *semi = memchr(seg, ';', (size_t)sl);
    size_t name = semi ? (size_t)(semi - seg) : (size_t)sl;
    if (sl == 0) {
      if (last) trailing = 1;
    } else if (name == 0 || (name == 1 && seg[0] == '.')) {
      if (last) trailing = 1;
    } else if (name == 2 && seg[0] == '.' && seg[1] == '.') {
      if (depth > 0) o = start[--depth];
      if (last) trailing = 1;
    } else {
      start[depth++] = o;
      out[o++] = '/';
      memcpy(out + o, seg, (size_t)sl);
      o += (size_t)sl;
      if (last) trailing = 0;
    }
    if (last) break;
    i = j + 1;
  }
  if (o != (size_t)-1 && (trailing || o == 0)) out[o++] = '/';
  free(start);
  free(seg);
  return o == (size_t)-1 ? -1 : (long)o;
}

/* The properties of a normalized path out[0..n). */
static void check_path(const char *p, size_t n) {
  FUZZ_CHECK(n > 0 && p[0] == '/');
  for (size_t i = 0; i < n; i++) {
    uint8_t c = (uint8_t)p[i];
    FUZZ_CHECK(!bad_raw(c));
    if (c == '%') {
      FUZZ_CHECK(i + 2 < n);
      int hi = hexval((uint8_t)p[i + 1]), lo = hexval((uint8_t)p[i + 2]);
      FUZZ_CHECK(hi >= 0 && lo >= 0 && !(p[i + 1] >= 'a' && p[i + 1] <= 'f') &&
                 !(p[i + 2] >= 'a' && p[i + 2] <= 'f'));
      FUZZ_CHECK(!unreserved((uint8_t)(hi * 16 + lo)));
    }
    if (c != '/') continue;
    /* the segment after this slash */
    size_t j = i + 1;
    while (j < n && p[j] != '/') j++;
    size_t seg = j - i - 1;
    const char *s = p + i + 1;
    const char *semi = memchr(s, ';', seg);
    size_t name = semi ? (size_t)(semi - s) : seg;
    if (j < n) FUZZ_CHECK(seg > 0); /* no "//" */
    if (seg > 0) {
      FUZZ_CHECK(name > 0);
      FUZZ_CHECK(!(name == 1 && s[0] == '.'));
      FUZZ_CHECK(!(name == 2 && s[0] == '.' && s[1] == '.'));
    }
  }
}

static void target(const uint8_t *data, size_t n) {
  char *in = fz_dup(data, n);
  char *out = fz_dup("", n);
  char *inplace = fz_dup(data, n);
  size_t olen = 0, ilen = 0;
  int rc = mg_uri_normalize_target(in, n, out, &olen);
  FUZZ_CHECK(rc == 0 || rc == MG_EINVAL);
  FUZZ_CHECK(mg_uri_normalize_target(inplace, n, inplace, &ilen) == rc);

  mg_str_t path, query;
  mg_uri_split_target((mg_str_t){ in, n }, &path, &query);
  FUZZ_CHECK(path.p == in && path.len + query.len == n);
  FUZZ_CHECK(query.len == 0 || query.p[0] == '?');
  FUZZ_CHECK(!memchr(path.p, '?', path.len));

  /* the path alone, as the model says */
  char *mout = fz_dup("", path.len + 1);
  long mlen = model_path((const uint8_t *)path.p, path.len, mout);
  char *pout = fz_dup("", path.len);
  size_t plen = 0;
  int prc = mg_uri_normalize_path(path.p, path.len, pout, &plen);
  FUZZ_CHECK((prc == 0) == (mlen >= 0));
  if (prc == 0) FUZZ_CHECK(plen == (size_t)mlen && memcmp(pout, mout, plen) == 0);

  /* the query: checked for raw bytes and broken escapes only */
  int query_ok = 1;
  for (size_t i = 0; i < query.len; i++) {
    uint8_t c = (uint8_t)query.p[i];
    if (c < 0x21 || c == 0x7f || c == '#' ||
        (c == '%' && (query.len - i < 3 || hexval((uint8_t)query.p[i + 1]) < 0 ||
                      hexval((uint8_t)query.p[i + 2]) < 0)))
      query_ok = 0;
  }
  FUZZ_CHECK((rc == 0) == (prc == 0 && query_ok));

  /* plain path bytes without escapes are always accepted */
  int plain = n > 0 && in[0] == '/';
  for (size_t i = 0; i < path.len && plain; i++)
    if (bad_raw((uint8_t)path.p[i]) || path.p[i] == '%') plain = 0;
  if (plain && query_ok) FUZZ_CHECK(rc == 0);

  if (rc == 0) {
    FUZZ_CHECK(olen <= n);
    FUZZ_CHECK(ilen == olen && memcmp(inplace, out, olen) == 0);
    FUZZ_CHECK(olen == plen + query.len);
    FUZZ_CHECK(memcmp(out, pout, plen) == 0);
    FUZZ_CHECK(memcmp(out + plen, query.p, query.len) == 0);
    check_path(out, plen);
    /* idempotent */
    char *again = fz_dup(out, olen);
    char *out2 = fz_dup("", olen);
    size_t olen2 = 0;
    FUZZ_CHECK(mg_uri_normalize_target(again, olen, out2, &olen2) == 0);
    FUZZ_CHECK(olen2 == olen && memcmp(out2, out, olen) == 0);
    free(again);
    free(out2);
  }
  free(in);
  free(out);
  free(inplace);
  free(mout);
  free(pout);
}

/* 1 to 5 digits, at most 65535, or "" (no port: -1). */
static int model_port(const uint8_t *p, size_t n, int *port) {
  if (n == 0) {
    *port = -1;
    return 0;
  }
  if (n > 5) return -1;
  long v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  if (v > 65535) return -1;
  *port = (int)v;
  return 0;
}

/* uri.h's grammar for a Host: *name_len is the length of the name slice (from the
 * start), *port the port. */
static int model_host(const uint8_t *p, size_t n, size_t *name_len, int *port) {
  if (n == 0) return -1;
  size_t nlen;
  if (p[0] == '[') {
    const uint8_t *rb = memchr(p, ']', n);
    if (!rb) return -1;
    nlen = (size_t)(rb - p) + 1;
    if (nlen < n && p[nlen] != ':') return -1;
    if (model_port(p + nlen + (nlen < n), n - nlen - (nlen < n), port)) return -1;
    char buf[256];
    unsigned char addr[16];
    size_t in = nlen - 2;
    if (in >= sizeof(buf)) return -1;
    for (size_t i = 1; i < nlen - 1; i++)
      if (hexval(p[i]) < 0 && p[i] != ':' && p[i] != '.') return -1;
    memcpy(buf, p + 1, in);
    buf[in] = '\0';
    if (inet_pton(AF_INET6, buf, addr) != 1) return -1;
    *name_len = nlen;
    return 0;
  }
  const uint8_t *colon = memchr(p, ':', n);
  nlen = colon ? (size_t)(colon - p) : n;
  if (model_port(p + nlen + (nlen < n), n - nlen - (nlen < n), port)) return -1;
  if (nlen > 1 && p[nlen - 1] == '.') nlen--;
  if (nlen == 0 || p[0] == '.' || p[nlen - 1] == '.') return -1;
  for (size_t i = 0; i < nlen; i++) {
    uint8_t c = p[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
             c == '_' || c == '.';
    if (!ok || (c == '.' && i > 0 && p[i - 1] == '.')) return -1;
  }
  *name_len = nlen;
  return 0;
}

static void host(const uint8_t *data, size_t n) {
  char *in = fz_dup(data, n);
  static const char sentinel[] = "unchanged";
  mg_str_t name = MG_STR(sentinel);
  int port = -7;
  int rc = mg_uri_check_host((mg_str_t){ in, n }, &name, &port);
  size_t mname = 0;
  int mport = -7;
  int mrc = model_host(data, n, &mname, &mport);
  FUZZ_CHECK((rc == 0) == (mrc == 0));
  if (rc != 0) {
    FUZZ_CHECK(rc == MG_EINVAL && name.p == sentinel && port == -7);
  } else {
    FUZZ_CHECK(name.p == in && name.len == mname && port == mport);
    FUZZ_CHECK(name.len > 0 && port >= -1 && port <= 65535);
    /* the name checks again to itself, port-less */
    mg_str_t name2;
    int port2;
    char *again = fz_dup(name.p, name.len);
    FUZZ_CHECK(mg_uri_check_host((mg_str_t){ again, name.len }, &name2, &port2) == 0);
    FUZZ_CHECK(name2.len == name.len && port2 == -1);
    FUZZ_CHECK(mg_uri_check_host((mg_str_t){ again, name.len }, NULL, NULL) == 0);
    free(again);
  }
  free(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  target(p, n);
  host(p, n);
  return 0;
}
