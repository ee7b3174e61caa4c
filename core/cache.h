/* The response cache's memory store (docs/notes-i13-cache.md "The store"): one per
 * process, shared by every worker thread. Knows nothing of HTTP beyond keeping what
 * core/cachepol decided with (mg_cp_meta_t) beside each object; the proxy computes
 * keys, decides and answers.
 *
 *   store -> shards[nshards]      the primary key's hash picks one
 *   shard: mutex, hash chains, LRU list (head = most recent), bytes used <= cap,
 *          admission filter (count-min sketch of 4-bit counters + doorkeeper bits)
 *   object: one block (key, vary key, stored head) + the body in chunks of up to
 *           MG_CACHE_CHUNK bytes; immutable once committed; refcounted
 *
 * Ownership: the index holds one reference to each linked object, every reader one
 * more (mg_cache_lookup gives a reference, mg_cobj_unref drops it). An object that
 * is evicted or replaced leaves the index at once and is freed when its last reader
 * lets go, so a reader streaming a body never sees it freed under it. A writer's
 * object is in no index until mg_cache_commit: nobody reads a partial object.
 * malloc and free never run under a shard lock (as core/shdict.c).
 *
 * With a disk store (mg_cache_open_disk, core/cachedisk.h) memory stays in front:
 * every committed object is also written to a file, off the caller's thread; a
 * memory miss looks on disk, and a disk hit is read (on the caller's thread) into
 * a new object that is promoted into memory through the same admission. Without
 * one, a lookup costs what it did: a NULL check more. */
#ifndef MG_CACHE_H
#define MG_CACHE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cobj.h"


/* A store of cap bytes (everything counted: keys, heads, bodies, overhead) for
 * objects of at most max_object body bytes. NULL when out of memory or cap is too
 * small for one object. Free with mg_cache_free once no thread uses it (objects
 * readers still hold stay valid until they unref them). */
mg_cache_t *mg_cache_new(uint64_t cap, uint64_t max_object);
void mg_cache_free(mg_cache_t *c);
/* Gives c a disk store of cap bytes in the folder path (made when missing), before
 * any other thread uses c: its index is rebuilt in the background from the files
 * already there. 0, or MG_ECONFIG with the cause in err (the folder cannot be made
 * or written), MG_ENOMEM. */
int mg_cache_open_disk(mg_cache_t *c, const char *path, uint64_t cap, char *err, size_t errlen);
/* Waits until the disk store's start walk is over and every queued write is done
 * (tests; returns at once without a disk store). */
void mg_cache_sync(mg_cache_t *c);
uint64_t mg_cache_max_object(const mg_cache_t *c);


/* Looks key up (and counts it for admission): a referenced object (the caller
 * unrefs it), or NULL. match NULL: the first variant. *variants (may be NULL) gets
 * how many variants the key has, so a NULL with variants > 0 is a vary miss. */
mg_cobj_t *mg_cache_lookup(mg_cache_t *c, mg_str_t key, mg_cache_match_cb match, void *ctx,
                           int *variants);
void mg_cobj_ref(mg_cobj_t *o);
void mg_cobj_unref(mg_cobj_t *o);

/* A writer for key: body pieces with mg_cache_write, then commit or abort (one of
 * the two, always; both free the writer). NULL when out of memory. */
mg_cwriter_t *mg_cache_begin(mg_cache_t *c, mg_str_t key);
/* 0, MG_ELIMIT once the body passes max_object (the writer keeps nothing more and
 * commit will refuse), MG_ENOMEM. */
int mg_cache_write(mg_cwriter_t *w, const char *p, size_t n);
/* Links the object: it replaces the variant of the same key and vary key, and
 * (the origin changed its Vary) every variant when it has no vary key, or the
 * variant without one when it has one; a new variant of a key that has
 * MG_CACHE_VARIANTS_MAX replaces the least recently used of them. The
 * admission filter may refuse it when room has to be made (the victims are more
 * often asked for than this key). 0 when stored, MG_CACHE_NOT_ADMITTED, MG_ELIMIT
 * (too big), MG_ENOMEM. vary and head are copied. */
#define MG_CACHE_NOT_ADMITTED 1
int mg_cache_commit(mg_cwriter_t *w, mg_str_t vary, mg_str_t head, const mg_cp_meta_t *meta);
void mg_cache_abort(mg_cwriter_t *w);

/* Removes every variant of key, from memory and disk (and cancels its queued disk
 * writes): how many (the larger of the two tiers' counts). A lookup on another
 * thread reading one of its files meanwhile does not promote what it read. */
int mg_cache_remove(mg_cache_t *c, mg_str_t key);
/* Removes every object whose primary key starts with prefix (every variant; an
 * empty prefix empties the store), from memory and disk: how many (the larger of
 * the two tiers' counts). Walks each shard's whole list under its lock, one shard
 * at a time, then the disk index: O(objects), for purges, not the request path.
 * Objects being read stay alive for their readers (as with mg_cache_remove). */
int mg_cache_remove_prefix(mg_cache_t *c, mg_str_t prefix);
void mg_cache_stats(mg_cache_t *c, mg_cache_stats_t *s);

/* The process-wide store the proxy uses. Made by the first config that has a
 * cache (the main thread, before workers use it) and kept for the life of the
 * process: a reload keeps its objects, and workers never see it freed. A reload
 * that asks for another cap, max_object, disk path or disk size keeps the store
 * as it is and returns 1 (the caller logs that a restart applies it). path NULL:
 * memory only. 0, or MG_ENOMEM / MG_ECONFIG with the cause in err. */
int mg_cache_configure(uint64_t cap, uint64_t max_object, const char *path, uint64_t disk_cap, char *err,
                       size_t errlen);
mg_cache_t *mg_cache_global(void); /* NULL: no config asked for a cache */
void mg_cache_shutdown(void);      /* at exit, after the workers stopped */

#endif
