/* core/proxyproto.c: PROXY protocol v1/v2 headers, parsed from bytes that arrive
 * split anywhere, and written toward an upstream. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "../proxyproto.h"
#include "test.h"

static const char V2_SIG[] = "\r\n\r\n\0\r\nQUIT\n"; /* 12 bytes + NUL */

/* A v2 header under construction. */
typedef struct {
  unsigned char b[MG_PP_V2_FIXED + MG_PP_V2_LEN_MAX + 64];
  size_t n;
} v2_t;

static void v2_begin(v2_t *h, unsigned ver_cmd, unsigned fam) {
  memcpy(h->b, V2_SIG, 12);
  h->b[12] = (unsigned char)ver_cmd;
  h->b[13] = (unsigned char)fam;
  h->n = MG_PP_V2_FIXED;
}

static void v2_add(v2_t *h, const void *p, size_t n) {
  memcpy(h->b + h->n, p, n);
  h->n += n;
}

static void v2_tlv(v2_t *h, unsigned type, size_t len, unsigned char fill) {
  unsigned char t[3] = { (unsigned char)type, (unsigned char)(len >> 8), (unsigned char)len };
  v2_add(h, t, 3);
  memset(h->b + h->n, fill, len);
  h->n += len;
}

/* Sets the length field from what was added. */
static void v2_end(v2_t *h) {
  size_t len = h->n - MG_PP_V2_FIXED;
  h->b[14] = (unsigned char)(len >> 8);
  h->b[15] = (unsigned char)len;
}

/* The v2 address block of two addresses given as text and two ports. */
static void v2_addrs(v2_t *h, int fam, const char *src, const char *dst, unsigned sp, unsigned dp) {
  unsigned char a[16];
  size_t alen = fam == AF_INET ? 4 : 16;
  inet_pton(fam, src, a);
  v2_add(h, a, alen);
  inet_pton(fam, dst, a);
  v2_add(h, a, alen);
  unsigned char ports[4] = { (unsigned char)(sp >> 8), (unsigned char)sp, (unsigned char)(dp >> 8),
                             (unsigned char)dp };
  v2_add(h, ports, 4);
}

/* A reference CRC32C, table-free and independent of the module's (checked
 * against the standard check value below). */
static uint32_t ref_crc32c(const unsigned char *p, size_t n) {
  uint32_t c = ~0u;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

/* Parses exactly p[0..len) from a heap copy of that size, so ASan sees any read
 * past the bytes the parser was given. */
static int parse(const void *p, size_t len, mg_pp_addr_t *out, char *why, size_t whylen) {
  char *copy = malloc(len ? len : 1);
  if (!copy) return -2;
  memcpy(copy, p, len);
  int rc = mg_pp_parse(copy, len, out, why, whylen);
  free(copy);
  return rc;
}

static int parse_s(const char *s, mg_pp_addr_t *out) {
  return parse(s, strlen(s), out, NULL, 0);
}

/* "ip:port" of the source, or "" when local. */
static const char *client(const mg_pp_addr_t *a) {
  static char buf[MG_PP_CLIENT_MAX];
  if (!mg_pp_format_client(a, buf, sizeof(buf), NULL)) buf[0] = '\0';
  return buf;
}

/* "ip:port" of the destination. */
static const char *dest(const mg_pp_addr_t *a) {
  mg_pp_addr_t d = *a;
  d.src = a->dst;
  static char buf[MG_PP_CLIENT_MAX];
  if (!mg_pp_format_client(&d, buf, sizeof(buf), NULL)) buf[0] = '\0';
  return buf;
}

static void v1_valid_forms(void) {
  mg_pp_addr_t a;
  const char *h = "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n";
  CHECK(parse_s(h, &a) == (int)strlen(h));
  CHECK(a.version == 1 && a.local == 0 && a.family == AF_INET);
  CHECK(a.src.ss_family == AF_INET && a.dst.ss_family == AF_INET);
  CHECK(strcmp(client(&a), "192.0.2.10:56324") == 0);
  CHECK(strcmp(dest(&a), "198.51.100.1:443") == 0);
  CHECK(a.tlv_off == 0 && a.tlv_len == 0);

  h = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
  CHECK(parse_s(h, &a) == (int)strlen(h));
  CHECK(a.version == 1 && a.local == 0 && a.family == AF_INET6);
  CHECK(strcmp(client(&a), "[2001:db8::1]:1") == 0);
  CHECK(strcmp(dest(&a), "[2001:db8::2]:65535") == 0);

  /* port 0, the smallest addresses, a v4-mapped TCP6 address (kept as sent) */
  h = "PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n";
  CHECK(parse_s(h, &a) == (int)strlen(h) && strcmp(client(&a), "0.0.0.0:0") == 0);
  h = "PROXY TCP6 ::ffff:10.0.0.1 :: 80 8080\r\n";
  CHECK(parse_s(h, &a) == (int)strlen(h) && a.family == AF_INET6);
  CHECK(strcmp(client(&a), "[::ffff:10.0.0.1]:80") == 0 && strcmp(dest(&a), "[::]:8080") == 0);

  /* UNKNOWN alone, and with whatever the sender put before the CRLF (ignored) */
  const char *unknown[] = { "PROXY UNKNOWN\r\n", "PROXY UNKNOWN 1.2.3.4 nonsense  \t here\r\n",
                            "PROXY UNKNOWN \r\n" };
  for (size_t i = 0; i < 3; i++) {
    memset(&a, 0xAA, sizeof(a));
    CHECK(parse_s(unknown[i], &a) == (int)strlen(unknown[i]));
    CHECK(a.version == 1 && a.local == 1 && a.family == AF_UNSPEC);
    CHECK(a.src.ss_family == AF_UNSPEC && a.dst.ss_family == AF_UNSPEC);
    CHECK(mg_pp_format_client(&a, (char[MG_PP_CLIENT_MAX]){ 0 }, MG_PP_CLIENT_MAX, NULL) == 0);
  }

  /* the longest TCP6 line (104 bytes) and an UNKNOWN line of exactly 107 */
  h = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
      "65535 65535\r\n";
  CHECK(strlen(h) == 104 && parse_s(h, &a) == 104);
  char line[MG_PP_V1_MAX + 1];
  memset(line, 'x', sizeof(line));
  memcpy(line, "PROXY UNKNOWN ", 14);
  memcpy(line + MG_PP_V1_MAX - 2, "\r\n", 2);
  CHECK(parse(line, MG_PP_V1_MAX, &a, NULL, 0) == MG_PP_V1_MAX && a.local == 1);
}

static void v2_valid_forms(void) {
  mg_pp_addr_t a;
  v2_t h;

  v2_begin(&h, 0x21, 0x11); /* PROXY, TCP over IPv4 */
  v2_addrs(&h, AF_INET, "192.0.2.10", "198.51.100.1", 56324, 443);
  v2_end(&h);
  CHECK(h.n == 28 && parse(h.b, h.n, &a, NULL, 0) == 28);
  CHECK(a.version == 2 && a.local == 0 && a.family == AF_INET);
  CHECK(strcmp(client(&a), "192.0.2.10:56324") == 0 && strcmp(dest(&a), "198.51.100.1:443") == 0);
  CHECK(a.tlv_off == 28 && a.tlv_len == 0);

  v2_begin(&h, 0x21, 0x21); /* PROXY, TCP over IPv6 */
  v2_addrs(&h, AF_INET6, "2001:db8::1", "2001:db8::2", 1, 65535);
  v2_end(&h);
  CHECK(h.n == 52 && parse(h.b, h.n, &a, NULL, 0) == 52);
  CHECK(a.version == 2 && a.local == 0 && a.family == AF_INET6);
  CHECK(strcmp(client(&a), "[2001:db8::1]:1") == 0 && strcmp(dest(&a), "[2001:db8::2]:65535") == 0);

  /* with TLVs: ALPN, an empty one, NOOP padding, a 300-byte one */
  v2_begin(&h, 0x21, 0x21);
  v2_addrs(&h, AF_INET6, "::1", "::2", 5, 6);
  v2_tlv(&h, 0x01, 2, 'h');
  v2_tlv(&h, 0x02, 0, 0);
  v2_tlv(&h, 0x04, 7, 0);
  v2_tlv(&h, 0xE0, 300, 0x55);
  v2_end(&h);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n);
  CHECK(a.local == 0 && strcmp(client(&a), "[::1]:5") == 0);
  CHECK(a.tlv_off == 52 && a.tlv_len == 5 + 3 + 10 + 303 && a.tlv_off + a.tlv_len == h.n);

  /* a correct CRC32C TLV (computed with the value zeroed, stored big-endian) */
  CHECK(ref_crc32c((const unsigned char *)"123456789", 9) == 0xE3069283u);
  v2_begin(&h, 0x21, 0x11);
  v2_addrs(&h, AF_INET, "10.0.0.1", "10.0.0.2", 1000, 80);
  v2_tlv(&h, 0x01, 8, 'x');
  v2_tlv(&h, 0x03, 4, 0);
  v2_end(&h);
  uint32_t crc = ref_crc32c(h.b, h.n);
  unsigned char *v = h.b + h.n - 4;
  v[0] = (unsigned char)(crc >> 24), v[1] = (unsigned char)(crc >> 16), v[2] = (unsigned char)(crc >> 8),
  v[3] = (unsigned char)crc;
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && strcmp(client(&a), "10.0.0.1:1000") == 0);

  /* LOCAL: the block is discarded whatever it holds, even a family byte of nonsense */
  v2_begin(&h, 0x20, 0x00);
  v2_end(&h);
  memset(&a, 0xAA, sizeof(a));
  CHECK(h.n == 16 && parse(h.b, 16, &a, NULL, 0) == 16);
  CHECK(a.version == 2 && a.local == 1 && a.family == AF_UNSPEC && a.tlv_len == 0);
  CHECK(a.src.ss_family == AF_UNSPEC && client(&a)[0] == '\0');
  v2_begin(&h, 0x20, 0x11);
  v2_addrs(&h, AF_INET, "10.0.0.1", "10.0.0.2", 1, 2);
  v2_tlv(&h, 0x04, 3, 0);
  v2_end(&h);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && a.local == 1);
  v2_begin(&h, 0x20, 0xFF);
  v2_add(&h, "\x01\x02\x03", 3);
  v2_end(&h);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && a.local == 1);

  /* PROXY over UNSPEC (with a TLV) and over a UNIX stream: no client address */
  v2_begin(&h, 0x21, 0x00);
  v2_tlv(&h, 0x05, 16, 'u');
  v2_end(&h);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && a.local == 1 && a.family == AF_UNSPEC);
  v2_begin(&h, 0x21, 0x31);
  memset(h.b + h.n, 0, 216);
  memcpy(h.b + h.n, "/run/lb.sock", 12);
  h.n += 216;
  v2_end(&h);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && a.local == 1 && a.family == AF_UNSPEC);

  /* the length at the cap exactly: one big TLV */
  v2_begin(&h, 0x21, 0x11);
  v2_addrs(&h, AF_INET, "10.0.0.1", "10.0.0.2", 1, 2);
  v2_tlv(&h, 0x04, MG_PP_V2_LEN_MAX - 12 - 3, 0);
  v2_end(&h);
  CHECK(h.n == MG_PP_V2_FIXED + MG_PP_V2_LEN_MAX);
  CHECK(parse(h.b, h.n, &a, NULL, 0) == (int)h.n && a.tlv_len == MG_PP_V2_LEN_MAX - 12);
}

/* Every valid header, as text or bytes. */
typedef struct {
  const unsigned char *p;
  size_t n;
} bytes_t;

static size_t all_valid(bytes_t *out, v2_t *store) {
  static const char *v1[] = {
    "PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n",
    "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
    "PROXY TCP6 ::ffff:10.0.0.1 :: 0 8080\r\n",
    "PROXY UNKNOWN\r\n",
    "PROXY UNKNOWN ff::1 ff::2 1 2\r\n",
  };
  size_t k = 0;
  for (size_t i = 0; i < sizeof(v1) / sizeof(v1[0]); i++)
    out[k++] = (bytes_t){ (const unsigned char *)v1[i], strlen(v1[i]) };
  v2_t *h = store;
  v2_begin(h, 0x21, 0x11);
  v2_addrs(h, AF_INET, "192.0.2.10", "198.51.100.1", 56324, 443);
  v2_end(h);
  out[k++] = (bytes_t){ h->b, h->n }, h++;
  v2_begin(h, 0x21, 0x21);
  v2_addrs(h, AF_INET6, "2001:db8::1", "2001:db8::2", 1, 65535);
  v2_tlv(h, 0x01, 2, 'h');
  v2_tlv(h, 0x02, 0, 0);
  v2_tlv(h, 0x04, 5, 0);
  v2_end(h);
  out[k++] = (bytes_t){ h->b, h->n }, h++;
  v2_begin(h, 0x20, 0x00);
  v2_end(h);
  out[k++] = (bytes_t){ h->b, h->n }, h++;
  v2_begin(h, 0x21, 0x00);
  v2_tlv(h, 0x05, 4, 'u');
  v2_end(h);
  out[k++] = (bytes_t){ h->b, h->n };
  return k;
}

/* Each prefix of a valid header is "need more", the whole is its exact length,
 * and client bytes after it are never counted: the split can fall anywhere. */
static void every_valid_header_split_at_every_byte(void) {
  static v2_t store[4];
  bytes_t v[16];
  size_t nv = all_valid(v, store);
  static const char tail[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  for (size_t i = 0; i < nv; i++) {
    mg_pp_addr_t whole, a;
    CHECK(parse(v[i].p, v[i].n, &whole, NULL, 0) == (int)v[i].n);
    for (size_t k = 0; k < v[i].n; k++) {
      int rc = parse(v[i].p, k, &a, NULL, 0);
      if (rc != 0) fprintf(stderr, "  valid #%zu: prefix of %zu/%zu gave %d\n", i, k, v[i].n, rc);
      CHECK(rc == 0);
    }
    /* with the client's first bytes behind it, in the same read */
    unsigned char buf[256];
    memcpy(buf, v[i].p, v[i].n);
    memcpy(buf + v[i].n, tail, sizeof(tail) - 1);
    for (size_t t = 1; t < sizeof(tail); t++) {
      CHECK(parse(buf, v[i].n + t, &a, NULL, 0) == (int)v[i].n);
      CHECK(memcmp(&a, &whole, sizeof(a)) == 0);
    }
  }
}

/* Client data that looks like a header itself is still client data. */
static void trailing_bytes_are_not_consumed(void) {
  mg_pp_addr_t a;
  const char *two = "PROXY UNKNOWN\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
  CHECK(parse_s(two, &a) == 15 && a.local == 1);
  const char *v1crlf = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\r\n";
  CHECK(parse_s(v1crlf, &a) == (int)strlen(v1crlf) - 2);
  v2_t h;
  v2_begin(&h, 0x21, 0x11);
  v2_addrs(&h, AF_INET, "1.2.3.4", "5.6.7.8", 1, 2);
  v2_end(&h);
  v2_add(&h, V2_SIG, 12); /* a second signature right after */
  CHECK(parse(h.b, h.n, &a, NULL, 0) == 28 && a.local == 0);
}

/* A header this module writes, parsed back. */
static void round_trip(int v, const struct sockaddr *src, const struct sockaddr *dst, const char *want_src,
                       const char *want_dst, int want_fam) {
  char buf[MG_PP_WRITE_MAX];
  size_t n = v == 1 ? mg_pp_write_v1(buf, sizeof(buf), src, dst) : mg_pp_write_v2(buf, sizeof(buf), src, dst);
  mg_pp_addr_t a;
  char why[64] = "";
  int rc = parse(buf, n, &a, why, sizeof(why));
  if (rc != (int)n) fprintf(stderr, "  v%d %s: wrote %zu, parse gave %d (%s)\n", v, want_src, n, rc, why);
  CHECK(n > 0 && rc == (int)n);
  CHECK(a.version == v);
  CHECK(a.family == want_fam);
  CHECK(strcmp(client(&a), want_src) == 0);
  CHECK(strcmp(dest(&a), want_dst) == 0);
}

static struct sockaddr_storage sa(const char *ip, unsigned port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a->sin_addr);
  }
  return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void write_then_parse_round_trips(void) {
  struct sockaddr_storage s4 = sa("203.0.113.7", 40000), d4 = sa("10.1.2.3", 8080);
  struct sockaddr_storage s6 = sa("2001:db8::7", 40001), d6 = sa("fd00::1:2", 443);
  struct sockaddr_storage s0 = sa("0.0.0.0", 0), d9 = sa("255.255.255.255", 65535);
  struct sockaddr_storage sf = sa("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
  for (int v = 1; v <= 2; v++) {
    round_trip(v, SA(s4), SA(d4), "203.0.113.7:40000", "10.1.2.3:8080", AF_INET);
    round_trip(v, SA(s6), SA(d6), "[2001:db8::7]:40001", "[fd00::1:2]:443", AF_INET6);
    round_trip(v, SA(s0), SA(d9), "0.0.0.0:0", "255.255.255.255:65535", AF_INET);
    round_trip(v, SA(sf), SA(sf), "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
               "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", AF_INET6);
    /* mixed families: the IPv4 side goes as its v4-mapped IPv6 address */
    round_trip(v, SA(s4), SA(d6), "[::ffff:203.0.113.7]:40000", "[fd00::1:2]:443", AF_INET6);
    round_trip(v, SA(s6), SA(d4), "[2001:db8::7]:40001", "[::ffff:10.1.2.3]:8080", AF_INET6);
  }

  /* the exact bytes, once each */
  char buf[MG_PP_WRITE_MAX];
  size_t n = mg_pp_write_v1(buf, sizeof(buf), SA(s4), SA(d4));
  CHECK(n == 44 && memcmp(buf, "PROXY TCP4 203.0.113.7 10.1.2.3 40000 8080\r\n", 44) == 0);
  n = mg_pp_write_v2(buf, sizeof(buf), SA(s4), SA(d4));
  CHECK(n == 28 && memcmp(buf, V2_SIG, 12) == 0);
  CHECK(memcmp(buf + 12, "\x21\x11\x00\x0c\xcb\x00\x71\x07\x0a\x01\x02\x03\x9c\x40\x1f\x90", 16) == 0);

  /* no client (a health check), or a family with no address to give */
  struct sockaddr_storage un;
  memset(&un, 0, sizeof(un));
  un.ss_family = AF_UNIX;
  mg_pp_addr_t a;
  n = mg_pp_write_v1(buf, sizeof(buf), NULL, NULL);
  CHECK(n == 15 && memcmp(buf, "PROXY UNKNOWN\r\n", 15) == 0);
  n = mg_pp_write_v1(buf, sizeof(buf), SA(un), SA(d4));
  CHECK(n == 15 && memcmp(buf, "PROXY UNKNOWN\r\n", 15) == 0);
  n = mg_pp_write_v2(buf, sizeof(buf), NULL, SA(d4));
  CHECK(n == 16 && memcmp(buf + 12, "\x20\x00\x00\x00", 4) == 0);
  CHECK(parse(buf, n, &a, NULL, 0) == 16 && a.local == 1);
  n = mg_pp_write_v2(buf, sizeof(buf), SA(s4), SA(un));
  CHECK(n == 16 && memcmp(buf + 12, "\x21\x00\x00\x00", 4) == 0);
  CHECK(parse(buf, n, &a, NULL, 0) == 16 && a.local == 1);
}

/* Too small a buffer writes nothing at all; the exact size is enough. */
static void write_refuses_small_buffers(void) {
  struct sockaddr_storage s6 = sa("2001:db8::7", 40001), d6 = sa("fd00::1:2", 443);
  for (int v = 1; v <= 2; v++) {
    char full[MG_PP_WRITE_MAX];
    size_t need = v == 1 ? mg_pp_write_v1(full, sizeof(full), SA(s6), SA(d6))
                         : mg_pp_write_v2(full, sizeof(full), SA(s6), SA(d6));
    CHECK(need > 0);
    for (size_t cap = 0; cap <= need; cap++) {
      char buf[MG_PP_WRITE_MAX + 8];
      memset(buf, '#', sizeof(buf));
      size_t n = v == 1 ? mg_pp_write_v1(buf, cap, SA(s6), SA(d6)) : mg_pp_write_v2(buf, cap, SA(s6), SA(d6));
      if (cap < need) {
        CHECK(n == 0);
        CHECK(buf[0] == '#');
      } else {
        CHECK(n == need && memcmp(buf, full, need) == 0 && buf[need] == '#');
      }
    }
  }
  char tiny[4];
  CHECK(mg_pp_write_v1(tiny, sizeof(tiny), NULL, NULL) == 0);
  CHECK(mg_pp_write_v2(tiny, sizeof(tiny), NULL, NULL) == 0);
}

typedef struct {
  const char *name;
  const char *p;
  size_t n;
  const char *why;
} bad_t;

#define B(name, lit, why) { name, lit, sizeof(lit) - 1, why }

/* The hostile inputs, each refused with its cause. A refusal must also hold for
 * every longer prefix of it: more bytes never turn it into "need more". */
static void check_bad(const char *name, const void *p, size_t n, const char *want_why) {
  mg_pp_addr_t a;
  char why[64] = "";
  int rc = parse(p, n, &a, why, sizeof(why));
  if (rc != -1 || strcmp(why, want_why) != 0)
    fprintf(stderr, "  %s: gave %d \"%s\", want -1 \"%s\"\n", name, rc, why, want_why);
  CHECK(rc == -1 && strcmp(why, want_why) == 0);
  int refused = 0;
  for (size_t k = 0; k <= n; k++) {
    int r = parse(p, k, &a, NULL, 0);
    if (refused) CHECK(r == -1);
    CHECK(r == 0 || r == -1);
    refused |= r == -1;
  }
}

static void v1_hostile_inputs_are_refused(void) {
  static const bad_t bad[] = {
    B("http request", "GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    B("lower case", "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    B("bad signature", "PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    B("no space after PROXY", "PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY protocol header"),
    B("bare LF at the end", "PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n", "v1: LF without CR"),
    B("bare LF after UNKNOWN", "PROXY UNKNOWN\n", "v1: LF without CR"),
    B("bare LF in UNKNOWN's tail", "PROXY UNKNOWN a\nb\r\n", "v1: LF without CR"),
    B("CR CR LF", "PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\r\n", "v1: CR without LF"),
    B("CR without LF after UNKNOWN", "PROXY UNKNOWN\rX", "v1: CR without LF"),
    B("double space before protocol", "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1: double space"),
    B("double space before source", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "v1: double space"),
    B("double space before dest", "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "v1: double space"),
    B("double space before port", "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "v1: double space"),
    B("double space before dport", "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", "v1: double space"),
    B("space before CRLF", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "v1: bad destination port"),
    B("tab for space", "PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad protocol"),
    B("lower-case protocol", "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad protocol"),
    B("TCP5", "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad protocol"),
    B("TCP44", "PROXY TCP44 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad protocol"),
    B("UNKNOWNX", "PROXY UNKNOWNX\r\n", "v1: bad protocol"),
    B("TCP4 with CRLF only", "PROXY TCP4\r\n", "v1: bad protocol"),
    B("UDP4", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1: bad protocol"),
    B("leading zero in port", "PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", "v1: bad source port"),
    B("leading zero in dport", "PROXY TCP4 1.2.3.4 5.6.7.8 80 0443\r\n", "v1: bad destination port"),
    B("port 00", "PROXY TCP4 1.2.3.4 5.6.7.8 00 443\r\n", "v1: bad source port"),
    B("port 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n", "v1: bad source port"),
    B("dport 65536", "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1: bad destination port"),
    B("port 999999", "PROXY TCP4 1.2.3.4 5.6.7.8 999999 443\r\n", "v1: bad source port"),
    B("port with sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n", "v1: bad source port"),
    B("negative port", "PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n", "v1: bad source port"),
    B("hex port", "PROXY TCP4 1.2.3.4 5.6.7.8 0x50 443\r\n", "v1: bad source port"),
    B("missing dport", "PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "v1: bad source port"),
    B("extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 80 443 9\r\n", "v1: bad destination port"),
    B("octet 256", "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("three octets", "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("five octets", "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("leading zero octet", "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("empty octet", "PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("trailing dot", "PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("bad dest", "PROXY TCP4 1.2.3.4 5.6.7.999 1 2\r\n", "v1: bad destination address"),
    B("TCP4 with IPv6", "PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("TCP4 with IPv6 dest", "PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "v1: bad destination address"),
    B("TCP6 with IPv4", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1: bad source address"),
    B("TCP6 bracketed", "PROXY TCP6 [::1] ::1 1 2\r\n", "v1: bad source address"),
    B("TCP6 zone id", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1: bad source address"),
    B("TCP6 two ::", "PROXY TCP6 1::2::3 ::1 1 2\r\n", "v1: bad source address"),
    B("TCP6 nine groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "v1: bad source address"),
    B("TCP6 hostname", "PROXY TCP6 localhost ::1 1 2\r\n", "v1: bad source address"),
    B("NUL in address", "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", "v1: bad source address"),
    B("TCP6 address of 46 bytes",
      "PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:0000:0000 ::1 1 2\r\n",
      "v1: bad source address"),
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) check_bad(bad[i].name, bad[i].p, bad[i].n, bad[i].why);

  /* no CRLF within 107 bytes: "need more" up to 106, refused at 107 */
  char line[300];
  memset(line, 'x', sizeof(line));
  memcpy(line, "PROXY UNKNOWN ", 14);
  mg_pp_addr_t a;
  CHECK(parse(line, MG_PP_V1_MAX - 1, &a, NULL, 0) == 0);
  check_bad("UNKNOWN line without CRLF", line, MG_PP_V1_MAX, "v1: no CRLF within 107 bytes");
  check_bad("300 bytes without CRLF", line, sizeof(line), "v1: no CRLF within 107 bytes");
  memcpy(line + MG_PP_V1_MAX - 1, "\r\n", 2); /* CRLF ending at byte 108 */
  check_bad("108-byte UNKNOWN line", line, MG_PP_V1_MAX + 1, "v1: no CRLF within 107 bytes");
  /* valid addresses, but the line would be 116 bytes */
  const char *longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n";
  check_bad("TCP6 line of 116 bytes", longest, strlen(longest), "v1: no CRLF within 107 bytes");
}

/* As soon as the bytes show it, not after waiting for more. */
static void refused_without_waiting(void) {
  mg_pp_addr_t a;
  char why[64];
  CHECK(parse("G", 1, &a, why, sizeof(why)) == -1 && strcmp(why, "not a PROXY protocol header") == 0);
  CHECK(parse("\0", 1, &a, NULL, 0) == -1);
  CHECK(parse("\x16\x03\x01", 3, &a, NULL, 0) == -1); /* a TLS ClientHello */
  CHECK(parse("PROXY TCP4 1.2.3.256", 20, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 1.2.3.4 5.6.7.8 65536", 32, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 ::", 13, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 01", 13, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 1.2.3.4 256", 22, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 1.2.3.4 1.2.3.4.", 27, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 1.2.3.4 0", 20, &a, NULL, 0) == 0);
  CHECK(parse("PROXY TCP6 ::1 g", 16, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP4 1.2.3.4 5.6.7.8 0", 28, &a, NULL, 0) == 0); /* port 0 may end here */
  CHECK(parse("PROXY TCP4 1.2.3.4 5.6.7.8 01", 29, &a, NULL, 0) == -1);
  CHECK(parse("PROXY TCP", 9, &a, NULL, 0) == 0);
  CHECK(parse("PROXY TCX", 9, &a, NULL, 0) == -1);
  CHECK(parse("\r\n\r\n\0\r\nQUIT\n\x11", 13, &a, NULL, 0) == -1);           /* version 1 */
  CHECK(parse("\r\n\r\n\0\r\nQUIT\n\x21\x12", 14, &a, NULL, 0) == -1);       /* UDP */
  CHECK(parse("\r\n\r\n\0\r\nQUIT\n\x21\x11\x10\x01", 16, &a, NULL, 0) == -1); /* 4097 */
  CHECK(parse("\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x23", 16, &a, NULL, 0) == -1); /* 35 < 36 */
  CHECK(parse("\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c", 16, &a, NULL, 0) == 0);
  CHECK(parse("\r\n\r\n\0\r\nQUIX", 12, &a, NULL, 0) == -1);
}

static void v2_hostile_inputs_are_refused(void) {
  v2_t h;
  /* each built from a valid PROXY TCP4 header, then spoiled */
#define BASE(vc, fam)                                          \
  v2_begin(&h, vc, fam);                                       \
  v2_addrs(&h, AF_INET, "1.2.3.4", "5.6.7.8", 1, 2)

  BASE(0x21, 0x11);
  v2_end(&h);
  h.b[11] = '\r';
  check_bad("v2 bad signature", h.b, h.n, "not a PROXY protocol header");

  static const unsigned vcs[] = { 0x01, 0x11, 0x31, 0xF1 };
  for (size_t i = 0; i < 4; i++) {
    BASE(vcs[i], 0x11);
    v2_end(&h);
    check_bad("v2 wrong version nibble", h.b, h.n, "v2: bad version");
  }
  static const unsigned cmds[] = { 0x22, 0x2F };
  for (size_t i = 0; i < 2; i++) {
    BASE(cmds[i], 0x11);
    v2_end(&h);
    check_bad("v2 bad command", h.b, h.n, "v2: bad command");
  }
  static const unsigned fams[] = { 0x01, 0x02, 0x10, 0x13, 0x20, 0x41, 0xFF };
  for (size_t i = 0; i < sizeof(fams) / sizeof(fams[0]); i++) {
    BASE(0x21, fams[i]);
    v2_end(&h);
    check_bad("v2 undefined family byte", h.b, h.n, "v2: bad address family");
  }
  static const unsigned dgrams[] = { 0x12, 0x22, 0x32 };
  for (size_t i = 0; i < 3; i++) {
    v2_begin(&h, 0x21, dgrams[i]);
    memset(h.b + h.n, 0, 216);
    h.n += 216;
    v2_end(&h);
    check_bad("v2 datagram", h.b, h.n, "v2: datagram transport");
  }

  /* lengths shorter than the family's address block */
  BASE(0x21, 0x11);
  h.n--;
  v2_end(&h);
  check_bad("v2 INET length 11", h.b, h.n, "v2: length shorter than the address block");
  v2_begin(&h, 0x21, 0x21);
  v2_addrs(&h, AF_INET6, "::1", "::2", 1, 2);
  h.n -= 1;
  v2_end(&h);
  check_bad("v2 INET6 length 35", h.b, h.n, "v2: length shorter than the address block");
  BASE(0x21, 0x21); /* a v4 block under a v6 family */
  v2_end(&h);
  check_bad("v2 INET6 length 12", h.b, h.n, "v2: length shorter than the address block");
  v2_begin(&h, 0x21, 0x31);
  memset(h.b + h.n, 0, 215);
  h.n += 215;
  v2_end(&h);
  check_bad("v2 UNIX length 215", h.b, h.n, "v2: length shorter than the address block");
  v2_begin(&h, 0x21, 0x11);
  v2_end(&h);
  check_bad("v2 INET length 0", h.b, h.n, "v2: length shorter than the address block");

  /* over the cap: refused from the 16 fixed bytes alone, whatever follows */
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x04, MG_PP_V2_LEN_MAX - 12 - 3 + 1, 0);
  v2_end(&h);
  check_bad("v2 length 4097", h.b, h.n, "v2: length over 4096");
  h.b[14] = h.b[15] = 0xFF;
  check_bad("v2 length 65535", h.b, MG_PP_V2_FIXED, "v2: length over 4096");
  h.b[12] = 0x20; /* LOCAL is capped too */
  check_bad("v2 LOCAL length 65535", h.b, MG_PP_V2_FIXED, "v2: length over 4096");

  /* TLVs that do not end inside the header */
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x01, 10, 'a');
  v2_end(&h);
  h.b[h.n - 10 - 1] = 11; /* says 11, holds 10 */
  check_bad("v2 TLV overrunning by one", h.b, h.n, "v2: TLV overruns the header");
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x01, 2, 'a');
  v2_add(&h, "\x04\x00", 2); /* a TLV header cut short */
  v2_end(&h);
  check_bad("v2 TLV header of 2 bytes", h.b, h.n, "v2: TLV overruns the header");
  BASE(0x21, 0x11);
  v2_add(&h, "\x04", 1);
  v2_end(&h);
  check_bad("v2 TLV header of 1 byte", h.b, h.n, "v2: TLV overruns the header");
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x04, 0, 0);
  v2_end(&h);
  h.b[h.n - 2] = 0xFF, h.b[h.n - 1] = 0xFF; /* 65535, with the client's bytes behind */
  memset(h.b + h.n, 'x', 64);
  check_bad("v2 TLV reaching into client data", h.b, h.n + 64, "v2: TLV overruns the header");
  v2_begin(&h, 0x21, 0x00); /* UNSPEC's TLVs are checked too */
  v2_add(&h, "\x05\x00\x09xx", 5);
  v2_end(&h);
  check_bad("v2 UNSPEC TLV overrunning", h.b, h.n, "v2: TLV overruns the header");

  /* a CRC32C that does not match, and one of the wrong size */
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x03, 4, 0);
  v2_end(&h);
  uint32_t crc = ref_crc32c(h.b, h.n) ^ 1;
  unsigned char *v = h.b + h.n - 4;
  v[0] = (unsigned char)(crc >> 24), v[1] = (unsigned char)(crc >> 16), v[2] = (unsigned char)(crc >> 8),
  v[3] = (unsigned char)crc;
  check_bad("v2 wrong CRC32C", h.b, h.n, "v2: bad CRC32C");
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x03, 3, 0);
  v2_end(&h);
  check_bad("v2 CRC32C of 3 bytes", h.b, h.n, "v2: CRC32C TLV not 4 bytes");
  BASE(0x21, 0x11);
  v2_tlv(&h, 0x03, 5, 0);
  v2_end(&h);
  check_bad("v2 CRC32C of 5 bytes", h.b, h.n, "v2: CRC32C TLV not 4 bytes");
#undef BASE
}

/* The cause fits the caller's buffer, truncated and NUL-terminated; NULL is fine. */
static void why_is_truncated_and_optional(void) {
  mg_pp_addr_t a;
  char why[8];
  memset(why, 'z', sizeof(why));
  CHECK(mg_pp_parse("XYZ", 3, &a, why, sizeof(why)) == -1);
  CHECK(strcmp(why, "not a P") == 0);
  memset(why, 'z', sizeof(why));
  CHECK(mg_pp_parse("XYZ", 3, &a, why, 0) == -1 && why[0] == 'z');
  CHECK(mg_pp_parse("XYZ", 3, &a, NULL, 0) == -1);
  /* and it is not touched on success or "need more" */
  CHECK(mg_pp_parse("PROXY", 5, &a, why, sizeof(why)) == 0 && why[0] == 'z');
  CHECK(mg_pp_parse(NULL, 0, &a, why, sizeof(why)) == 0 && why[0] == 'z');
}

static void format_client_gives_ip_slice(void) {
  mg_pp_addr_t a;
  char buf[MG_PP_CLIENT_MAX];
  mg_str_t ip;
  CHECK(parse_s("PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n", &a) > 0);
  CHECK(mg_pp_format_client(&a, buf, sizeof(buf), &ip) == 16);
  CHECK(strcmp(buf, "192.0.2.10:56324") == 0 && mg_str_eq(ip, MG_STR("192.0.2.10")) && ip.p == buf);
  /* exactly enough room (NUL included), one byte less */
  CHECK(mg_pp_format_client(&a, buf, 17, NULL) == 16);
  memset(buf, '#', sizeof(buf));
  CHECK(mg_pp_format_client(&a, buf, 16, NULL) == 0 && buf[0] == '#');

  const char *h = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ::1 65535 1\r\n";
  CHECK(parse_s(h, &a) > 0);
  CHECK(mg_pp_format_client(&a, buf, sizeof(buf), &ip) == 47);
  CHECK(strcmp(buf, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535") == 0);
  CHECK(mg_str_eq(ip, MG_STR("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")) && ip.p == buf + 1);
  /* the longest text inet_ntop makes still fits MG_PP_CLIENT_MAX */
  struct sockaddr_in6 *s = (struct sockaddr_in6 *)&a.src;
  inet_pton(AF_INET6, "::ffff:255.255.255.255", &s->sin6_addr);
  CHECK(mg_pp_format_client(&a, buf, sizeof(buf), &ip) > 0 && strcmp(buf, "[::ffff:255.255.255.255]:65535") == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    T(v1_valid_forms),
    T(v2_valid_forms),
    T(every_valid_header_split_at_every_byte),
    T(trailing_bytes_are_not_consumed),
    T(write_then_parse_round_trips),
    T(write_refuses_small_buffers),
    T(v1_hostile_inputs_are_refused),
    T(refused_without_waiting),
    T(v2_hostile_inputs_are_refused),
    T(why_is_truncated_and_optional),
    T(format_client_gives_ip_slice),
  };
  return t_run("proxyproto", cases, sizeof(cases) / sizeof(cases[0]));
}
