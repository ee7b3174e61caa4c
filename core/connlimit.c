#include "connlimit.h"

#include <stdlib.h>

#include <openssl/siphash.h>
#include <uv.h>

/* A fixed table: SHARDS mutexes, each over BUCKETS chains of entries, one entry per
 * address that has a connection open (freed when its count falls to 0). Fixed, so
 * nothing is allocated but the entries and nothing outlives the last connection;
 * 8192 chains stay short for any realistic number of distinct clients. The hash is
 * SipHash with a random key per process: clients choose their addresses (an IPv6
 * client has a /64 to pick from), so they must not be able to choose collisions. */
#define SHARDS 64
#define BUCKETS 128
#define IP_MAX 63

typedef struct entry_s {
  struct entry_s *next;
  uint64_t count;
  uint8_t len;
  char ip[IP_MAX];
} entry_t;

typedef struct {
  uv_mutex_t lock;
  entry_t *buckets[BUCKETS];
} shard_t;

static shard_t shards[SHARDS];
static uint64_t sip_key[2];
static uv_once_t once = UV_ONCE_INIT;

static void init(void) {
  for (int i = 0; i < SHARDS; i++) uv_mutex_init(&shards[i].lock);
  if (uv_random(NULL, NULL, sip_key, sizeof(sip_key), 0, NULL) < 0) {
    /* no entropy source: a fixed key still spreads ordinary clients */
    sip_key[0] = 0x6d6f6f6e67617465u;
    sip_key[1] = (uint64_t)(uintptr_t)&once;
  }
}

/* The chain for ip (its shard locked on return). */
static entry_t **chain(mg_str_t ip, shard_t **sh) {
  uv_once(&once, init);
  uint64_t h = SIPHASH_24(sip_key, (const uint8_t *)ip.p, ip.len);
  *sh = &shards[h >> 58]; /* top 6 bits: the shard; low bits: the bucket */
  uv_mutex_lock(&(*sh)->lock);
  return &(*sh)->buckets[h % BUCKETS];
}

static entry_t **find(entry_t **head, mg_str_t ip) {
  entry_t **e = head;
  while (*e && !((*e)->len == ip.len && memcmp((*e)->ip, ip.p, ip.len) == 0)) e = &(*e)->next;
  return e;
}

int mg_connlimit_acquire(mg_str_t ip, uint64_t max) {
  if (ip.len > IP_MAX) ip.len = IP_MAX;
  shard_t *sh;
  entry_t **e = find(chain(ip, &sh), ip);
  int rc = 1;
  if (*e) {
    if ((*e)->count >= max) rc = 0;
    else (*e)->count++;
  } else if (max == 0) {
    rc = 0;
  } else {
    entry_t *n = malloc(sizeof(*n));
    if (n) {
      n->next = NULL;
      n->count = 1;
      n->len = (uint8_t)ip.len;
      memcpy(n->ip, ip.p, ip.len);
      *e = n;
    } else {
      rc = MG_ENOMEM;
    }
  }
  uv_mutex_unlock(&sh->lock);
  return rc;
}

void mg_connlimit_release(mg_str_t ip) {
  if (ip.len > IP_MAX) ip.len = IP_MAX;
  shard_t *sh;
  entry_t **e = find(chain(ip, &sh), ip);
  entry_t *gone = NULL;
  if (*e && --(*e)->count == 0) {
    gone = *e;
    *e = gone->next;
  }
  uv_mutex_unlock(&sh->lock);
  free(gone);
}

uint64_t mg_connlimit_count(mg_str_t ip) {
  if (ip.len > IP_MAX) ip.len = IP_MAX;
  shard_t *sh;
  entry_t **e = find(chain(ip, &sh), ip);
  uint64_t n = *e ? (*e)->count : 0;
  uv_mutex_unlock(&sh->lock);
  return n;
}
