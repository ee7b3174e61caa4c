/* core/cidr.h: prefixes added as text, then lookups, against a model that keeps
 * the prefixes in a list and scans it (the real set is a path-compressed trie).
 *  - mg_cidr_add accepts exactly the text the contract describes (inet_pton's
 *    address text, "/" and 1 to 3 digits up to 32 or 128), with the prefix it
 *    describes (host bits masked; ::ffff:a.b.c.d/96+ is an IPv4 prefix);
 *  - every lookup (mg_cidr_match on a sockaddr, mg_cidr_match_text on text) agrees
 *    with the linear scan, an IPv4-mapped address being its IPv4 address;
 *  - every added prefix's first and last address are found (unless IPv4-mapped:
 *    they are IPv4 addresses then, outside any IPv6 prefix), and the addresses
 *    just outside it agree with the scan; mg_cidr_count counts the adds.
 *
 * Input: a list of operations, each a byte (modulo 5) and its operands:
 *   0 L text      add the next L % 64 bytes as text
 *   1 a b c d l   add the IPv4 prefix a.b.c.d/(l % 33), written by inet_ntop
 *   2 m x*16 l    add the IPv6 prefix x/(l % 129), IPv4-mapped when m is odd
 *   3 f x*16      look up an address: IPv4 (first 4 bytes) when f % 3 == 0,
 *                 IPv6 when 1, IPv4-mapped IPv6 when 2
 *   4 L text      look up the next L % 64 bytes as text
 *
 * fuzz-options: -max_len=2048 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "cidr.h"
#include "fuzz.h"

typedef struct {
  int v6;
  uint8_t b[16];
  unsigned len;
} pfx_t;

typedef struct {
  pfx_t *p;
  size_t n, cap;
} model_t;

static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

static int bits_eq(const uint8_t *a, const uint8_t *b, unsigned len) {
  for (unsigned i = 0; i < len; i++)
    if (((a[i / 8] ^ b[i / 8]) >> (7 - i % 8)) & 1) return 0;
  return 1;
}

/* An address as a lookup sees it: a mapped IPv6 address is IPv4. */
static void canon(int *v6, uint8_t b[16]) {
  if (*v6 && memcmp(b, mapped, 12) == 0) {
    memmove(b, b + 12, 4);
    *v6 = 0;
  }
}

static int model_match(const model_t *m, int v6, const uint8_t addr[16]) {
  uint8_t b[16];
  memcpy(b, addr, 16);
  canon(&v6, b);
  for (size_t i = 0; i < m->n; i++)
    if (m->p[i].v6 == v6 && bits_eq(m->p[i].b, b, m->p[i].len)) return 1;
  return 0;
}

/* Address text as the contract reads it: inet_pton, IPv4 or else IPv6; no NUL. */
static int model_addr(const char *p, size_t n, int *v6, uint8_t b[16]) {
  char buf[128];
  if (n == 0 || n >= sizeof(buf) || memchr(p, '\0', n)) return -1;
  memcpy(buf, p, n);
  buf[n] = '\0';
  memset(b, 0, 16);
  if (inet_pton(AF_INET, buf, b) == 1) {
    *v6 = 0;
    return 0;
  }
  if (inet_pton(AF_INET6, buf, b) == 1) {
    *v6 = 1;
    return 0;
  }
  return -1;
}

static int model_parse(const char *p, size_t n, pfx_t *out) {
  const char *slash = memchr(p, '/', n);
  size_t alen = slash ? (size_t)(slash - p) : n;
  if (model_addr(p, alen, &out->v6, out->b)) return -1;
  unsigned max = out->v6 ? 128 : 32;
  out->len = max;
  if (slash) {
    size_t dl = n - alen - 1;
    if (dl < 1 || dl > 3) return -1;
    unsigned v = 0;
    for (size_t i = 0; i < dl; i++) {
      if (slash[1 + i] < '0' || slash[1 + i] > '9') return -1;
      v = v * 10 + (unsigned)(slash[1 + i] - '0');
    }
    if (v > max) return -1;
    out->len = v;
  }
  if (out->v6 && out->len >= 96 && memcmp(out->b, mapped, 12) == 0) {
    memmove(out->b, out->b + 12, 4);
    memset(out->b + 4, 0, 12);
    out->v6 = 0;
    out->len -= 96;
  }
  return 0;
}

static void model_add(model_t *m, const pfx_t *p) {
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 16;
    m->p = realloc(m->p, m->cap * sizeof(*m->p));
    FUZZ_CHECK(m->p != NULL);
  }
  m->p[m->n++] = *p;
}

/* Adds text to both; checks they agree on whether it is a prefix. */
static void add_text(mg_cidr_t *set, model_t *m, size_t *adds, const char *text, size_t n) {
  char *t = fz_dup(text, n);
  int rc = mg_cidr_add(set, t, n);
  free(t);
  pfx_t p;
  int mrc = model_parse(text, n, &p);
  FUZZ_CHECK(rc == 0 || rc == MG_EINVAL);
  FUZZ_CHECK((rc == 0) == (mrc == 0));
  if (rc == 0) {
    model_add(m, &p);
    (*adds)++;
  }
}

static void lookup(const mg_cidr_t *set, const model_t *m, int v6, const uint8_t addr[16]) {
  int want = model_match(m, v6, addr);
  int got;
  if (v6) {
    struct sockaddr_in6 *sa = calloc(1, sizeof(*sa));
    FUZZ_CHECK(sa != NULL);
    sa->sin6_family = AF_INET6;
    memcpy(sa->sin6_addr.s6_addr, addr, 16);
    got = mg_cidr_match(set, (const struct sockaddr *)sa);
    free(sa);
  } else {
    struct sockaddr_in *sa = calloc(1, sizeof(*sa));
    FUZZ_CHECK(sa != NULL);
    sa->sin_family = AF_INET;
    memcpy(&sa->sin_addr.s_addr, addr, 4);
    got = mg_cidr_match(set, (const struct sockaddr *)sa);
    free(sa);
  }
  FUZZ_CHECK(got == want);
  /* the same address as text, as in X-Forwarded-For */
  char text[INET6_ADDRSTRLEN + 2];
  FUZZ_CHECK(inet_ntop(v6 ? AF_INET6 : AF_INET, addr, text + 1, INET6_ADDRSTRLEN) != NULL);
  text[0] = ' ';
  size_t tl = strlen(text);
  text[tl] = '\t';
  char *t = fz_dup(text, tl + 1);
  FUZZ_CHECK(mg_cidr_match_text(set, (mg_str_t){ t, tl + 1 }) == want);
  free(t);
}

static void lookup_text(const mg_cidr_t *set, const model_t *m, const char *text, size_t n) {
  char *t = fz_dup(text, n);
  int got = mg_cidr_match_text(set, (mg_str_t){ t, n });
  free(t);
  size_t i = 0, e = n;
  while (i < e && (text[i] == ' ' || text[i] == '\t')) i++;
  while (e > i && (text[e - 1] == ' ' || text[e - 1] == '\t')) e--;
  int v6;
  uint8_t b[16];
  int want = model_addr(text + i, e - i, &v6, b) == 0 && model_match(m, v6, b);
  FUZZ_CHECK(got == want);
}

/* The prefix's first and last address, and the addresses just before and after. */
static void check_edges(const mg_cidr_t *set, const model_t *m, const pfx_t *p) {
  unsigned bytes = p->v6 ? 16 : 4, bits = bytes * 8;
  uint8_t lo[16] = { 0 }, hi[16] = { 0 };
  memcpy(lo, p->b, bytes);
  for (unsigned i = p->len; i < bits; i++) {
    lo[i / 8] &= (uint8_t)~(0x80u >> (i % 8));
    hi[i / 8] |= (uint8_t)(0x80u >> (i % 8));
  }
  for (unsigned i = 0; i < bytes; i++) hi[i] |= lo[i];
  /* found (an IPv6 prefix shorter than /96 may reach into ::ffff:0:0/96, whose
   * addresses are IPv4 ones: those it does not hold) */
  if (!p->v6 || memcmp(lo, mapped, 12) != 0) FUZZ_CHECK(model_match(m, p->v6, lo));
  if (!p->v6 || memcmp(hi, mapped, 12) != 0) FUZZ_CHECK(model_match(m, p->v6, hi));
  lookup(set, m, p->v6, lo);
  lookup(set, m, p->v6, hi);
  uint8_t before[16], after[16];
  memcpy(before, lo, 16);
  memcpy(after, hi, 16);
  for (int i = (int)bytes - 1; i >= 0 && before[i]-- == 0; i--) {}
  for (int i = (int)bytes - 1; i >= 0 && after[i]++ == 0xff; i--) {}
  lookup(set, m, p->v6, before);
  lookup(set, m, p->v6, after);
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  fz_in_t in = { p, n };
  mg_cidr_t *set = mg_cidr_new();
  FUZZ_CHECK(set != NULL);
  model_t m = { 0 };
  size_t adds = 0;
  while (in.n > 0) {
    uint8_t op = fz_u8(&in) % 5;
    if (op == 0 || op == 4) {
      size_t l = fz_u8(&in) % 64;
      if (l > in.n) l = in.n;
      if (op == 0) add_text(set, &m, &adds, (const char *)in.p, l);
      else lookup_text(set, &m, (const char *)in.p, l);
      in.p += l;
      in.n -= l;
    } else if (op == 1 || op == 2) {
      int v6 = op == 2, map = v6 && (fz_u8(&in) & 1);
      uint8_t b[16] = { 0 };
      for (unsigned i = 0; i < (v6 ? 16u : 4u); i++) b[i] = fz_u8(&in);
      unsigned len = fz_u8(&in) % (v6 ? 129u : 33u);
      if (map) memcpy(b, mapped, 12);
      char text[INET6_ADDRSTRLEN + 8];
      FUZZ_CHECK(inet_ntop(v6 ? AF_INET6 : AF_INET, b, text, INET6_ADDRSTRLEN) != NULL);
      size_t tl = strlen(text);
      tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "/%u", len);
      size_t before = adds;
      add_text(set, &m, &adds, text, tl);
      FUZZ_CHECK(adds == before + 1); /* inet_ntop's text is always a prefix */
    } else {
      uint8_t f = fz_u8(&in) % 3, b[16] = { 0 };
      for (unsigned i = 0; i < 16; i++) b[i] = fz_u8(&in);
      if (f == 2) memcpy(b, mapped, 12);
      lookup(set, &m, f != 0, b);
    }
  }
  FUZZ_CHECK(mg_cidr_count(set) == adds);
  for (size_t i = 0; i < m.n; i++) check_edges(set, &m, &m.p[i]);
  free(m.p);
  mg_cidr_free(set);
  return 0;
}
