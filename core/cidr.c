/* Prefix sets as path-compressed binary tries: see cidr.h for the contract.
 *
 * An address is 128 bits in two words, most significant bit first (an IPv4 address
 * fills the top 32 bits of its trie's keys). Each node holds a whole prefix (key +
 * length), so a chain of single-child nodes collapses into one edge: a lookup steps
 * only where prefixes differ or end, and n prefixes need at most 2n nodes. */
#include "cidr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

typedef struct {
  uint64_t key[2];   /* the prefix; bits at and past `len` are zero */
  uint32_t child[2]; /* by the bit at position `len`; 0 = none (a root is never a child) */
  uint8_t len;       /* prefix length in bits, 0..128; a child is longer than its parent */
  uint8_t term;      /* a prefix of the set ends here: everything below is inside it */
} node_t;

enum { ROOT4 = 0, ROOT6 = 1 };

struct mg_cidr_s {
  node_t *nodes; /* one array, indices as links: realloc moves it, and free is one call */
  uint32_t n, cap;
  size_t count;
};

static unsigned bit_at(const uint64_t k[2], unsigned i) {
  return (unsigned)(k[i >> 6] >> (63 - (i & 63))) & 1u;
}

/* Clears the bits at and past `len` (host bits of "10.1.2.3/8"). */
static void mask_to(uint64_t k[2], unsigned len) {
  if (len == 0) {
    k[0] = k[1] = 0;
  } else if (len < 64) {
    k[0] &= ~UINT64_C(0) << (64 - len);
    k[1] = 0;
  } else if (len == 64) {
    k[1] = 0;
  } else if (len < 128) {
    k[1] &= ~UINT64_C(0) << (128 - len);
  }
}

/* How many leading bits a and b share, at most `max`. */
static unsigned common_len(const uint64_t a[2], const uint64_t b[2], unsigned max) {
  uint64_t x0 = a[0] ^ b[0], x1 = a[1] ^ b[1];
  unsigned n = x0 ? (unsigned)__builtin_clzll(x0) : x1 ? 64u + (unsigned)__builtin_clzll(x1) : 128u;
  return n < max ? n : max;
}

static int node_has(const node_t *nd, const uint64_t a[2]) {
  return common_len(nd->key, a, nd->len) == nd->len;
}

/* Makes room for `more` nodes, so that an insertion never reallocates halfway
 * through (it holds node pointers). Doubling keeps building 100,000 prefixes linear. */
static int reserve(mg_cidr_t *set, uint32_t more) {
  if (set->cap - set->n >= more) return 0;
  if (set->cap > UINT32_MAX / 2) return MG_ENOMEM;
  uint32_t cap = set->cap * 2;
  node_t *nodes = realloc(set->nodes, (size_t)cap * sizeof(*nodes));
  if (!nodes) return MG_ENOMEM;
  set->nodes = nodes;
  set->cap = cap;
  return 0;
}

/* The caller has reserved room. */
static uint32_t new_node(mg_cidr_t *set, const uint64_t key[2], unsigned len, int term) {
  node_t *nd = &set->nodes[set->n];
  *nd = (node_t){ .key = { key[0], key[1] }, .len = (uint8_t)len, .term = (uint8_t)term };
  mask_to(nd->key, len);
  return set->n++;
}

mg_cidr_t *mg_cidr_new(void) {
  mg_cidr_t *set = calloc(1, sizeof(*set));
  if (!set) return NULL;
  set->cap = 64;
  set->nodes = malloc(set->cap * sizeof(*set->nodes));
  if (!set->nodes) {
    free(set);
    return NULL;
  }
  static const uint64_t zero[2] = { 0, 0 };
  new_node(set, zero, 0, 0); /* ROOT4: the empty prefix, a member only after /0 */
  new_node(set, zero, 0, 0); /* ROOT6 */
  return set;
}

void mg_cidr_free(mg_cidr_t *set) {
  if (!set) return;
  free(set->nodes);
  free(set);
}

size_t mg_cidr_count(const mg_cidr_t *set) {
  return set ? set->count : 0;
}

/* Walks down from `root` along key's bits. Invariant: `key` agrees with the
 * current node's prefix, which is shorter than `len`. Where the walk leaves the
 * trie it hangs a leaf; where it leaves an edge halfway it splits the edge with a
 * node at the first differing bit (2 nodes at most, hence reserve(2)). */
static int insert(mg_cidr_t *set, uint32_t root, const uint64_t key[2], unsigned len) {
  if (reserve(set, 2)) return MG_ENOMEM;
  uint32_t cur = root;
  for (;;) {
    node_t *nd = &set->nodes[cur];
    if (nd->term) return 0; /* already covered by a shorter prefix */
    if (nd->len == len) {
      nd->term = 1; /* the nodes below stay; a lookup stops here first */
      return 0;
    }
    unsigned b = bit_at(key, nd->len);
    uint32_t c = nd->child[b];
    if (!c) {
      nd->child[b] = new_node(set, key, len, 1);
      return 0;
    }
    const node_t *cn = &set->nodes[c];
    unsigned clen = cn->len;
    unsigned common = common_len(key, cn->key, len < clen ? len : clen);
    if (common == clen) {
      cur = c;
      continue;
    }
    /* The new prefix leaves c's edge at bit `common` (> nd->len, as both take
     * branch b): a node there becomes the parent of c and, unless it is the new
     * prefix itself, of a new leaf. */
    uint32_t m = new_node(set, key, common, common == len);
    set->nodes[m].child[bit_at(set->nodes[c].key, common)] = c;
    if (common < len) set->nodes[m].child[bit_at(key, common)] = new_node(set, key, len, 1);
    nd->child[b] = m;
    return 0;
  }
}

/* Is the address a[] inside a prefix of the trie at `root`? Each step checks the
 * whole edge (the child's prefix), so a lookup touches at most one node per bit. */
static int lookup(const mg_cidr_t *set, uint32_t root, const uint64_t a[2]) {
  uint32_t cur = root;
  for (;;) {
    const node_t *nd = &set->nodes[cur];
    if (nd->term) return 1;
    if (nd->len >= 128) return 0;
    uint32_t c = nd->child[bit_at(a, nd->len)];
    if (!c || !node_has(&set->nodes[c], a)) return 0;
    cur = c;
  }
}

/* Big-endian address bytes (4 or 16) into a key. */
static void key_from_bytes(const unsigned char *b, size_t n, uint64_t k[2]) {
  k[0] = k[1] = 0;
  for (size_t i = 0; i < n; i++) k[i / 8] |= (uint64_t)b[i] << (56 - 8 * (i % 8));
}

/* ::ffff:0:0/96, where a dual-stack socket puts IPv4 peers. */
static int is_v4_mapped(const unsigned char b[16]) {
  static const unsigned char pre[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
  return memcmp(b, pre, sizeof(pre)) == 0;
}

typedef struct {
  uint32_t root;   /* ROOT4 or ROOT6: which trie */
  uint64_t key[2]; /* an IPv4 address is in the top 32 bits */
} addr_t;

static void addr_v4(const unsigned char b[4], addr_t *a) {
  a->root = ROOT4;
  key_from_bytes(b, 4, a->key);
}

/* A mapped address is its IPv4 address (cidr.h). */
static void addr_v6(const unsigned char b[16], addr_t *a) {
  if (is_v4_mapped(b)) {
    addr_v4(b + 12, a);
  } else {
    a->root = ROOT6;
    key_from_bytes(b, 16, a->key);
  }
}

/* An address in inet_pton's text form (not NUL-terminated) into its bytes: 4 when
 * *v6 is 0, else 16. A ':' says IPv6. */
static int parse_addr(const char *p, size_t len, unsigned char b[16], int *v6) {
  char buf[INET6_ADDRSTRLEN];
  if (len == 0 || len >= sizeof(buf) || memchr(p, '\0', len)) return MG_EINVAL;
  memcpy(buf, p, len);
  buf[len] = '\0';
  *v6 = memchr(p, ':', len) != NULL;
  return inet_pton(*v6 ? AF_INET6 : AF_INET, buf, b) == 1 ? 0 : MG_EINVAL;
}

/* "/N": 1 to 3 digits, at most `max`. */
static int parse_len(const char *p, size_t len, unsigned max, unsigned *out) {
  if (len == 0 || len > 3) return MG_EINVAL;
  unsigned v = 0;
  for (size_t i = 0; i < len; i++) {
    if (p[i] < '0' || p[i] > '9') return MG_EINVAL;
    v = v * 10 + (unsigned)(p[i] - '0');
  }
  if (v > max) return MG_EINVAL;
  *out = v;
  return 0;
}

int mg_cidr_add(mg_cidr_t *set, const char *text, size_t len) {
  if (!set || !text) return MG_EINVAL;
  const char *slash = memchr(text, '/', len);
  size_t alen = slash ? (size_t)(slash - text) : len;
  unsigned char b[16];
  int v6;
  if (parse_addr(text, alen, b, &v6)) return MG_EINVAL;
  unsigned max = v6 ? 128 : 32, plen = max;
  if (slash && parse_len(slash + 1, len - alen - 1, max, &plen)) return MG_EINVAL;
  addr_t a;
  if (!v6) {
    addr_v4(b, &a);
  } else if (is_v4_mapped(b) && plen >= 96) {
    addr_v4(b + 12, &a); /* a mapped prefix is an IPv4 prefix, so it matches IPv4 peers */
    plen -= 96;
  } else {
    /* Shorter prefixes (::/0, ::/8) also cover non-mapped addresses: they stay IPv6
     * and, by the rule in cidr.h, never match a mapped (= IPv4) address. */
    a.root = ROOT6;
    key_from_bytes(b, 16, a.key);
  }
  int rc = insert(set, a.root, a.key, plen);
  if (rc == 0) set->count++;
  return rc;
}

int mg_cidr_match(const mg_cidr_t *set, const struct sockaddr *sa) {
  if (!set || !sa) return 0;
  addr_t a;
  /* copies, not casts: the caller's storage need not be aligned for the bigger struct */
  if (sa->sa_family == AF_INET) {
    struct sockaddr_in in4;
    memcpy(&in4, sa, sizeof(in4));
    addr_v4((const unsigned char *)&in4.sin_addr.s_addr, &a);
  } else if (sa->sa_family == AF_INET6) {
    struct sockaddr_in6 in6;
    memcpy(&in6, sa, sizeof(in6));
    addr_v6(in6.sin6_addr.s6_addr, &a);
  } else {
    return 0;
  }
  return lookup(set, a.root, a.key);
}

int mg_cidr_match_text(const mg_cidr_t *set, mg_str_t ip_text) {
  if (!set || !ip_text.p) return 0;
  const char *p = ip_text.p;
  size_t len = ip_text.len;
  while (len && (p[0] == ' ' || p[0] == '\t')) p++, len--;
  while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
  unsigned char b[16];
  int v6;
  if (parse_addr(p, len, b, &v6)) return 0;
  addr_t a;
  if (v6) {
    addr_v6(b, &a);
  } else {
    addr_v4(b, &a);
  }
  return lookup(set, a.root, a.key);
}
