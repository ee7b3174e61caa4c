/* PROXY protocol v1 and v2 headers: see proxyproto.h for the contract.
 *
 * The parser keeps no state: each call starts over from byte 0 and walks as far as
 * the bytes go. Every step answers "done", NEED (ran off the end of what was read:
 * still a valid beginning) or BAD, so a split anywhere is the same as the end of
 * the input, and the header limits bound the work of a call. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <stdio.h>

enum { NEED = 0, BAD = -1 };

static const char V1_SIG[6] = { 'P', 'R', 'O', 'X', 'Y', ' ' };
static const unsigned char V2_SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* v2 family/transport bytes the spec defines; any other must be refused. */
enum {
  V2_UNSPEC = 0x00,
  V2_TCP4 = 0x11,
  V2_UDP4 = 0x12,
  V2_TCP6 = 0x21,
  V2_UDP6 = 0x22,
  V2_UNIX_STREAM = 0x31,
  V2_UNIX_DGRAM = 0x32,
};
#define V2_TLV_CRC32C 0x03

/* The parse steps report a cause through *why; this keeps them one line each. */
static int fail(const char **why, const char *cause) {
  *why = cause;
  return BAD;
}

/* ---- v1 ---- */

/* A partial dotted quad that can still become a valid one: at most 4 parts of 1-3
 * digits, each at most 255, no leading zero, no empty part. */
static int v4_prefix_ok(const char *s, size_t n) {
  unsigned parts = 1, digits = 0, val = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '.') {
      if (digits == 0 || ++parts > 4) return 0;
      digits = val = 0;
    } else if (s[i] >= '0' && s[i] <= '9') {
      if (digits == 1 && val == 0) return 0; /* "0" then a digit: leading zero */
      val = val * 10 + (unsigned)(s[i] - '0');
      if (++digits > 3 || val > 255) return 0;
    } else {
      return 0;
    }
  }
  return 1;
}

static int v6_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
         c == '.';
}

/* The address token at *i, ending in a space. On success stores it in `sa` (the
 * port is set later) and moves *i past the space. */
static int v1_addr(const char *p, size_t n, size_t *i, int fam, struct sockaddr_storage *sa,
                   const char **why, const char *bad) {
  size_t s = *i, max = fam == AF_INET ? INET_ADDRSTRLEN - 1 : INET6_ADDRSTRLEN - 1;
  size_t e = s;
  while (e < n && p[e] != ' ' && e - s <= max) e++;
  if (e - s > max) return fail(why, bad);
  if (fam == AF_INET && !v4_prefix_ok(p + s, e - s)) return fail(why, bad);
  if (fam == AF_INET6)
    for (size_t k = s; k < e; k++)
      if (!v6_char(p[k])) return fail(why, bad);
  if (e == n) return NEED;
  if (e == s) return fail(why, "v1: double space");
  char text[INET6_ADDRSTRLEN];
  memcpy(text, p + s, e - s);
  text[e - s] = '\0';
  if (fam == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)sa;
    a->sin_family = AF_INET;
    if (inet_pton(AF_INET, text, &a->sin_addr) != 1) return fail(why, bad);
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)sa;
    a->sin6_family = AF_INET6;
    if (inet_pton(AF_INET6, text, &a->sin6_addr) != 1) return fail(why, bad);
  }
  *i = e + 1;
  return 1;
}

/* The port token at *i, ending in `term` (' ' or '\r'); moves *i past it. */
static int v1_port(const char *p, size_t n, size_t *i, char term, unsigned *port, const char **why,
                   const char *bad) {
  size_t k = *i;
  unsigned v = 0;
  for (; k < n && p[k] >= '0' && p[k] <= '9'; k++) {
    if (k > *i && v == 0) return fail(why, bad); /* leading zero */
    v = v * 10 + (unsigned)(p[k] - '0');
    if (v > 65535) return fail(why, bad);
  }
  if (k == n) return NEED;
  if (p[k] == term && k > *i) {
    *port = v;
    *i = k + 1;
    return 1;
  }
  if (p[k] == ' ' && k == *i) return fail(why, "v1: double space");
  if (p[k] == '\n') return fail(why, "v1: LF without CR");
  return fail(why, bad);
}

/* The LF after the CR at p[i - 1]: the header's length, or NEED/BAD. */
static int v1_lf(const char *p, size_t n, size_t i, const char **why) {
  if (i == n) return NEED;
  if (p[i] != '\n') return fail(why, "v1: CR without LF");
  return (int)(i + 1);
}

/* Is s[0..n) the beginning of the NUL-terminated word w? */
static int starts(const char *s, size_t n, const char *w) {
  return n <= strlen(w) && memcmp(s, w, n) == 0;
}

/* Parses at most MG_PP_V1_MAX bytes (the caller clips n). */
static int v1_scan(const char *p, size_t n, mg_pp_addr_t *out, const char **why) {
  if (memcmp(p, V1_SIG, n < 6 ? n : 6) != 0) return fail(why, "not a PROXY protocol header");
  if (n <= 6) return NEED;
  size_t i = 6, s = 6;
  while (i < n && ((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= '0' && p[i] <= '9'))) i++;
  mg_str_t proto = { p + s, i - s };
  if (i == n) {
    if (starts(proto.p, proto.len, "TCP4") || starts(proto.p, proto.len, "TCP6") ||
        starts(proto.p, proto.len, "UNKNOWN"))
      return NEED;
    return fail(why, "v1: bad protocol");
  }

  if (mg_str_eq(proto, MG_STR("UNKNOWN")) && (p[i] == ' ' || p[i] == '\r' || p[i] == '\n')) {
    /* the spec: anything up to the CRLF is ignored */
    while (i < n && p[i] != '\r' && p[i] != '\n') i++;
    if (i == n) return NEED;
    if (p[i] == '\n') return fail(why, "v1: LF without CR");
    int rc = v1_lf(p, n, i + 1, why);
    if (rc > 0) *out = (mg_pp_addr_t){ .version = 1, .local = 1, .family = AF_UNSPEC };
    return rc;
  }

  int fam;
  if (mg_str_eq(proto, MG_STR("TCP4")) && p[i] == ' ')
    fam = AF_INET;
  else if (mg_str_eq(proto, MG_STR("TCP6")) && p[i] == ' ')
    fam = AF_INET6;
  else if (proto.len == 0 && p[i] == ' ')
    return fail(why, "v1: double space");
  else
    return fail(why, "v1: bad protocol");
  i++;

  mg_pp_addr_t a = { .version = 1, .family = fam };
  unsigned sport, dport;
  int rc;
  if ((rc = v1_addr(p, n, &i, fam, &a.src, why, "v1: bad source address")) <= 0) return rc;
  if ((rc = v1_addr(p, n, &i, fam, &a.dst, why, "v1: bad destination address")) <= 0) return rc;
  if ((rc = v1_port(p, n, &i, ' ', &sport, why, "v1: bad source port")) <= 0) return rc;
  if ((rc = v1_port(p, n, &i, '\r', &dport, why, "v1: bad destination port")) <= 0) return rc;
  if ((rc = v1_lf(p, n, i, why)) <= 0) return rc;
  if (fam == AF_INET) {
    ((struct sockaddr_in *)&a.src)->sin_port = htons((uint16_t)sport);
    ((struct sockaddr_in *)&a.dst)->sin_port = htons((uint16_t)dport);
  } else {
    ((struct sockaddr_in6 *)&a.src)->sin6_port = htons((uint16_t)sport);
    ((struct sockaddr_in6 *)&a.dst)->sin6_port = htons((uint16_t)dport);
  }
  *out = a;
  return rc;
}

static int v1_parse(const char *p, size_t len, mg_pp_addr_t *out, const char **why) {
  size_t n = len < MG_PP_V1_MAX ? len : MG_PP_V1_MAX;
  int rc = v1_scan(p, n, out, why);
  /* still incomplete with the whole budget in hand: the CRLF is not within it */
  if (rc == NEED && len >= MG_PP_V1_MAX) return fail(why, "v1: no CRLF within 107 bytes");
  return rc;
}

/* ---- v2 ---- */

/* CRC32C (Castagnoli, reflected 0x82F63B78) of the header with the 4 bytes of
 * the checksum TLV's value at `skip` counted as zeros, as the spec computes it.
 * Bitwise: it runs only for headers that carry the TLV, at most 4 KiB of them. */
static uint32_t crc32c_header(const unsigned char *p, size_t n, size_t skip) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= i >= skip && i < skip + 4 ? 0 : p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

/* The TLVs in u[off..end): each must end inside the header. */
static int v2_tlvs(const unsigned char *u, size_t off, size_t end, const char **why) {
  while (off < end) {
    if (end - off < 3) return fail(why, "v2: TLV overruns the header");
    size_t tl = (size_t)u[off + 1] << 8 | u[off + 2];
    if (tl > end - off - 3) return fail(why, "v2: TLV overruns the header");
    if (u[off] == V2_TLV_CRC32C) {
      if (tl != 4) return fail(why, "v2: CRC32C TLV not 4 bytes");
      const unsigned char *v = u + off + 3;
      uint32_t want = (uint32_t)v[0] << 24 | (uint32_t)v[1] << 16 | (uint32_t)v[2] << 8 | v[3];
      if (crc32c_header(u, end, off + 3) != want) return fail(why, "v2: bad CRC32C");
    }
    off += 3 + tl;
  }
  return 1;
}

static int v2_parse(const char *p, size_t len, mg_pp_addr_t *out, const char **why) {
  const unsigned char *u = (const unsigned char *)p;
  if (memcmp(u, V2_SIG, len < 12 ? len : 12) != 0) return fail(why, "not a PROXY protocol header");
  if (len <= 12) return NEED;
  if (u[12] >> 4 != 2) return fail(why, "v2: bad version");
  unsigned cmd = u[12] & 0x0F; /* 0 LOCAL, 1 PROXY */
  if (cmd > 1) return fail(why, "v2: bad command");

  size_t block = 0; /* the address block's size for this family; LOCAL ignores the byte */
  if (cmd == 1 && len > 13) {
    switch (u[13]) {
    case V2_UNSPEC: block = 0; break;
    case V2_TCP4: block = 12; break;
    case V2_TCP6: block = 36; break;
    case V2_UNIX_STREAM: block = 216; break;
    case V2_UDP4:
    case V2_UDP6:
    case V2_UNIX_DGRAM: return fail(why, "v2: datagram transport");
    default: return fail(why, "v2: bad address family");
    }
  }
  if (len < MG_PP_V2_FIXED) return NEED;
  size_t hlen = (size_t)u[14] << 8 | u[15];
  if (hlen > MG_PP_V2_LEN_MAX) return fail(why, "v2: length over 4096");
  if (hlen < block) return fail(why, "v2: length shorter than the address block");
  size_t end = MG_PP_V2_FIXED + hlen;
  if (len < end) return NEED;

  /* PROXY: TLVs are checked whatever the family; LOCAL's block is discarded whole */
  if (cmd == 1) {
    int rc = v2_tlvs(u, MG_PP_V2_FIXED + block, end, why);
    if (rc <= 0) return rc;
  }
  mg_pp_addr_t a = { .version = 2, .local = 1, .family = AF_UNSPEC };
  if (cmd == 1 && (u[13] == V2_TCP4 || u[13] == V2_TCP6)) {
    const unsigned char *b = u + MG_PP_V2_FIXED;
    uint16_t sport, dport; /* network order, copied as they are */
    a.local = 0;
    if (u[13] == V2_TCP4) {
      struct sockaddr_in *s = (struct sockaddr_in *)&a.src, *d = (struct sockaddr_in *)&a.dst;
      a.family = s->sin_family = d->sin_family = AF_INET;
      memcpy(&s->sin_addr, b, 4);
      memcpy(&d->sin_addr, b + 4, 4);
      memcpy(&sport, b + 8, 2);
      memcpy(&dport, b + 10, 2);
      s->sin_port = sport, d->sin_port = dport;
    } else {
      struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a.src, *d = (struct sockaddr_in6 *)&a.dst;
      a.family = s->sin6_family = d->sin6_family = AF_INET6;
      memcpy(&s->sin6_addr, b, 16);
      memcpy(&d->sin6_addr, b + 16, 16);
      memcpy(&sport, b + 32, 2);
      memcpy(&dport, b + 34, 2);
      s->sin6_port = sport, d->sin6_port = dport;
    }
    a.tlv_off = MG_PP_V2_FIXED + block;
    a.tlv_len = hlen - block;
  }
  *out = a;
  return (int)end;
}

int mg_pp_parse(const char *p, size_t len, mg_pp_addr_t *out, char *why, size_t whylen) {
  const char *cause = NULL;
  int rc;
  if (len == 0)
    rc = NEED;
  else if (p[0] == V1_SIG[0])
    rc = v1_parse(p, len, out, &cause);
  else if ((unsigned char)p[0] == V2_SIG[0])
    rc = v2_parse(p, len, out, &cause);
  else
    rc = fail(&cause, "not a PROXY protocol header");
  if (rc < 0 && why && whylen) snprintf(why, whylen, "%s", cause);
  return rc;
}

size_t mg_pp_format_client(const mg_pp_addr_t *a, char *buf, size_t cap, mg_str_t *ip) {
  char text[INET6_ADDRSTRLEN];
  unsigned port;
  int v6 = a->family == AF_INET6;
  if (a->local || (a->family != AF_INET && !v6)) return 0;
  if (v6) {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a->src;
    inet_ntop(AF_INET6, &s->sin6_addr, text, sizeof(text));
    port = ntohs(s->sin6_port);
  } else {
    const struct sockaddr_in *s = (const struct sockaddr_in *)&a->src;
    inet_ntop(AF_INET, &s->sin_addr, text, sizeof(text));
    port = ntohs(s->sin_port);
  }
  char tmp[MG_PP_CLIENT_MAX];
  int n = snprintf(tmp, sizeof(tmp), v6 ? "[%s]:%u" : "%s:%u", text, port);
  if (n < 0 || (size_t)n >= cap) return 0;
  memcpy(buf, tmp, (size_t)n + 1);
  if (ip) *ip = (mg_str_t){ buf + v6, strlen(text) };
  return (size_t)n;
}

/* ---- writing ---- */

/* The pair of endpoints to write: both IPv4, or both IPv6 (an IPv4 one mapped
 * when the families differ). */
typedef struct {
  int family; /* AF_INET, AF_INET6, or AF_UNSPEC for "no address to give" */
  unsigned char addr[2][16];
  uint16_t port[2]; /* network order */
} pair_t;

static void endpoint(const struct sockaddr *sa, int want, unsigned char addr[16], uint16_t *port) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
    *port = s->sin_port;
    if (want == AF_INET) {
      memcpy(addr, &s->sin_addr, 4);
    } else { /* ::ffff:a.b.c.d */
      memset(addr, 0, 10);
      addr[10] = addr[11] = 0xff;
      memcpy(addr + 12, &s->sin_addr, 4);
    }
  } else {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
    *port = s->sin6_port;
    memcpy(addr, &s->sin6_addr, 16);
  }
}

static void pair_of(const struct sockaddr *src, const struct sockaddr *dst, pair_t *pr) {
  pr->family = AF_UNSPEC;
  int sf = src->sa_family, df = dst->sa_family;
  if ((sf != AF_INET && sf != AF_INET6) || (df != AF_INET && df != AF_INET6)) return;
  pr->family = sf == AF_INET && df == AF_INET ? AF_INET : AF_INET6;
  endpoint(src, pr->family, pr->addr[0], &pr->port[0]);
  endpoint(dst, pr->family, pr->addr[1], &pr->port[1]);
}

static size_t put(char *buf, size_t cap, const void *hdr, size_t n) {
  if (n > cap) return 0;
  memcpy(buf, hdr, n);
  return n;
}

size_t mg_pp_write_v1(char *buf, size_t cap, const struct sockaddr *src, const struct sockaddr *dst) {
  static const char unknown[] = "PROXY UNKNOWN\r\n";
  if (!src || !dst) return put(buf, cap, unknown, sizeof(unknown) - 1);
  pair_t pr;
  pair_of(src, dst, &pr);
  if (pr.family == AF_UNSPEC) return put(buf, cap, unknown, sizeof(unknown) - 1);
  char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN], tmp[MG_PP_WRITE_MAX + 1];
  inet_ntop(pr.family, pr.addr[0], s, sizeof(s));
  inet_ntop(pr.family, pr.addr[1], d, sizeof(d));
  int n = snprintf(tmp, sizeof(tmp), "PROXY %s %s %s %u %u\r\n", pr.family == AF_INET ? "TCP4" : "TCP6", s,
                   d, ntohs(pr.port[0]), ntohs(pr.port[1]));
  /* inet_ntop writes IPv6 in its shortest form (at most 39 bytes here), so the line
   * stays within the spec's 107 */
  if (n < 0 || n > MG_PP_V1_MAX) return 0;
  return put(buf, cap, tmp, (size_t)n);
}

size_t mg_pp_write_v2(char *buf, size_t cap, const struct sockaddr *src, const struct sockaddr *dst) {
  unsigned char h[MG_PP_V2_FIXED + 36];
  memcpy(h, V2_SIG, 12);
  h[12] = 0x21; /* version 2, PROXY */
  h[13] = V2_UNSPEC;
  size_t block = 0;
  if (!src || !dst) {
    h[12] = 0x20; /* LOCAL */
  } else {
    pair_t pr;
    pair_of(src, dst, &pr);
    if (pr.family != AF_UNSPEC) {
      size_t alen = pr.family == AF_INET ? 4 : 16;
      h[13] = pr.family == AF_INET ? V2_TCP4 : V2_TCP6;
      unsigned char *b = h + MG_PP_V2_FIXED;
      memcpy(b, pr.addr[0], alen);
      memcpy(b + alen, pr.addr[1], alen);
      memcpy(b + 2 * alen, &pr.port[0], 2);
      memcpy(b + 2 * alen + 2, &pr.port[1], 2);
      block = 2 * alen + 4;
    }
  }
  h[14] = 0;
  h[15] = (unsigned char)block;
  return put(buf, cap, h, MG_PP_V2_FIXED + block);
}
