/* The response cache's object types (core/cache.h has the store, core/cachedisk.h
 * its disk tier): what both tiers make, keep and hand out, and nothing that
 * acts on them, so the two share the types without using each other's code. */
#ifndef MG_COBJ_H
#define MG_COBJ_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cachepol.h"

#define MG_CACHE_CHUNK 16384
/* The most shards a store has; fewer when the cap is small (each shard must hold
 * at least two objects of max_object bytes: a shard evicts only its own objects). */
#define MG_CACHE_SHARDS 64
/* What an object costs beyond its bytes (the object and chunk headers, malloc's). */
#define MG_CACHE_OVERHEAD 256
/* The variants one key keeps (in memory, and on disk): a new one beyond replaces
 * the least recently used. Without a bound, clients sending a new value of a
 * header the response varies on (User-Agent, Accept-Language) would pile up
 * variants that every lookup of the key walks under the shard's lock. */
#define MG_CACHE_VARIANTS_MAX 16

typedef struct mg_cache_s mg_cache_t;
typedef struct mg_cobj_s mg_cobj_t;
typedef struct mg_cwriter_s mg_cwriter_t;

typedef struct mg_cchunk_s mg_cchunk_t;
struct mg_cchunk_s {
  mg_cchunk_t *next;
  size_t len;
  char data[];
};

/* Read-only for everyone once committed. */
struct mg_cobj_s {
  atomic_int refs;
  mg_cobj_t *hnext, *prev, *next; /* the shard's chain and LRU (under its lock) */
  uint64_t used;                  /* the shard's tick at its last use (under its lock) */
  uint64_t hash;                  /* of the primary key */
  size_t cost;                    /* bytes charged to the shard */
  mg_cp_meta_t meta;
  mg_str_t key;   /* primary key (mg_cp_key) */
  mg_str_t vary;  /* secondary key (mg_cp_vary_key); len 0: the response had no Vary */
  mg_str_t head;  /* the stored header lines, "name: value\r\n" each, no status line */
  uint64_t body_len;
  mg_cchunk_t *body; /* NULL when the body is empty */
};

typedef struct {
  uint64_t objects, bytes, cap;
  uint64_t lookups, hits, stores, replaced, rejected, evictions, too_big;
  /* the disk store (0 without one): files, their bytes (whole 4 KiB blocks), the
   * cap, lookups answered from disk, files written, writes failed or dropped,
   * files evicted, files found corrupt and deleted */
  uint64_t disk_objects, disk_bytes, disk_cap, disk_hits, disk_writes, disk_write_errors, disk_evictions,
      disk_corrupt;
} mg_cache_stats_t;

/* Whether a stored variant is the one a request wants; called under the shard
 * lock for each variant of the key, so it must not block or call the store. */
typedef int (*mg_cache_match_cb)(const mg_cobj_t *o, void *ctx);

#endif
