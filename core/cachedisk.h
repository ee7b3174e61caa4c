/* The response cache's disk store (docs/cache.md "The disk store"): the second
 * tier behind the memory store, used only by core/cache.c. One per process.
 *
 *   path/tmp/<run>-<n>       a file being written (renamed into place when whole)
 *   path/xx/<64 hex>         one object: sha256(key, 0, vary key) names it, xx is
 *                            its first byte
 *
 * A file is a fixed header (magic, version, the sizes, mg_cp_meta_t), the key,
 * the vary key, the stored head, then the body. The index (key -> files, an LRU
 * list, the bytes used) lives in memory only; it is rebuilt at start by a
 * background thread that reads every file's header, so the first requests are
 * misses instead of waiting.
 *
 * Threads: one writer thread writes the objects mg_cdisk_store queued (each a
 * reference to a committed, immutable object), so a worker's loop never waits
 * for a write; a lookup reads its file on the caller's thread (as nginx does),
 * which is only paid on a memory miss. One mutex guards the index, the queue and
 * the counters; it is never held while reading or writing a file, only around
 * unlink(2) of evicted or removed files and the rename(2) that puts a written
 * file in place (so a rename and an unlink of the same name cannot cross). */
#ifndef MG_CACHEDISK_H
#define MG_CACHEDISK_H

#include "cobj.h"

typedef struct mg_cdisk_s mg_cdisk_t;

/* Opens (mkdir -p) the folder, removes nothing yet, starts the writer and the
 * background walk (which first removes leftover temp files). unref drops an
 * object's reference (cache.c's mg_cobj_unref: this part uses cobj.h's types
 * and calls nothing of cache.c). NULL with a message in err when the folder
 * cannot be made or written to, or out of memory. */
mg_cdisk_t *mg_cdisk_open(const char *path, uint64_t cap, void (*unref)(mg_cobj_t *), char *err, size_t errlen);
/* Stops the walk, writes what is queued, joins the threads, frees everything. */
void mg_cdisk_close(mg_cdisk_t *d);

/* The variant of key that match accepts (called with a body-less object: key,
 * vary, head and meta are set), its body read, as a new object with one
 * reference that belongs to the caller and is in no index; or NULL. *variants:
 * how many files the index holds for key. A file found truncated or corrupt is
 * deleted (and logged). */
mg_cobj_t *mg_cdisk_lookup(mg_cdisk_t *d, mg_str_t key, mg_cache_match_cb match, void *ctx, int *variants);
/* Queues o to be written; takes over one reference the caller took for it.
 * Never waits: over the queue's byte bound the write is dropped (logged). */
void mg_cdisk_store(mg_cdisk_t *d, mg_cobj_t *o);
/* Removes every file of key (prefix: of every key starting with it), and
 * cancels their queued writes. How many files left the index. */
int mg_cdisk_remove(mg_cdisk_t *d, mg_str_t key, int prefix);
/* Waits until the start walk is over and no write is queued or under way. */
void mg_cdisk_sync(mg_cdisk_t *d);
/* Adds the disk counters to s. */
void mg_cdisk_stats(mg_cdisk_t *d, mg_cache_stats_t *s);
const char *mg_cdisk_path(const mg_cdisk_t *d);
uint64_t mg_cdisk_cap(const mg_cdisk_t *d);

#endif
