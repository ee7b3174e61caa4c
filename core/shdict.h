/* Shared dictionaries: mg.shared(name) in Lua, like OpenResty's ngx.shared.DICT.
 *
 * A dict is shared by every worker thread of the process (rate limits, counters), so
 * it is one of the few pieces of state that is shared on purpose. It is split into
 * shards (MG_SHDICT_SHARDS, fewer for tiny dicts), the key's hash picks the shard and
 * one mutex per shard guards it: threads touching different keys rarely meet. Memory
 * is allocated and freed outside the shard lock; under it we only link, unlink and
 * copy the bytes of one value.
 *
 * Ownership: dicts belong to the process-wide registry and live until
 * mg_shdict_close_all() at exit; a pointer from open/find stays valid until then, so
 * callers (the Lua wrapper) may cache it. Keys and values are copied in and out; no
 * function hands out a pointer into the dict.
 *
 * Every function below is called through LuaJIT's FFI: plain scalars and (ptr, len)
 * pairs, 0 or a negative MG_SHDICT_* code, never a longjmp. Keys are binary-safe. */
#ifndef MG_SHDICT_H
#define MG_SHDICT_H

#include "mg.h"

typedef struct mg_shdict_s mg_shdict_t;

/* Value types. */
enum { MG_SHD_NIL = 0, MG_SHD_NUMBER = 1, MG_SHD_STRING = 2 };

/* Return codes: below -20000 so they never meet MG_E* or libuv's UV_E*. */
enum {
  MG_SHDICT_ENOTFOUND = -20001, /* no live entry with that key */
  MG_SHDICT_EEXISTS = -20002,   /* add: a live entry exists */
  MG_SHDICT_ETYPE = -20003,     /* incr: the value is not a number */
  MG_SHDICT_ENOMEM = -20004,    /* malloc failed */
  MG_SHDICT_ETOOBIG = -20005,   /* the entry is bigger than one shard's capacity */
  MG_SHDICT_EINVAL = -20006,    /* bad type, negative or NaN ttl, NULL with a length */
};
/* A static message for a code above ("not found", ...); "unknown error" otherwise. */
const char *mg_shdict_strerror(int rc);

#define MG_SHDICT_SHARDS 16
/* What an entry costs against the capacity besides its key and string bytes: our
 * header (links, hash, expiry, number) and malloc's own. shdict.c asserts it covers
 * sizeof the header. Numbers live in the header, so a number entry costs
 * MG_SHDICT_ENTRY_OVERHEAD + key length. */
#define MG_SHDICT_ENTRY_OVERHEAD 80
/* Dicts smaller than MG_SHDICT_SHARDS * this get fewer shards (down to one), so that
 * a shard still holds a useful number of entries. */
#define MG_SHDICT_MIN_SHARD_BYTES 4096

/* Process-wide registry. Returns the dict called `name` (NUL-terminated), creating
 * it with `capacity` bytes if it does not exist; an existing dict keeps its contents
 * and its capacity (config reloads call this again). NULL on ENOMEM or a NULL name.
 * Takes the registry lock: call it at config time, not per request. */
mg_shdict_t *mg_shdict_open(const char *name, size_t capacity);
/* NULL if absent. Lock-free (dicts are never removed before close_all). */
mg_shdict_t *mg_shdict_find(const char *name, size_t len);
/* At process exit, once no thread uses any dict: frees every dict and entry. */
void mg_shdict_close_all(void);

/* *type = MG_SHD_NIL when absent or expired. Numbers go to *num. For strings, copies
 * up to bufcap bytes into buf and sets *len to the full length, both under the shard
 * lock: if *len > bufcap the caller retries with a bigger buffer, and takes a string
 * only from a call where *len <= bufcap (another thread may have changed the value
 * in between: a length from one call never describes the bytes of the next). num and
 * len may be NULL. A hit moves the entry
 * to the front of its shard's LRU list. Returns 0 or MG_SHDICT_EINVAL. */
int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, int *type, double *num,
                  char *buf, size_t bufcap, size_t *len);
/* Stores a number (num) or a string (str, slen); type MG_SHD_NIL deletes. ttl in
 * seconds, 0 = never expires. Evicts least-recently-used entries of the same shard to
 * make room; *evicted (may be NULL) is set to 1 if a live entry was evicted, else 0.
 * MG_SHDICT_ETOOBIG if the entry can never fit. */
int mg_shdict_set(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted);
/* Like set, but MG_SHDICT_EEXISTS if a live entry exists. */
int mg_shdict_add(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted);
/* Adds `by` to a number; *out gets the new value. Absent (or expired) key: if has_init,
 * stores init+by with ttl, else MG_SHDICT_ENOTFOUND. Not a number: MG_SHDICT_ETYPE.
 * ttl applies only when the entry is created; an existing entry keeps its expiry. */
int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double by, int has_init,
                   double init, double ttl, double *out);
/* A token bucket (GCRA) in one number entry: `capacity` tokens (>= 1), one more
 * every `interval` seconds (> 0); takes one token. Returns 0 (allowed: *remaining
 * tokens are left, the bucket is full again in *wait seconds), 1 (refused: a token
 * comes in *wait seconds; nothing stored), MG_SHDICT_ETYPE (a string there),
 * MG_SHDICT_EINVAL, MG_SHDICT_ENOMEM, MG_SHDICT_ETOOBIG. The clock is read under the
 * shard lock, so concurrent callers in any thread never take more than the bucket
 * holds. The entry expires once the bucket would be full again (plus 1 s). */
int mg_shdict_gcra(mg_shdict_t *d, const char *key, size_t klen, double interval, double capacity,
                   double *wait, double *remaining);
/* 0 if a live entry was removed, MG_SHDICT_ENOTFOUND if there was none. */
int mg_shdict_delete(mg_shdict_t *d, const char *key, size_t klen);
/* Live entries (tests, metrics). Walks every shard and reclaims the expired entries
 * it meets: O(entries), not for the request path. */
size_t mg_shdict_count(mg_shdict_t *d);
/* How evenly the entries (live or expired, not yet reclaimed) are spread: entries in
 * the fullest and the emptiest shard, and the longest bucket chain. Tests and
 * metrics: O(entries + buckets), every shard locked in turn. Not part of the FFI. */
typedef struct {
  unsigned shards;
  size_t min_shard, max_shard, max_chain;
} mg_shdict_spread_t;
void mg_shdict_spread(mg_shdict_t *d, mg_shdict_spread_t *out);
/* Removes every entry; the dict stays registered with its capacity. */
void mg_shdict_flush_all(mg_shdict_t *d);

#endif
