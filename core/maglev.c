/* Maglev consistent hashing, bounded-load picks and hash_key extraction: see
 * maglev.h for the contracts and costs. */
#include "maglev.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/siphash.h>

struct mg_maglev_s {
  uint32_t nslots;  /* M, a prime */
  uint32_t n;       /* backends */
  uint64_t wsum;    /* sum of the weights */
  uint32_t *slots;  /* M backend indices */
  uint32_t *weight; /* n weights, for the bounded pick */
};

/* Table sizes: primes, roughly doubling. The smallest one >= 100 n is used, so a
 * backend owns at least ~100 slots and the shares stay within ~1 % of each other. */
static const uint32_t primes[] = { 65537,   131071,  262139,  524287,
                                   1048573, 2097143, 4194301, 8388593, 16777213 };

/* Fixed SipHash keys (arbitrary constants; changing them moves every key once).
 * Three independent functions: the slot of a key, and a backend's offset and skip. */
static const uint64_t key_hash_key[2] = { 0x6d6f6f6e67617465ull, 0x6d61676c65766b79ull };
static const uint64_t offset_key[2] = { 0x0f1e2d3c4b5a6978ull, 0x8796a5b4c3d2e1f0ull };
static const uint64_t skip_key[2] = { 0x243f6a8885a308d3ull, 0x13198a2e03707344ull };

static uint64_t sip(const uint64_t key[2], const void *p, size_t len) {
  /* SIPHASH_24 reads nothing when len is 0, but p may not be NULL for UBSan's sake */
  return SIPHASH_24(key, len ? (const uint8_t *)p : (const uint8_t *)"", len);
}

uint64_t mg_maglev_hash(const void *key, size_t len) {
  /* per request: mg_hash_bytes, 8 bytes at a time (SipHash-2-4 cost about 165
   * instructions for a 9-byte client address; this about 40). The keys it hashes
   * may be chosen by clients, and a fixed-key SipHash hid nothing from them
   * either: the bounded-load cap is what keeps chosen keys from piling up. */
  return mg_hash_bytes(key, len, key_hash_key[0]);
}

/* ---- building the table --------------------------------------------------------
 *
 * Turns by stride scheduling: backend i has stride S / w_i and a pass, starting at
 * its stride; the backend with the smallest pass takes the next turn and adds its
 * stride. Over T turns backend i gets T w_i / W of them, within one turn, and its
 * turns are spread evenly (no long run of one backend's turns, which would hand it
 * a clump of its preferred slots at the expense of the others'). Ties go to the
 * smaller offset hash, not to the config order, so the table does not depend on how
 * the servers are listed. S = 2^32 keeps strides exact to 1/4096 for the largest
 * weight and pass below 2^56 (at most M turns of at most 2^32). */

typedef struct {
  uint64_t pass, stride, h1;
  uint32_t cur, skip; /* the next slot of the permutation to try, and the step */
} turn_t;

static int turn_before(const turn_t *t, uint32_t a, uint32_t b) {
  if (t[a].pass != t[b].pass) return t[a].pass < t[b].pass;
  if (t[a].h1 != t[b].h1) return t[a].h1 < t[b].h1;
  return a < b;
}

static void heap_down(uint32_t *heap, size_t len, const turn_t *t, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < len && turn_before(t, heap[l], heap[m])) m = l;
    if (r < len && turn_before(t, heap[r], heap[m])) m = r;
    if (m == i) return;
    uint32_t x = heap[i];
    heap[i] = heap[m];
    heap[m] = x;
    i = m;
  }
}

int mg_maglev_new(const mg_maglev_backend_t *backends, size_t n, mg_maglev_t **out) {
  *out = NULL;
  if (n == 0 || n > MG_MAGLEV_MAX_BACKENDS || !backends) return MG_EINVAL;
  uint64_t wsum = 0;
  size_t live = 0;
  for (size_t i = 0; i < n; i++) {
    if (backends[i].weight > MG_MAGLEV_MAX_WEIGHT) return MG_EINVAL;
    if (!backends[i].name.p && backends[i].name.len) return MG_EINVAL;
    wsum += backends[i].weight;
    live += backends[i].weight > 0;
  }
  if (wsum == 0) return MG_EINVAL;

  uint32_t M = 0;
  for (size_t i = 0; i < sizeof(primes) / sizeof(primes[0]) && !M; i++) {
    if (primes[i] >= 100 * (uint64_t)n) M = primes[i];
  }
  if (!M) return MG_EINVAL; /* unreachable while MAX_BACKENDS * 100 fits the list */

  int rc = MG_ENOMEM;
  mg_maglev_t *m = calloc(1, sizeof(*m));
  turn_t *t = calloc(n, sizeof(*t));
  uint32_t *heap = calloc(live, sizeof(*heap));
  if (!m || !t || !heap) goto fail;
  m->slots = malloc((size_t)M * sizeof(*m->slots));
  m->weight = malloc(n * sizeof(*m->weight));
  if (!m->slots || !m->weight) goto fail;
  m->nslots = M;
  m->n = (uint32_t)n;
  m->wsum = wsum;
  for (uint32_t s = 0; s < M; s++) m->slots[s] = UINT32_MAX;

  size_t hn = 0;
  for (size_t i = 0; i < n; i++) {
    const mg_maglev_backend_t *b = &backends[i];
    m->weight[i] = b->weight;
    if (!b->weight) continue;
    t[i].h1 = sip(offset_key, b->name.p, b->name.len);
    t[i].cur = (uint32_t)(t[i].h1 % M);
    t[i].skip = (uint32_t)(sip(skip_key, b->name.p, b->name.len) % (M - 1)) + 1;
    t[i].stride = ((uint64_t)1 << 32) / b->weight;
    t[i].pass = t[i].stride;
    heap[hn++] = (uint32_t)i;
  }
  for (size_t i = hn / 2; i-- > 0;) heap_down(heap, hn, t, i);

  /* M is prime and 0 < skip < M, so each permutation visits every slot: a backend
   * always finds a free one while any is left. */
  for (uint32_t filled = 0; filled < M; filled++) {
    uint32_t i = heap[0];
    turn_t *x = &t[i];
    while (m->slots[x->cur] != UINT32_MAX) {
      x->cur += x->skip;
      if (x->cur >= M) x->cur -= M;
    }
    m->slots[x->cur] = i;
    x->pass += x->stride;
    heap_down(heap, hn, t, 0);
  }
  free(t);
  free(heap);
  *out = m;
  return 0;

fail:
  free(heap);
  free(t);
  mg_maglev_free(m);
  return rc;
}

void mg_maglev_free(mg_maglev_t *m) {
  if (!m) return;
  free(m->slots);
  free(m->weight);
  free(m);
}

size_t mg_maglev_slots(const mg_maglev_t *m) { return m->nslots; }
size_t mg_maglev_backends(const mg_maglev_t *m) { return m->n; }

uint32_t mg_maglev_slot_owner(const mg_maglev_t *m, size_t slot) {
  return slot < m->nslots ? m->slots[slot] : UINT32_MAX;
}

uint32_t mg_maglev_lookup(const mg_maglev_t *m, uint64_t hash) {
  return m->slots[hash % m->nslots];
}

/* ---- bounded loads ---------------------------------------------------------- */

int64_t mg_maglev_pick_bounded(const mg_maglev_t *m, uint64_t hash, const mg_maglev_bound_t *b) {
  uint64_t wsum = b->wsum ? b->wsum : m->wsum;
  double eps = b->eps > 0 ? b->eps : 0;
  /* cap_i = ceil(per_weight * w_i) */
  double per_weight = (1.0 + eps) * ((double)b->total + 1.0) / (double)wsum;
  uint32_t M = m->nslots, s = (uint32_t)(hash % M);
  int64_t best = -1;
  double best_ratio = 0;
  for (uint32_t k = 0; k < M; k++, s = s + 1 == M ? 0 : s + 1) {
    uint32_t i = m->slots[s];
    int64_t load = b->load(b->ud, i);
    if (load < 0) continue;
    double w = (double)m->weight[i];
    if ((double)load + 1.0 <= ceil(per_weight * w)) return i;
    double ratio = (double)load / w;
    if (best < 0 || ratio < best_ratio) {
      best = i;
      best_ratio = ratio;
    }
  }
  return best;
}

/* ---- hash_key ------------------------------------------------------------------ */

static int is_tchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return 1;
  return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_argchar(unsigned char c) {
  return c > 0x20 && c < 0x7f && c != '&' && c != '=' && c != '#';
}

static int has_prefix(const char *p, size_t len, const char *pre, size_t plen) {
  return len >= plen && memcmp(p, pre, plen) == 0;
}

int mg_hash_key_parse(const char *spec, size_t len, mg_hash_key_t *out, const char **err) {
  static const struct {
    const char *pre;
    size_t len;
    mg_hash_key_kind_t kind;
  } kinds[] = {
    { "header:", 7, MG_HASH_KEY_HEADER },
    { "cookie:", 7, MG_HASH_KEY_COOKIE },
    { "arg:", 4, MG_HASH_KEY_ARG },
  };
  *err = NULL;
  if (!spec && len) len = 0;
  if (len == 2 && memcmp(spec, "ip", 2) == 0) {
    *out = (mg_hash_key_t){ MG_HASH_KEY_IP, { NULL, 0 } };
    return 0;
  }
  for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
    if (!has_prefix(spec, len, kinds[k].pre, kinds[k].len)) continue;
    mg_str_t name = { spec + kinds[k].len, len - kinds[k].len };
    if (name.len == 0) {
      *err = "hash_key: the name after ':' is empty";
      return MG_ECONFIG;
    }
    if (name.len > MG_HASH_KEY_MAX_NAME) {
      *err = "hash_key: the name is longer than 256 bytes";
      return MG_ECONFIG;
    }
    for (size_t i = 0; i < name.len; i++) {
      unsigned char c = (unsigned char)name.p[i];
      if (kinds[k].kind == MG_HASH_KEY_ARG ? !is_argchar(c) : !is_tchar(c)) {
        *err = kinds[k].kind == MG_HASH_KEY_ARG
                 ? "hash_key: an argument name takes visible ASCII but '&', '=' and '#'"
                 : "hash_key: a header or cookie name takes only HTTP token characters";
        return MG_ECONFIG;
      }
    }
    *out = (mg_hash_key_t){ kinds[k].kind, name };
    return 0;
  }
  *err = "hash_key: expected \"ip\", \"header:NAME\", \"cookie:NAME\" or \"arg:NAME\"";
  return MG_ECONFIG;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* Finds cookie `name` in one Cookie header value ("a=1; b=2"). */
static int find_cookie(mg_str_t v, mg_str_t name, mg_str_t *out) {
  size_t i = 0;
  while (i < v.len) {
    size_t end = i;
    while (end < v.len && v.p[end] != ';') end++;
    size_t a = i, z = end;
    while (a < z && is_ows(v.p[a])) a++;
    while (z > a && is_ows(v.p[z - 1])) z--;
    const char *eq = memchr(v.p + a, '=', z - a);
    if (eq) {
      size_t nend = (size_t)(eq - v.p);
      while (nend > a && is_ows(v.p[nend - 1])) nend--; /* "a = 1" */
      size_t vb = (size_t)(eq - v.p) + 1;
      while (vb < z && is_ows(v.p[vb])) vb++;
      if (nend - a == name.len && memcmp(v.p + a, name.p, name.len) == 0) {
        *out = (mg_str_t){ v.p + vb, z - vb };
        return 1;
      }
    }
    i = end + 1;
  }
  return 0;
}

/* Finds argument `name` in a query string ("a=1&b=2"); "a" alone has an empty value. */
static int find_arg(mg_str_t q, mg_str_t name, mg_str_t *out) {
  size_t i = 0;
  while (i < q.len) {
    size_t end = i;
    while (end < q.len && q.p[end] != '&') end++;
    const char *eq = memchr(q.p + i, '=', end - i);
    size_t nend = eq ? (size_t)(eq - q.p) : end;
    if (nend - i == name.len && memcmp(q.p + i, name.p, name.len) == 0) {
      size_t vb = eq ? nend + 1 : end;
      *out = (mg_str_t){ q.p + vb, end - vb };
      return 1;
    }
    i = end + 1;
  }
  return 0;
}

int mg_hash_key_extract(const mg_hash_key_t *k, const mg_hash_input_t *in, mg_str_t *key) {
  mg_str_t v = { NULL, 0 };
  int found = 0;
  switch (k->kind) {
  case MG_HASH_KEY_IP: break;
  case MG_HASH_KEY_HEADER:
    found = in->header && in->header(in->ud, k->name, 0, &v);
    break;
  case MG_HASH_KEY_COOKIE: {
    static const mg_str_t cookie = { "cookie", 6 };
    mg_str_t h;
    for (size_t idx = 0; !found && in->header && in->header(in->ud, cookie, idx, &h); idx++) {
      found = find_cookie(h, k->name, &v);
    }
    break;
  }
  case MG_HASH_KEY_ARG:
    found = in->query.len && find_arg(in->query, k->name, &v);
    break;
  }
  if (found && v.len) {
    *key = v;
    return 1;
  }
  *key = in->ip;
  return k->kind == MG_HASH_KEY_IP && in->ip.len ? 1 : 0;
}
