/* core/cidr.c: prefix sets for trusted_proxies and IP rules. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>

#include "../cidr.h"
#include "test.h"

static int add(mg_cidr_t *s, const char *text) {
  return mg_cidr_add(s, text, strlen(text));
}

static int has(const mg_cidr_t *s, const char *ip) {
  return mg_cidr_match_text(s, (mg_str_t){ ip, strlen(ip) });
}

/* The sockaddr path, with the storage a socket call would fill. */
static int has_sa(const mg_cidr_t *s, const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof(ss));
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(1234);
    if (inet_pton(AF_INET6, ip, &a->sin6_addr) != 1) return -1;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(1234);
    if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) return -1;
  }
  return mg_cidr_match(s, (const struct sockaddr *)&ss);
}

/* both lookups must agree on every address the tests ask about */
static int in(const mg_cidr_t *s, const char *ip) {
  int t = has(s, ip), a = has_sa(s, ip);
  if (t != a) fprintf(stderr, "  %s: text says %d, sockaddr says %d\n", ip, t, a);
  return t == a ? t : -1;
}

static void v4_prefix_boundaries(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(s && mg_cidr_count(s) == 0);
  CHECK(in(s, "10.0.0.1") == 0); /* empty set */
  CHECK(add(s, "10.0.0.0/8") == 0);
  CHECK(add(s, "192.168.1.1") == 0);
  CHECK(add(s, "172.16.0.0/12") == 0);
  CHECK(add(s, "203.0.113.128/25") == 0);
  CHECK(mg_cidr_count(s) == 4);
  CHECK(in(s, "10.0.0.0") == 1);
  CHECK(in(s, "10.255.255.255") == 1);
  CHECK(in(s, "9.255.255.255") == 0);
  CHECK(in(s, "11.0.0.0") == 0);
  CHECK(in(s, "192.168.1.1") == 1);
  CHECK(in(s, "192.168.1.0") == 0);
  CHECK(in(s, "192.168.1.2") == 0);
  CHECK(in(s, "172.16.0.0") == 1);
  CHECK(in(s, "172.31.255.255") == 1);
  CHECK(in(s, "172.32.0.0") == 0);
  CHECK(in(s, "172.15.255.255") == 0);
  CHECK(in(s, "203.0.113.127") == 0);
  CHECK(in(s, "203.0.113.128") == 1);
  CHECK(in(s, "203.0.113.255") == 1);
  /* v4 rules say nothing about v6 addresses */
  CHECK(in(s, "::a00:1") == 0);
  CHECK(in(s, "a00::1") == 0);
  mg_cidr_free(s);
}

static void v6_prefix_boundaries(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "2001:db8::/32") == 0);
  CHECK(add(s, "::1") == 0);
  CHECK(add(s, "fe80::/10") == 0);
  CHECK(add(s, "2001:db9:0:0:8000::/65") == 0);
  CHECK(add(s, "2001:dba::1:0/127") == 0);
  CHECK(in(s, "2001:db8::") == 1);
  CHECK(in(s, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff") == 1);
  CHECK(in(s, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff") == 0);
  CHECK(in(s, "2001:db9::") == 0);
  CHECK(in(s, "::1") == 1);
  CHECK(in(s, "::") == 0);
  CHECK(in(s, "::2") == 0);
  CHECK(in(s, "fe80::1") == 1);
  CHECK(in(s, "febf:ffff::1") == 1);
  CHECK(in(s, "fec0::") == 0);
  CHECK(in(s, "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == 0);
  /* a prefix that ends across the 64-bit word boundary */
  CHECK(in(s, "2001:db9:0:0:8000::") == 1);
  CHECK(in(s, "2001:db9:0:0:ffff:ffff:ffff:ffff") == 1);
  CHECK(in(s, "2001:db9:0:0:7fff:ffff:ffff:ffff") == 0);
  CHECK(in(s, "2001:db9:0:1::") == 0);
  CHECK(in(s, "2001:dba::1:0") == 1);
  CHECK(in(s, "2001:dba::1:1") == 1);
  CHECK(in(s, "2001:dba::1:2") == 0);
  CHECK(in(s, "2001:dba::0:ffff") == 0);
  /* v6 rules say nothing about v4 addresses */
  CHECK(in(s, "0.0.0.1") == 0);
  mg_cidr_free(s);
}

static void zero_and_full_lengths(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "0.0.0.0/0") == 0);
  CHECK(in(s, "0.0.0.0") == 1 && in(s, "255.255.255.255") == 1 && in(s, "1.2.3.4") == 1);
  CHECK(in(s, "::1") == 0 && in(s, "2001:db8::1") == 0);
  CHECK(add(s, "::/0") == 0);
  CHECK(in(s, "::") == 1 && in(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == 1);
  mg_cidr_free(s);

  s = mg_cidr_new();
  CHECK(add(s, "1.2.3.4/32") == 0);
  CHECK(add(s, "2001:db8::1/128") == 0);
  CHECK(in(s, "1.2.3.4") == 1 && in(s, "1.2.3.5") == 0 && in(s, "1.2.3.3") == 0);
  CHECK(in(s, "2001:db8::1") == 1 && in(s, "2001:db8::") == 0 && in(s, "2001:db8::2") == 0);
  mg_cidr_free(s);
}

static void host_bits_are_masked(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "10.1.2.3/8") == 0);
  CHECK(add(s, "2001:db8::1/32") == 0);
  CHECK(in(s, "10.200.0.1") == 1 && in(s, "11.1.2.3") == 0);
  CHECK(in(s, "2001:db8:1::") == 1 && in(s, "2001:db9::1") == 0);
  mg_cidr_free(s);
}

/* Shorter after longer and longer after shorter: the set is the union either way. */
static void overlapping_prefixes_in_any_order(void) {
  static const char *adds[] = { "10.1.2.0/24", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "11.0.0.0/8",
                                "10.128.0.0/9" };
  for (int order = 0; order < 2; order++) {
    mg_cidr_t *s = mg_cidr_new();
    for (int i = 0; i < 6; i++) CHECK(add(s, adds[order ? 5 - i : i]) == 0);
    CHECK(in(s, "10.1.2.3") == 1 && in(s, "10.99.0.0") == 1 && in(s, "11.255.0.1") == 1);
    CHECK(in(s, "12.0.0.0") == 0 && in(s, "9.255.255.255") == 0);
    CHECK(mg_cidr_count(s) == 6);
    mg_cidr_free(s);
  }
  /* siblings that split an edge deep down, then their common parent */
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "192.168.100.0/24") == 0);
  CHECK(add(s, "192.168.101.0/24") == 0);
  CHECK(add(s, "192.168.96.0/20") == 0);
  CHECK(in(s, "192.168.100.7") == 1 && in(s, "192.168.101.7") == 1);
  CHECK(in(s, "192.168.102.7") == 1 && in(s, "192.168.112.0") == 0);
  mg_cidr_free(s);
}

/* A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d: it is that IPv4
 * address, for v4 rules and for mapped rules alike, and v6 rules never match it. */
static void mapped_v4_matches_v4_rules(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "10.0.0.0/8") == 0);
  CHECK(in(s, "::ffff:10.1.2.3") == 1);
  CHECK(in(s, "::ffff:a01:203") == 1);
  CHECK(in(s, "::ffff:11.1.2.3") == 0);
  CHECK(in(s, "::10.1.2.3") == 0);        /* "compatible", not mapped: a v6 address */
  CHECK(in(s, "::fffe:10.1.2.3") == 0);
  CHECK(in(s, "64:ff9b::10.1.2.3") == 0); /* NAT64 is not the v4 address */
  /* a mapped prefix is stored as the v4 prefix */
  CHECK(add(s, "::ffff:192.168.0.0/112") == 0);
  CHECK(in(s, "192.168.44.1") == 1 && in(s, "::ffff:192.168.44.1") == 1);
  CHECK(in(s, "192.169.0.1") == 0);
  CHECK(add(s, "::ffff:1.2.3.4") == 0);
  CHECK(in(s, "1.2.3.4") == 1 && in(s, "1.2.3.5") == 0);
  mg_cidr_free(s);

  s = mg_cidr_new();
  CHECK(add(s, "::/0") == 0); /* all IPv6: not the IPv4 clients */
  CHECK(in(s, "::ffff:10.1.2.3") == 0 && in(s, "2001:db8::1") == 1);
  CHECK(add(s, "::ffff:0.0.0.0/96") == 0); /* all IPv4 */
  CHECK(in(s, "::ffff:10.1.2.3") == 1 && in(s, "10.1.2.3") == 1);
  mg_cidr_free(s);
}

static void bad_text_is_refused(void) {
  static const char *bad[] = {
    "", "/", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/8/8",
    "10.0.0.0/ 8", "10.0.0.0 /8", " 10.0.0.0/8", "10.0.0.0/8 ", "10.0.0.0/0008", "10.0.0.0/x",
    "10.0.0", "10.0.0.256", "010.0.0.1", "10.0.0.0.0", "1.2.3.4:80", "0x0a.0.0.1", "10.0.0.0/3a",
    "::1/129", "::1/1280", "2001:db8::/", ":::1", "2001:db8::g", "[::1]", "[::1]/128",
    "fe80::1%eth0", "1:2:3:4:5:6:7:8:9", "localhost", "10.0.0.1\n",
    "0123456789012345678901234567890123456789012345678901234567890",
  };
  mg_cidr_t *s = mg_cidr_new();
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    int rc = add(s, bad[i]);
    if (rc != MG_EINVAL) fprintf(stderr, "  \"%s\" gave %d\n", bad[i], rc);
    CHECK(rc == MG_EINVAL);
  }
  CHECK(mg_cidr_add(s, "10.0.0.1\0/8", 10) == MG_EINVAL); /* NUL inside */
  CHECK(mg_cidr_add(s, NULL, 0) == MG_EINVAL);
  CHECK(mg_cidr_add(NULL, "10.0.0.0/8", 10) == MG_EINVAL);
  CHECK(mg_cidr_count(s) == 0);
  /* nothing was added by the refused ones */
  CHECK(in(s, "10.0.0.1") == 0 && in(s, "::1") == 0 && in(s, "0.0.0.0") == 0);
  /* a length of exactly the address size and leading zeros in the length are fine */
  CHECK(add(s, "10.0.0.0/032") == 0 && add(s, "::/000") == 0);
  mg_cidr_free(s);
}

static void match_text_trims_and_refuses_garbage(void) {
  mg_cidr_t *s = mg_cidr_new();
  CHECK(add(s, "10.0.0.0/8") == 0 && add(s, "2001:db8::/32") == 0);
  CHECK(has(s, " 10.1.1.1") == 1);
  CHECK(has(s, "10.1.1.1  ") == 1);
  CHECK(has(s, "\t 2001:db8::5 \t") == 1);
  CHECK(mg_cidr_match_text(s, (mg_str_t){ "10.1.1.1,", 8 }) == 1); /* a slice of a list */
  static const char *garbage[] = {
    "", " ", "unknown", "10.1.1.1:80", "[2001:db8::5]", "[2001:db8::5]:80", "10.1.1.1/8",
    "10.1.1", "10.1.1.1,10.2.2.2", "10.1 .1.1", "_hidden", "2001:db8::5%eth0",
  };
  for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) CHECK(has(s, garbage[i]) == 0);
  CHECK(mg_cidr_match_text(s, (mg_str_t){ NULL, 0 }) == 0);
  CHECK(mg_cidr_match_text(NULL, MG_STR("10.1.1.1")) == 0);
  struct sockaddr un = { .sa_family = AF_UNIX };
  CHECK(mg_cidr_match(s, &un) == 0);
  CHECK(mg_cidr_match(s, NULL) == 0 && mg_cidr_match(NULL, &un) == 0);
  mg_cidr_free(s);
  mg_cidr_free(NULL);
}

/* A fixed-seed generator, so a failure is reproducible (splitmix64). */
static uint64_t rng_state = 0x6d6f6f6e67617465ULL;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The brute-force reference: each prefix as (network, mask) in two big-endian
 * words, v4 and v6 in separate lists so the scan is a tight loop. */
typedef struct {
  uint64_t net[2], mask[2];
} ref_t;

typedef struct {
  ref_t *v[2]; /* [0] IPv4, [1] IPv6 */
  size_t n[2];
} refs_t;

static void words(const unsigned char b[16], uint64_t w[2]) {
  w[0] = w[1] = 0;
  for (int i = 0; i < 16; i++) w[i / 8] = w[i / 8] << 8 | b[i];
}

static void ref_add(refs_t *rs, int v6, const unsigned char addr[16], unsigned len) {
  unsigned char mask[16];
  for (unsigned i = 0; i < 16; i++) {
    unsigned bits = len > 8 * i ? len - 8 * i : 0;
    mask[i] = bits >= 8 ? 0xff : (unsigned char)(0xff00 >> bits);
  }
  ref_t *r = &rs->v[v6][rs->n[v6]++];
  words(mask, r->mask);
  words(addr, r->net);
  r->net[0] &= r->mask[0], r->net[1] &= r->mask[1];
}

static int ref_match(const refs_t *rs, const unsigned char a[16], int v6) {
  uint64_t w[2];
  words(a, w);
  const ref_t *r = rs->v[v6];
  for (size_t k = 0; k < rs->n[v6]; k++)
    if ((w[0] & r[k].mask[0]) == r[k].net[0] && (w[1] & r[k].mask[1]) == r[k].net[1]) return 1;
  return 0;
}

static void rand_bytes(unsigned char *b, size_t n) {
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)rnd();
}

/* 100,000 random prefixes (host bits random, so masking is exercised too), then
 * 10,000 addresses checked against a linear scan: half fully random, half taken
 * from a random prefix with random host bits, so both answers occur often. */
static void random_100k_prefixes_agree_with_linear_scan(void) {
  enum { NPREFIX = 100000, NADDR = 10000 };
  refs_t rs = { { calloc(NPREFIX, sizeof(ref_t)), calloc(NPREFIX, sizeof(ref_t)) }, { 0, 0 } };
  mg_cidr_t *s = mg_cidr_new();
  CHECK(rs.v[0] && rs.v[1] && s);
  if (!rs.v[0] || !rs.v[1] || !s) goto done;
  for (size_t k = 0; k < NPREFIX; k++) {
    int v6 = (int)(rnd() & 1);
    unsigned char addr[16] = { 0 };
    rand_bytes(addr, v6 ? 16 : 4);
    /* lengths long enough that a random address misses often, a few /8../15 */
    unsigned len = v6 ? 16 + (unsigned)(rnd() % 113) : 16 + (unsigned)(rnd() % 17);
    if (rnd() % 5000 == 0) len = 8 + (unsigned)(rnd() % 8);
    int mapped = v6 && k % 1000 == 0;
    if (mapped) {
      memset(addr, 0, 10), addr[10] = addr[11] = 0xff;
      len = 96 + 16 + (unsigned)(rnd() % 17);
    }
    char text[INET6_ADDRSTRLEN + 8];
    inet_ntop(v6 ? AF_INET6 : AF_INET, addr, text, INET6_ADDRSTRLEN);
    snprintf(text + strlen(text), 8, "/%u", len);
    CHECK(mg_cidr_add(s, text, strlen(text)) == 0);
    if (mapped) {
      /* a mapped prefix is an IPv4 prefix for the reference too */
      unsigned char v4[16] = { 0 };
      memcpy(v4, addr + 12, 4);
      ref_add(&rs, 0, v4, len - 96);
    } else {
      ref_add(&rs, v6, addr, len);
    }
  }
  CHECK(mg_cidr_count(s) == NPREFIX);

  int hits = 0, misses = 0;
  for (int j = 0; j < NADDR; j++) {
    unsigned char a[16] = { 0 };
    int v6 = (int)(rnd() & 1);
    rand_bytes(a, v6 ? 16 : 4);
    if (j & 1) {
      /* inside a random prefix of that family, with random host bits */
      const ref_t *r = &rs.v[v6][rnd() % rs.n[v6]];
      uint64_t w[2];
      words(a, w);
      for (int i = 0; i < 2; i++) w[i] = r->net[i] | (w[i] & ~r->mask[i]);
      for (int i = 0; i < 16; i++) a[i] = (unsigned char)(w[i / 8] >> (56 - 8 * (i % 8)));
    }
    int want = ref_match(&rs, a, v6);
    hits += want, misses += !want;

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    char text[INET6_ADDRSTRLEN];
    if (v6) {
      struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
      in6->sin6_family = AF_INET6;
      memcpy(&in6->sin6_addr, a, 16);
    } else {
      struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
      in4->sin_family = AF_INET;
      memcpy(&in4->sin_addr, a, 4);
    }
    inet_ntop(v6 ? AF_INET6 : AF_INET, a, text, sizeof(text));
    int got = mg_cidr_match(s, (struct sockaddr *)&ss);
    int got_text = mg_cidr_match_text(s, (mg_str_t){ text, strlen(text) });
    if (got != want || got_text != want) fprintf(stderr, "  %s: want %d, got %d / %d\n", text, want, got, got_text);
    CHECK(got == want && got_text == want);

    if (!v6) {
      /* the same address, mapped, answers the same */
      struct sockaddr_in6 m;
      memset(&m, 0, sizeof(m));
      m.sin6_family = AF_INET6;
      m.sin6_addr.s6_addr[10] = m.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&m.sin6_addr.s6_addr[12], a, 4);
      CHECK(mg_cidr_match(s, (struct sockaddr *)&m) == want);
    }
  }
  /* both outcomes must be well represented, or the check proves little */
  CHECK(hits > NADDR / 3 && misses > NADDR / 10);
done:
  mg_cidr_free(s);
  free(rs.v[0]);
  free(rs.v[1]);
}

int main(void) {
  static const t_case_t cases[] = {
    T(v4_prefix_boundaries),
    T(v6_prefix_boundaries),
    T(zero_and_full_lengths),
    T(host_bits_are_masked),
    T(overlapping_prefixes_in_any_order),
    T(mapped_v4_matches_v4_rules),
    T(bad_text_is_refused),
    T(match_text_trims_and_refuses_garbage),
    T(random_100k_prefixes_agree_with_linear_scan),
  };
  return t_run("cidr", cases, sizeof(cases) / sizeof(cases[0]));
}
