/* The cache's disk store (cachedisk.h has the layout, the threads and the lock).
 *
 * Ordering: one writer thread takes the queue in order, so two writes of one
 * name land in the order they were committed. A remove marks the queued and
 * the current writes of its keys cancelled; the writer looks under the lock,
 * where it renames the file into place, and drops what was cancelled instead,
 * so a purge is never undone by a write that was already under way.
 *
 * The walk at start inserts each file it reads at the LRU tail (older than
 * anything the process wrote or read since), unless the index has the name
 * already (the writer's newer entry wins) or the file was unlinked or replaced
 * meanwhile (its descriptor's link count is 0). A file that does not hold
 * together (magic, version, sizes against the file's length, its name against
 * its key) is deleted with a log line.
 *
 * Write errors (a full disk, a folder that went away) cost the object only:
 * the temp file is unlinked, the client's response was sent already. They are
 * logged at most once a minute with the cause and how many were not logged. */
#include "cachedisk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/siphash.h>

#include "log.h"

#define MAGIC "MGCACHE\n"
#define VERSION 1
/* a file costs its length in whole blocks (what the file system charges) */
#define BLOCK 4096
/* writes waiting beyond this many body bytes are dropped: the loop never waits */
#define QUEUE_MAX_MIB 64
#define QUEUE_MAX ((uint64_t)QUEUE_MAX_MIB << 20)
#define MG_STRINGIFY_(x) #x
#define MG_STRINGIFY(x) MG_STRINGIFY_(x)
/* the variants of one key a lookup looks at, and that the index keeps */
#define VARIANTS_MAX MG_CACHE_VARIANTS_MAX
#define ERR_LOG_SECONDS 60

typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t meta_size; /* sizeof(mg_cp_meta_t): another build's layout is refused */
  uint64_t klen, vlen, hlen, body_len;
  mg_cp_meta_t meta;
} fhdr_t;

typedef struct dent_s dent_t;
struct dent_s {
  dent_t *hnext, *prev, *next; /* chain, LRU (head = most recent) */
  uint64_t hash;               /* of the key */
  uint64_t cost;               /* the file's length in whole blocks */
  uint8_t name[32];            /* sha256(key, 0, vary): the file's name */
  uint64_t used;               /* the index's tick at its last use; 0: found at start */
  int has_vary;
  size_t klen;
  char key[];
};

typedef struct job_s job_t;
struct job_s {
  job_t *next;
  mg_cobj_t *o;
  int cancelled;
};

struct mg_cdisk_s {
  void (*unref)(mg_cobj_t *o); /* cache.c's: this file only takes the object types from it */
  char *path;
  uint64_t cap;
  uint64_t sip[2];
  uint64_t run; /* names this process's temp files: the walk removes the others */
  pthread_mutex_t lock;
  pthread_cond_t cond; /* the queue got a job, a job ended, the walk ended */
  dent_t **buckets;
  size_t mask;
  dent_t *head, *tail;
  uint64_t used, objects;
  uint64_t tick; /* counts uses: orders a key's variants (dent_t.used) */
  job_t *qhead, *qtail, *current;
  uint64_t qbytes, seq;
  int stop, walking;
  pthread_t writer, walker;
  uint64_t hits, writes, write_errors, evictions, corrupt; /* write_errors: dropped writes too */
  time_t err_at;       /* the last write error logged */
  uint64_t err_hushed; /* errors since, not logged */
};

static uint64_t hash_key(const mg_cdisk_t *d, const char *p, size_t n) {
  return SIPHASH_24(d->sip, (const uint8_t *)p, n);
}

static void name_of(mg_str_t key, mg_str_t vary, uint8_t out[32]) {
  SHA256_CTX h;
  SHA256_Init(&h);
  SHA256_Update(&h, key.p, key.len);
  SHA256_Update(&h, "", 1);
  if (vary.len) SHA256_Update(&h, vary.p, vary.len);
  SHA256_Final(out, &h);
}

static void hex(const uint8_t *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

/* path/xx/<hex>; out has room for PATH_MAX */
static void file_path(const mg_cdisk_t *d, const uint8_t name[32], char *out, size_t cap) {
  char h[65];
  hex(name, 32, h);
  snprintf(out, cap, "%s/%.2s/%s", d->path, h, h);
}

static uint64_t blocks(uint64_t len) { return (len + BLOCK - 1) / BLOCK * BLOCK; }

/* ---- the index (under d->lock) ---------------------------------------------------- */

static void lru_unlink(mg_cdisk_t *d, dent_t *e) {
  if (e->prev) e->prev->next = e->next; else d->head = e->next;
  if (e->next) e->next->prev = e->prev; else d->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(mg_cdisk_t *d, dent_t *e) {
  e->used = ++d->tick;
  e->prev = NULL;
  e->next = d->head;
  if (d->head) d->head->prev = e; else d->tail = e;
  d->head = e;
}

static void lru_append(mg_cdisk_t *d, dent_t *e) {
  e->next = NULL;
  e->prev = d->tail;
  if (d->tail) d->tail->next = e; else d->head = e;
  d->tail = e;
}

static int key_is(const dent_t *e, uint64_t h, const char *k, size_t n) {
  return e->hash == h && e->klen == n && memcmp(e->key, k, n) == 0;
}

static dent_t *find_name(mg_cdisk_t *d, uint64_t h, const uint8_t name[32]) {
  for (dent_t *e = d->buckets[h & d->mask]; e; e = e->hnext)
    if (e->hash == h && memcmp(e->name, name, 32) == 0) return e;
  return NULL;
}

static void link_ent(mg_cdisk_t *d, dent_t *e, int at_tail) {
  dent_t **b = &d->buckets[e->hash & d->mask];
  e->hnext = *b;
  *b = e;
  if (at_tail) lru_append(d, e); else lru_push(d, e);
  d->used += e->cost;
  d->objects++;
}

static void unlink_ent(mg_cdisk_t *d, dent_t *e) {
  dent_t **pp = &d->buckets[e->hash & d->mask];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  e->hnext = NULL;
  lru_unlink(d, e);
  d->used -= e->cost;
  d->objects--;
}

/* Out of the index and off the disk. */
static void drop_ent(mg_cdisk_t *d, dent_t *e) {
  char p[4096];
  unlink_ent(d, e);
  file_path(d, e->name, p, sizeof(p));
  unlink(p);
  free(e);
}

/* Evicts from the tail until the cap holds (keep: never evicted). */
static void evict_locked(mg_cdisk_t *d, const dent_t *keep) {
  while (d->used > d->cap) {
    dent_t *v = d->tail;
    if (v == keep) v = v->prev;
    if (!v) break;
    drop_ent(d, v);
    d->evictions++;
  }
}

/* Whether the write-error log line is due now (under the lock); *hushed gets how
 * many were not logged since the last one. */
static int err_due(mg_cdisk_t *d, uint64_t *hushed) {
  time_t now = time(NULL);
  d->write_errors++;
  if (d->err_at && now - d->err_at < ERR_LOG_SECONDS) {
    d->err_hushed++;
    return 0;
  }
  d->err_at = now;
  *hushed = d->err_hushed;
  d->err_hushed = 0;
  return 1;
}

static void write_failed(mg_cdisk_t *d, const mg_cobj_t *o, const char *what, const char *file, int err) {
  uint64_t hushed = 0;
  pthread_mutex_lock(&d->lock);
  int due = err_due(d, &hushed);
  pthread_mutex_unlock(&d->lock);
  if (!due) return;
  char more[96] = "";
  if (hushed) snprintf(more, sizeof(more), " (and %llu more disk write errors not logged)", (unsigned long long)hushed);
  MG_ERR(-1, "cache: cannot store %.*s on disk: %s %s: %s%s", (int)(o->key.len > 200 ? 200 : o->key.len), o->key.p,
         what, file, strerror(err), more);
}

/* ---- writing ------------------------------------------------------------------------ */

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t k = write(fd, c, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    c += k;
    n -= (size_t)k;
  }
  return 0;
}

static int write_file(int fd, const mg_cobj_t *o) {
  fhdr_t h;
  memset(&h, 0, sizeof(h));
  memcpy(h.magic, MAGIC, 8);
  h.version = VERSION;
  h.meta_size = sizeof(mg_cp_meta_t);
  h.klen = o->key.len;
  h.vlen = o->vary.len;
  h.hlen = o->head.len;
  h.body_len = o->body_len;
  h.meta = o->meta;
  int rc = write_all(fd, &h, sizeof(h));
  /* key, vary and head are adjacent in the object's block (cache.c) */
  if (rc == 0) rc = write_all(fd, o->key.p, o->key.len);
  if (rc == 0 && o->vary.len) rc = write_all(fd, o->vary.p, o->vary.len);
  if (rc == 0 && o->head.len) rc = write_all(fd, o->head.p, o->head.len);
  for (const mg_cchunk_t *ch = o->body; ch && rc == 0; ch = ch->next) rc = write_all(fd, ch->data, ch->len);
  return rc;
}

static void write_one(mg_cdisk_t *d, job_t *job) {
  const mg_cobj_t *o = job->o;
  char tmp[4096], dst[4096];
  uint8_t name[32];
  name_of(o->key, o->vary, name);
  file_path(d, name, dst, sizeof(dst));
  snprintf(tmp, sizeof(tmp), "%s/tmp/%016llx-%llu", d->path, (unsigned long long)d->run,
           (unsigned long long)++d->seq);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    write_failed(d, o, "open", tmp, errno);
    return;
  }
  int rc = write_file(fd, o);
  if (close(fd) != 0 && rc == 0) rc = -errno;
  if (rc < 0) {
    unlink(tmp);
    write_failed(d, o, "write", tmp, -rc);
    return;
  }
  uint64_t h = hash_key(d, o->key.p, o->key.len);
  dent_t *e = malloc(sizeof(*e) + o->key.len);
  /* renamed into place under the lock: an eviction or a corrupt file's removal of
   * the same name (an older version's entry) unlinks under it too, so it comes
   * wholly before the rename or after the new entry replaced the old one; and a
   * write removed meanwhile is never put in place */
  pthread_mutex_lock(&d->lock);
  int err = 0;
  if (!job->cancelled && e && rename(tmp, dst) != 0) {
    err = errno;
    if (err == ENOENT) { /* its xx folder is not there yet */
      char sub[4096];
      snprintf(sub, sizeof(sub), "%.*s", (int)(strrchr(dst, '/') - dst), dst);
      err = mkdir(sub, 0755) == 0 || errno == EEXIST ? 0 : errno;
      if (err == 0 && rename(tmp, dst) != 0) err = errno;
    }
  }
  if (job->cancelled || !e || err) { /* removed while being written, no memory to index it, or no rename */
    pthread_mutex_unlock(&d->lock);
    unlink(tmp);
    free(e);
    if (err) write_failed(d, o, "rename to", dst, err);
    return;
  }
  memset(e, 0, sizeof(*e));
  e->hash = h;
  memcpy(e->name, name, 32);
  e->has_vary = o->vary.len > 0;
  e->klen = o->key.len;
  memcpy(e->key, o->key.p, o->key.len);
  e->cost = blocks(sizeof(fhdr_t) + o->key.len + o->vary.len + o->head.len + o->body_len);
  /* as in memory: the same name is replaced (the rename did it on disk), a
   * response without Vary replaces every variant, one with Vary the one without,
   * and a key keeps at most VARIANTS_MAX variants (the least recent goes) */
  dent_t *lru = NULL;
  int nvar = 0;
  for (dent_t *x = d->buckets[h & d->mask], *nx; x; x = nx) {
    nx = x->hnext;
    if (!key_is(x, h, o->key.p, o->key.len)) continue;
    if (memcmp(x->name, name, 32) == 0) {
      unlink_ent(d, x);
      free(x);
    } else if (x->has_vary != e->has_vary) {
      drop_ent(d, x);
    } else {
      nvar++;
      if (!lru || x->used < lru->used) lru = x;
    }
  }
  if (nvar >= VARIANTS_MAX) drop_ent(d, lru);
  link_ent(d, e, 0);
  d->writes++;
  evict_locked(d, e);
  pthread_mutex_unlock(&d->lock);
}

static void *writer_main(void *arg) {
  mg_cdisk_t *d = arg;
  pthread_mutex_lock(&d->lock);
  for (;;) {
    while (!d->qhead && !d->stop) pthread_cond_wait(&d->cond, &d->lock);
    job_t *job = d->qhead;
    if (!job) break; /* stopping, and everything queued is written */
    d->qhead = job->next;
    if (!d->qhead) d->qtail = NULL;
    d->current = job;
    int skip = job->cancelled;
    pthread_mutex_unlock(&d->lock);
    if (!skip) write_one(d, job);
    pthread_mutex_lock(&d->lock);
    d->current = NULL;
    d->qbytes -= job->o->body_len;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    d->unref(job->o);
    free(job);
    pthread_mutex_lock(&d->lock);
  }
  pthread_mutex_unlock(&d->lock);
  return NULL;
}

void mg_cdisk_store(mg_cdisk_t *d, mg_cobj_t *o) {
  job_t *job = malloc(sizeof(*job));
  uint64_t hushed = 0;
  int due = 0;
  pthread_mutex_lock(&d->lock);
  if (!job || d->qbytes + o->body_len > QUEUE_MAX) {
    due = err_due(d, &hushed);
  } else {
    job->next = NULL;
    job->o = o;
    job->cancelled = 0;
    if (d->qtail) d->qtail->next = job; else d->qhead = job;
    d->qtail = job;
    d->qbytes += o->body_len;
    pthread_cond_broadcast(&d->cond);
    o = NULL;
    job = NULL;
  }
  pthread_mutex_unlock(&d->lock);
  if (o) {
    if (due)
      MG_ERR(-1, "cache: cannot store %.*s on disk: %s (and %llu more disk write errors not logged)",
             (int)(o->key.len > 200 ? 200 : o->key.len), o->key.p,
             job ? "the disk is " MG_STRINGIFY(QUEUE_MAX_MIB) " MiB of writes behind" : "out of memory",
             (unsigned long long)hushed);
    d->unref(o);
  }
  free(job);
}

/* ---- reading ------------------------------------------------------------------------ */

static int read_at(int fd, void *p, size_t n, uint64_t off) {
  char *c = p;
  while (n > 0) {
    ssize_t k = pread(fd, c, n, (off_t)off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return -1;
    c += k;
    n -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

/* The header of an open file, checked against the file's length. 0, or -1 when
 * it does not hold together. */
static int read_header(int fd, fhdr_t *h) {
  struct stat st;
  if (fstat(fd, &st) != 0 || read_at(fd, h, sizeof(*h), 0) != 0) return -1;
  if (memcmp(h->magic, MAGIC, 8) != 0 || h->version != VERSION || h->meta_size != sizeof(mg_cp_meta_t)) return -1;
  if (h->klen == 0 || h->klen > (1u << 20) || h->vlen > (1u << 20) || h->hlen > (1u << 24) ||
      h->body_len > ((uint64_t)1 << 40))
    return -1;
  return (uint64_t)st.st_size == sizeof(*h) + h->klen + h->vlen + h->hlen + h->body_len ? 0 : -1;
}

/* An object (one reference, no body) from the file's header block; NULL with
 * *nomem set when out of memory (the file is not to blame then). */
static mg_cobj_t *load_head(int fd, const fhdr_t *h, int *nomem) {
  size_t n = (size_t)(h->klen + h->vlen + h->hlen);
  mg_cobj_t *o = malloc(sizeof(*o) + n);
  if (!o) {
    *nomem = 1;
    return NULL;
  }
  memset(o, 0, sizeof(*o));
  char *b = (char *)(o + 1);
  if (read_at(fd, b, n, sizeof(*h)) != 0) {
    free(o);
    return NULL;
  }
  atomic_init(&o->refs, 1);
  o->meta = h->meta;
  o->key = (mg_str_t){ b, (size_t)h->klen };
  o->vary = (mg_str_t){ b + h->klen, (size_t)h->vlen };
  o->head = (mg_str_t){ b + h->klen + h->vlen, (size_t)h->hlen };
  o->cost = sizeof(*o) + n + MG_CACHE_OVERHEAD;
  return o;
}

/* The body into o's chunks (the last one cut to its length). 0 or -1 (*nomem
 * set when out of memory). */
static int load_body(int fd, const fhdr_t *h, mg_cobj_t *o, int *nomem) {
  uint64_t off = sizeof(*h) + h->klen + h->vlen + h->hlen, left = h->body_len;
  mg_cchunk_t **tail = &o->body;
  while (left > 0) {
    size_t n = left < MG_CACHE_CHUNK ? (size_t)left : MG_CACHE_CHUNK;
    mg_cchunk_t *ch = malloc(sizeof(*ch) + n);
    if (!ch) {
      *nomem = 1;
      return -1;
    }
    ch->next = NULL;
    ch->len = n;
    *tail = ch;
    tail = &ch->next;
    o->cost += sizeof(*ch) + n;
    if (read_at(fd, ch->data, n, off) != 0) return -1;
    off += n;
    left -= n;
    o->body_len += n;
  }
  return 0;
}

/* A file that did not hold together: out of the index and the disk, logged. */
static void corrupt(mg_cdisk_t *d, uint64_t h, const uint8_t name[32], const char *file) {
  pthread_mutex_lock(&d->lock);
  d->corrupt++;
  dent_t *e = find_name(d, h, name);
  if (e) drop_ent(d, e);
  else unlink(file);
  pthread_mutex_unlock(&d->lock);
  MG_WARN(-1, "cache: %s is truncated or corrupt: deleted", file);
}

mg_cobj_t *mg_cdisk_lookup(mg_cdisk_t *d, mg_str_t key, mg_cache_match_cb match, void *ctx, int *variants) {
  uint64_t h = hash_key(d, key.p, key.len);
  uint8_t names[VARIANTS_MAX][32];
  int n = 0;
  pthread_mutex_lock(&d->lock);
  for (dent_t *e = d->buckets[h & d->mask]; e && n < VARIANTS_MAX; e = e->hnext) {
    if (!key_is(e, h, key.p, key.len)) continue;
    memcpy(names[n++], e->name, 32);
  }
  pthread_mutex_unlock(&d->lock);
  if (variants) *variants = n;
  for (int i = 0; i < n; i++) {
    char file[4096];
    file_path(d, names[i], file, sizeof(file));
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { /* gone (removed, or by hand): forget it */
      pthread_mutex_lock(&d->lock);
      dent_t *e = find_name(d, h, names[i]);
      if (e) {
        unlink_ent(d, e);
        free(e);
      }
      pthread_mutex_unlock(&d->lock);
      continue;
    }
    fhdr_t fh;
    int nomem = 0;
    mg_cobj_t *o = read_header(fd, &fh) == 0 ? load_head(fd, &fh, &nomem) : NULL;
    if (!o || !mg_str_eq(o->key, key)) {
      close(fd);
      d->unref(o);
      if (nomem) return NULL; /* a miss; the file stays */
      corrupt(d, h, names[i], file);
      continue;
    }
    if (match && !match(o, ctx)) {
      close(fd);
      d->unref(o);
      continue;
    }
    int rc = load_body(fd, &fh, o, &nomem);
    close(fd);
    if (rc != 0) {
      d->unref(o);
      if (nomem) return NULL;
      corrupt(d, h, names[i], file);
      continue;
    }
    pthread_mutex_lock(&d->lock);
    d->hits++;
    dent_t *e = find_name(d, h, names[i]); /* the variant read is the one used */
    if (e) {
      lru_unlink(d, e);
      lru_push(d, e);
    }
    pthread_mutex_unlock(&d->lock);
    return o;
  }
  return NULL;
}

int mg_cdisk_remove(mg_cdisk_t *d, mg_str_t key, int prefix) {
  int n = 0;
  uint64_t h = prefix ? 0 : hash_key(d, key.p, key.len);
#define MATCHES(k, kl) (prefix ? (kl) >= key.len && memcmp((k), key.p, key.len) == 0 \
                               : (kl) == key.len && memcmp((k), key.p, key.len) == 0)
  pthread_mutex_lock(&d->lock);
  for (job_t *j = d->qhead; j; j = j->next)
    if (MATCHES(j->o->key.p, j->o->key.len)) j->cancelled = 1;
  if (d->current && MATCHES(d->current->o->key.p, d->current->o->key.len)) d->current->cancelled = 1;
  if (prefix) {
    for (dent_t *e = d->head, *nx; e; e = nx) {
      nx = e->next;
      if (MATCHES(e->key, e->klen)) {
        drop_ent(d, e);
        n++;
      }
    }
  } else {
    for (dent_t *e = d->buckets[h & d->mask], *nx; e; e = nx) {
      nx = e->hnext;
      if (key_is(e, h, key.p, key.len)) {
        drop_ent(d, e);
        n++;
      }
    }
  }
  pthread_mutex_unlock(&d->lock);
#undef MATCHES
  return n;
}

/* ---- the walk at start -------------------------------------------------------------- */

static int stopping(mg_cdisk_t *d) {
  pthread_mutex_lock(&d->lock);
  int s = d->stop;
  pthread_mutex_unlock(&d->lock);
  return s;
}

/* Removes the temp files of earlier runs (a crash or a kill mid-write). */
static void clean_tmp(mg_cdisk_t *d) {
  char dir[4096], own[24], file[4400];
  snprintf(dir, sizeof(dir), "%s/tmp", d->path);
  snprintf(own, sizeof(own), "%016llx-", (unsigned long long)d->run);
  DIR *dp = opendir(dir);
  if (!dp) return;
  struct dirent *de;
  while ((de = readdir(dp))) {
    if (de->d_name[0] == '.' || strncmp(de->d_name, own, strlen(own)) == 0) continue;
    snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
    if (unlink(file) == 0) MG_INFO(-1, "cache: removed the leftover temp file %s", file);
  }
  closedir(dp);
}

static int is_hex_name(const char *s) {
  size_t i = 0;
  for (; s[i]; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
  return i == 64;
}

/* One file of the walk: indexed at the tail, or deleted when it is corrupt. */
static void walk_file(mg_cdisk_t *d, const char *file, const char *hexname) {
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  fhdr_t fh;
  uint8_t name[32];
  char *kv = NULL;
  dent_t *e = NULL;
  int bad = read_header(fd, &fh) != 0;
  if (!bad) {
    kv = malloc((size_t)(fh.klen + fh.vlen));
    e = malloc(sizeof(*e) + (size_t)fh.klen);
    bad = !kv || !e || read_at(fd, kv, (size_t)(fh.klen + fh.vlen), sizeof(fh)) != 0;
  }
  if (!bad) {
    char hx[65];
    name_of((mg_str_t){ kv, (size_t)fh.klen }, (mg_str_t){ kv + fh.klen, (size_t)fh.vlen }, name);
    hex(name, 32, hx);
    bad = strcmp(hx, hexname) != 0; /* not the file its key names */
  }
  if (bad) {
    close(fd);
    free(kv);
    free(e);
    pthread_mutex_lock(&d->lock);
    d->corrupt++;
    unlink(file);
    pthread_mutex_unlock(&d->lock);
    MG_WARN(-1, "cache: %s is truncated or corrupt: deleted", file);
    return;
  }
  memset(e, 0, sizeof(*e));
  e->hash = hash_key(d, kv, (size_t)fh.klen);
  memcpy(e->name, name, 32);
  e->has_vary = fh.vlen > 0;
  e->klen = (size_t)fh.klen;
  memcpy(e->key, kv, (size_t)fh.klen);
  e->cost = blocks(sizeof(fh) + fh.klen + fh.vlen + fh.hlen + fh.body_len);
  free(kv);
  struct stat st;
  pthread_mutex_lock(&d->lock);
  /* unlinked or replaced since it was opened, or already indexed by a write */
  if (fstat(fd, &st) != 0 || st.st_nlink == 0 || find_name(d, e->hash, e->name)) {
    free(e);
  } else {
    link_ent(d, e, 1);
    evict_locked(d, NULL); /* a smaller size than last run: what is found last goes */
  }
  pthread_mutex_unlock(&d->lock);
  close(fd);
}

static void *walker_main(void *arg) {
  mg_cdisk_t *d = arg;
  clean_tmp(d);
  char dir[4096], file[4400];
  for (int i = 0; i < 256 && !stopping(d); i++) {
    snprintf(dir, sizeof(dir), "%s/%02x", d->path, i);
    DIR *dp = opendir(dir);
    if (!dp) continue;
    struct dirent *de;
    while ((de = readdir(dp)) && !stopping(d)) {
      if (!is_hex_name(de->d_name) || strncmp(de->d_name, dir + strlen(dir) - 2, 2) != 0) continue;
      snprintf(file, sizeof(file), "%s/%s", dir, de->d_name);
      walk_file(d, file, de->d_name);
    }
    closedir(dp);
  }
  pthread_mutex_lock(&d->lock);
  d->walking = 0;
  pthread_cond_broadcast(&d->cond);
  uint64_t objects = d->objects, used = d->used;
  int stopped = d->stop;
  pthread_mutex_unlock(&d->lock);
  if (!stopped)
    MG_INFO(-1, "cache: disk index of %s rebuilt: %llu objects, %llu bytes", d->path, (unsigned long long)objects,
            (unsigned long long)used);
  return NULL;
}

/* ---- the store ---------------------------------------------------------------------- */

/* mkdir -p; 0 or an errno. */
static int make_dirs(const char *path) {
  char p[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof(p)) return ENAMETOOLONG;
  memcpy(p, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0') continue;
    char c = p[i];
    p[i] = '\0';
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return errno;
    p[i] = c;
  }
  struct stat st;
  if (stat(path, &st) != 0) return errno;
  return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

mg_cdisk_t *mg_cdisk_open(const char *path, uint64_t cap, void (*unref)(mg_cobj_t *), char *err, size_t errlen) {
  char tmp[4096];
  size_t plen = strlen(path);
  while (plen > 1 && path[plen - 1] == '/') plen--; /* "cache/" and "cache" are one folder */
  if (plen == 0 || plen > 3000) {
    snprintf(err, errlen, "cache path %s: too long", path);
    return NULL;
  }
  mg_cdisk_t *d = calloc(1, sizeof(*d));
  if (!d || !(d->path = strndup(path, plen))) {
    free(d);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  d->unref = unref;
  snprintf(tmp, sizeof(tmp), "%s/tmp", d->path);
  int e = make_dirs(tmp);
  if (e == 0 && access(tmp, W_OK | X_OK) != 0) e = errno;
  if (e) {
    snprintf(err, errlen, "cache path %s: cannot make or write %s: %s", d->path, tmp, strerror(e));
    goto fail_d;
  }
  d->cap = cap;
  size_t nb = 1024;
  while (nb < cap / 16384 && nb < ((size_t)1 << 22)) nb <<= 1;
  d->mask = nb - 1;
  d->buckets = calloc(nb, sizeof(*d->buckets));
  if (!d->buckets || !RAND_bytes((uint8_t *)d->sip, sizeof(d->sip)) ||
      !RAND_bytes((uint8_t *)&d->run, sizeof(d->run))) {
    snprintf(err, errlen, "out of memory");
    goto fail_buckets;
  }
  if (pthread_mutex_init(&d->lock, NULL) != 0) goto fail_buckets;
  if (pthread_cond_init(&d->cond, NULL) != 0) goto fail_lock;
  if (pthread_create(&d->writer, NULL, writer_main, d) != 0) {
    snprintf(err, errlen, "cannot start the cache's disk writer thread");
    goto fail_cond;
  }
  d->walking = 1;
  if (pthread_create(&d->walker, NULL, walker_main, d) != 0) {
    snprintf(err, errlen, "cannot start the cache's disk index thread");
    pthread_mutex_lock(&d->lock);
    d->stop = 1;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->writer, NULL);
    goto fail_cond;
  }
  return d;
fail_cond:
  pthread_cond_destroy(&d->cond);
fail_lock:
  pthread_mutex_destroy(&d->lock);
fail_buckets:
  free(d->buckets);
fail_d:
  free(d->path);
  free(d);
  return NULL;
}

void mg_cdisk_close(mg_cdisk_t *d) {
  if (!d) return;
  pthread_mutex_lock(&d->lock);
  d->stop = 1;
  pthread_cond_broadcast(&d->cond);
  pthread_mutex_unlock(&d->lock);
  pthread_join(d->walker, NULL);
  pthread_join(d->writer, NULL); /* after writing what is queued */
  for (dent_t *e = d->head, *n; e; e = n) {
    n = e->next;
    free(e);
  }
  free(d->buckets);
  pthread_cond_destroy(&d->cond);
  pthread_mutex_destroy(&d->lock);
  free(d->path);
  free(d);
}

void mg_cdisk_sync(mg_cdisk_t *d) {
  pthread_mutex_lock(&d->lock);
  while (d->walking || d->qhead || d->current) pthread_cond_wait(&d->cond, &d->lock);
  pthread_mutex_unlock(&d->lock);
}

void mg_cdisk_stats(mg_cdisk_t *d, mg_cache_stats_t *s) {
  pthread_mutex_lock(&d->lock);
  s->disk_objects = d->objects;
  s->disk_bytes = d->used;
  s->disk_cap = d->cap;
  s->disk_hits = d->hits;
  s->disk_writes = d->writes;
  s->disk_write_errors = d->write_errors;
  s->disk_evictions = d->evictions;
  s->disk_corrupt = d->corrupt;
  pthread_mutex_unlock(&d->lock);
}

const char *mg_cdisk_path(const mg_cdisk_t *d) { return d->path; }
uint64_t mg_cdisk_cap(const mg_cdisk_t *d) { return d->cap; }
