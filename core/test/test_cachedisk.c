/* core/cachedisk: the cache's disk store behind the memory store. Objects survive
 * a new store on the same folder (a restart), a truncated or corrupt file is
 * deleted and not served, temp files of an earlier run are removed, the size cap
 * evicts the least recently used files, remove and remove_prefix reach both
 * tiers, a write error costs the object only, variants come back, and a disk hit
 * is promoted into memory. Each test works in its own folder under /tmp. */
#include "cache.h"
#include "cache_util.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define S(lit) MG_STR(lit)
#define KIB 1024

static const mg_cp_meta_t meta0 = { .status = 200, .lifetime = 60, .last_modified = -1, .swr = -1, .sie = -1 };

static char *tmpdir(void) {
  static char buf[64];
  snprintf(buf, sizeof buf, "/tmp/mg-cachedisk-XXXXXX");
  return mkdtemp(buf) ? strdup(buf) : NULL;
}

static void rm_rf(const char *path) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0) fprintf(stderr, "  cannot remove %s\n", path);
}

/* A store of 1 MiB memory (objects up to 64 KiB) with a disk store of cap bytes
 * in dir, its start walk over. */
static mg_cache_t *open_store(const char *dir, uint64_t cap) {
  char err[256];
  mg_cache_t *c = mg_cache_new(1 << 20, 64 * KIB);
  if (!c) return NULL;
  if (mg_cache_open_disk(c, dir, cap, err, sizeof err) != 0) {
    fprintf(stderr, "  open_disk: %s\n", err);
    mg_cache_free(c);
    return NULL;
  }
  mg_cache_sync(c);
  return c;
}

/* Stores key (vary key, head) with a body of n bytes of fill. */
static int put(mg_cache_t *c, const char *key, const char *vary, const char *head, size_t n, char fill) {
  return cache_put(c, key, vary, head, n, fill, &meta0);
}


/* The object files under dir (not tmp/): how many; the first one's path in first. */
static int object_files(const char *dir, char *first, size_t cap) {
  int n = 0;
  DIR *top = opendir(dir);
  if (!top) return 0;
  struct dirent *de;
  while ((de = readdir(top))) {
    if (de->d_name[0] == '.' || strcmp(de->d_name, "tmp") == 0) continue;
    char sub[512];
    snprintf(sub, sizeof sub, "%.200s/%.80s", dir, de->d_name);
    DIR *d = opendir(sub);
    if (!d) continue;
    struct dirent *fe;
    while ((fe = readdir(d))) {
      if (fe->d_name[0] == '.') continue;
      if (n++ == 0 && first && (size_t)snprintf(first, cap, "%s/%.80s", sub, fe->d_name) >= cap) first[0] = 0;
    }
    closedir(d);
  }
  closedir(top);
  return n;
}

static int count_dir(const char *dir) {
  int n = 0;
  DIR *d = opendir(dir);
  if (!d) return -1;
  struct dirent *de;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static mg_cache_stats_t stats(mg_cache_t *c) {
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  return st;
}

static void an_object_survives_a_new_store_on_the_same_folder(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c != NULL);
  if (!c) return;
  CHECK(put(c, "GET http://a/x", "", "content-type: text/plain\r\n", 40000, 'x') == 0);
  CHECK(put(c, "GET http://a/empty", "", "x-a: 1\r\n", 0, 'e') == 0);
  mg_cache_sync(c);
  CHECK(stats(c).disk_writes == 2 && stats(c).disk_objects == 2);
  CHECK(object_files(dir, NULL, 0) == 2);
  mg_cache_free(c);

  c = open_store(dir, 10 << 20); /* the restart: memory is empty, the walk indexed both */
  CHECK(c != NULL);
  if (!c) return;
  CHECK(stats(c).disk_objects == 2 && stats(c).objects == 0);
  int nv = -1;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/x"), NULL, NULL, &nv);
  CHECK(o != NULL && nv == 1);
  if (o) {
    CHECK(body_is(o, 40000, 'x'));
    CHECK(mg_str_eq(o->key, S("GET http://a/x")));
    CHECK(mg_str_eq(o->head, S("content-type: text/plain\r\n")));
    CHECK(o->vary.len == 0);
    CHECK(o->meta.status == 200 && o->meta.lifetime == 60 && o->meta.last_modified == -1);
    mg_cobj_unref(o);
  }
  o = mg_cache_lookup(c, S("GET http://a/empty"), NULL, NULL, NULL);
  CHECK(o != NULL && o && o->body == NULL && o->body_len == 0 && mg_str_eq(o->head, S("x-a: 1\r\n")));
  mg_cobj_unref(o);
  CHECK(mg_cache_lookup(c, S("GET http://a/none"), NULL, NULL, &nv) == NULL && nv == 0);
  mg_cache_stats_t st = stats(c);
  CHECK(st.disk_hits == 2 && st.hits == 0);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void a_disk_hit_is_promoted_into_memory(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c && put(c, "GET http://a/p", "", "", 1000, 'p') == 0);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20);
  if (!c) return;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/p"), NULL, NULL, NULL);
  CHECK(o && body_is(o, 1000, 'p'));
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/p"), NULL, NULL, NULL);
  CHECK(o && body_is(o, 1000, 'p'));
  mg_cobj_unref(o);
  mg_cache_stats_t st = stats(c);
  CHECK(st.disk_hits == 1 && st.hits == 1 && st.objects == 1 && st.stores == 0);
  mg_cache_sync(c);
  CHECK(stats(c).disk_writes == 0); /* a promotion is not written again */
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

/* A purge that lands while a lookup reads the object's file (another worker's
 * PURGE, here run from the match callback, which is called between the disk read
 * of the head and the promotion) must not be undone by the promotion. */
static mg_cache_t *purging;
static int purge_in_match(const mg_cobj_t *o, void *ctx) {
  (void)ctx;
  CHECK(mg_cache_remove(purging, o->key) == 1);
  return 1;
}

static void a_purge_during_a_disk_read_is_not_undone_by_the_promotion(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c && put(c, "GET http://a/pp", "", "", 1000, 'q') == 0);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20); /* a restart: on disk, not in memory */
  if (!c) return;
  purging = c;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/pp"), purge_in_match, NULL, NULL);
  CHECK(o && body_is(o, 1000, 'q')); /* the racing request may still be answered */
  mg_cobj_unref(o);
  CHECK(mg_cache_lookup(c, S("GET http://a/pp"), NULL, NULL, NULL) == NULL);
  mg_cache_stats_t st = stats(c);
  CHECK(st.objects == 0 && st.disk_objects == 0);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void a_truncated_file_is_deleted_at_start_and_not_served(void) {
  char *dir = tmpdir();
  char file[512];
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c && put(c, "GET http://a/t", "", "", 20000, 't') == 0);
  mg_cache_free(c);
  CHECK(object_files(dir, file, sizeof file) == 1);
  CHECK(truncate(file, 5000) == 0);
  c = open_store(dir, 10 << 20);
  if (!c) return;
  CHECK(access(file, F_OK) != 0 && errno == ENOENT);
  CHECK(mg_cache_lookup(c, S("GET http://a/t"), NULL, NULL, NULL) == NULL);
  mg_cache_stats_t st = stats(c);
  CHECK(st.disk_corrupt == 1 && st.disk_objects == 0);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void a_file_damaged_while_indexed_is_deleted_on_lookup(void) {
  char *dir = tmpdir();
  char file[512];
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c && put(c, "GET http://a/d", "", "", 3000, 'd') == 0);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20);
  if (!c) return;
  CHECK(object_files(dir, file, sizeof file) == 1);
  FILE *f = fopen(file, "r+b");
  CHECK(f && fwrite("XXXXXXXX", 1, 8, f) == 8); /* the magic */
  if (f) fclose(f);
  CHECK(mg_cache_lookup(c, S("GET http://a/d"), NULL, NULL, NULL) == NULL);
  CHECK(access(file, F_OK) != 0);
  CHECK(stats(c).disk_corrupt == 1 && stats(c).disk_objects == 0);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void temp_files_of_an_earlier_run_are_removed_at_start(void) {
  char *dir = tmpdir();
  char tmp[512], p[600];
  snprintf(tmp, sizeof tmp, "%s/tmp", dir);
  CHECK(mkdir(tmp, 0755) == 0);
  snprintf(p, sizeof p, "%s/0123456789abcdef-7", tmp);
  FILE *f = fopen(p, "w");
  CHECK(f && fputs("half an object", f) >= 0);
  if (f) fclose(f);
  mg_cache_t *c = open_store(dir, 10 << 20);
  CHECK(c != NULL);
  CHECK(count_dir(tmp) == 0);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void the_size_cap_evicts_the_least_recently_used_files(void) {
  char *dir = tmpdir();
  /* each object is 40000 bytes + its header: 40960 bytes (10 blocks) on disk */
  mg_cache_t *c = open_store(dir, 3 * 40960);
  if (!c) return;
  CHECK(put(c, "GET http://a/1", "", "", 40000, '1') == 0);
  CHECK(put(c, "GET http://a/2", "", "", 40000, '2') == 0);
  CHECK(put(c, "GET http://a/3", "", "", 40000, '3') == 0);
  mg_cache_sync(c);
  mg_cache_free(c); /* a new store: lookups go to disk and touch its LRU */
  c = open_store(dir, 3 * 40960);
  if (!c) return;
  /* the walk's order is the folder's: reading 2 then 1 makes 3 the least recent */
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/2"), NULL, NULL, NULL);
  CHECK(o != NULL);
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/1"), NULL, NULL, NULL);
  CHECK(o != NULL);
  mg_cobj_unref(o);
  CHECK(put(c, "GET http://a/4", "", "", 40000, '4') == 0);
  mg_cache_sync(c);
  mg_cache_stats_t st = stats(c);
  CHECK(st.disk_objects == 3 && st.disk_evictions == 1 && st.disk_bytes <= st.disk_cap);
  CHECK(object_files(dir, NULL, 0) == 3);
  mg_cache_free(c);
  c = open_store(dir, 3 * 40960); /* memory empty again: what answers is the disk */
  if (!c) return;
  const char *keys[] = { "GET http://a/1", "GET http://a/2", "GET http://a/3", "GET http://a/4" };
  int want[] = { 1, 1, 0, 1 };
  for (int i = 0; i < 4; i++) {
    o = mg_cache_lookup(c, str(keys[i]), NULL, NULL, NULL);
    CHECK((o != NULL) == want[i]);
    mg_cobj_unref(o);
  }
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void remove_and_remove_prefix_reach_both_tiers(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  if (!c) return;
  CHECK(put(c, "GET http://a/k", "", "", 100, 'k') == 0);
  CHECK(put(c, "GET http://a/img/1", "", "", 100, '1') == 0);
  CHECK(put(c, "GET http://a/img/2", "", "", 100, '2') == 0);
  CHECK(put(c, "GET http://a/other", "", "", 100, 'o') == 0);
  mg_cache_sync(c);
  CHECK(object_files(dir, NULL, 0) == 4);
  CHECK(mg_cache_remove(c, S("GET http://a/k")) == 1);
  CHECK(mg_cache_remove_prefix(c, S("GET http://a/img/")) == 2);
  CHECK(object_files(dir, NULL, 0) == 1);
  CHECK(mg_cache_lookup(c, S("GET http://a/k"), NULL, NULL, NULL) == NULL);
  CHECK(mg_cache_lookup(c, S("GET http://a/img/1"), NULL, NULL, NULL) == NULL);
  mg_cache_stats_t st = stats(c);
  CHECK(st.objects == 1 && st.disk_objects == 1);
  /* a remove right after a commit cancels the queued write: nothing comes back */
  CHECK(put(c, "GET http://a/late", "", "", 100, 'l') == 0);
  CHECK(mg_cache_remove(c, S("GET http://a/late")) == 1);
  mg_cache_sync(c);
  CHECK(object_files(dir, NULL, 0) == 1);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20);
  if (!c) return;
  CHECK(mg_cache_lookup(c, S("GET http://a/late"), NULL, NULL, NULL) == NULL);
  CHECK(mg_cache_lookup(c, S("GET http://a/k"), NULL, NULL, NULL) == NULL);
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/other"), NULL, NULL, NULL);
  CHECK(o && body_is(o, 100, 'o'));
  mg_cobj_unref(o);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void a_write_error_costs_the_disk_copy_only(void) {
  char *dir = tmpdir();
  char tmp[512];
  mg_cache_t *c = open_store(dir, 10 << 20);
  if (!c) return;
  snprintf(tmp, sizeof tmp, "%s/tmp", dir);
  CHECK(rmdir(tmp) == 0);
  FILE *f = fopen(tmp, "w"); /* a file where the folder was: every open fails */
  if (f) fclose(f);
  CHECK(put(c, "GET http://a/w", "", "", 5000, 'w') == 0);
  mg_cache_sync(c);
  mg_cache_stats_t st = stats(c);
  CHECK(st.disk_write_errors == 1 && st.disk_writes == 0 && st.disk_objects == 0);
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/w"), NULL, NULL, NULL); /* memory still has it */
  CHECK(o && body_is(o, 5000, 'w'));
  mg_cobj_unref(o);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

/* match: the variant whose vary key is ctx */
static int vary_is(const mg_cobj_t *o, void *ctx) { return mg_str_eq(o->vary, str(ctx)); }

static void variants_come_back_from_disk(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  if (!c) return;
  CHECK(put(c, "GET http://a/v", "en", "vary: accept-language\r\n", 10, 'e') == 0);
  CHECK(put(c, "GET http://a/v", "fr", "vary: accept-language\r\n", 20, 'f') == 0);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20);
  if (!c) return;
  int nv = 0;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/v"), vary_is, "fr", &nv);
  CHECK(o && body_is(o, 20, 'f') && nv == 2);
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/v"), vary_is, "de", &nv);
  CHECK(o == NULL && nv == 2); /* a vary miss */
  o = mg_cache_lookup(c, S("GET http://a/v"), vary_is, "en", &nv);
  CHECK(o && body_is(o, 10, 'e'));
  mg_cobj_unref(o);
  /* a response without Vary replaces both, on disk too */
  CHECK(put(c, "GET http://a/v", "", "", 30, 'n') == 0);
  mg_cache_sync(c);
  CHECK(stats(c).disk_objects == 1 && object_files(dir, NULL, 0) == 1);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

/* New values of a varied-on header keep coming: the disk keeps
 * MG_CACHE_VARIANTS_MAX files of the key too (the least recent goes). */
static void a_key_keeps_a_bounded_number_of_variant_files(void) {
  char *dir = tmpdir();
  mg_cache_t *c = open_store(dir, 10 << 20);
  if (!c) return;
  char vk[32];
  for (int i = 0; i < 40; i++) {
    snprintf(vk, sizeof vk, "ua%d", i);
    CHECK(put(c, "GET http://a/ua", vk, "vary: user-agent\r\n", 10, 'u') == 0);
    mg_cache_sync(c); /* written in this order */
  }
  CHECK(stats(c).disk_objects == MG_CACHE_VARIANTS_MAX);
  CHECK(object_files(dir, NULL, 0) == MG_CACHE_VARIANTS_MAX);
  mg_cache_free(c);
  c = open_store(dir, 10 << 20); /* from disk: the newest are the ones kept */
  if (!c) return;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/ua"), vary_is, "ua39", NULL);
  CHECK(o != NULL);
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/ua"), vary_is, "ua0", NULL);
  CHECK(o == NULL);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

static void a_folder_that_cannot_be_made_is_an_error(void) {
  char *dir = tmpdir();
  char file[512], err[256] = "";
  snprintf(file, sizeof file, "%s/file", dir);
  FILE *f = fopen(file, "w");
  if (f) fclose(f);
  mg_cache_t *c = mg_cache_new(1 << 20, 64 * KIB);
  CHECK(mg_cache_open_disk(c, file, 10 << 20, err, sizeof err) == MG_ECONFIG);
  CHECK(strstr(err, "Not a directory") != NULL);
  mg_cache_free(c);
  rm_rf(dir);
  free(dir);
}

/* Threads storing, reading (most reads go to disk: memory is tiny), removing
 * and purging at once, with a disk cap that keeps evicting; every body read
 * must be whole and the one its key was stored with (ASan: build-asan). */
#define THREADS 4
#define ITERS 400
#define KEYS 40

static mg_cache_t *shared;

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  long bad = 0;
  char key[64];
  for (int i = 0; i < ITERS; i++) {
    int k = (int)(rand_r(&seed) % KEYS);
    snprintf(key, sizeof key, "GET http://t/%c/%d", 'a' + k % 3, k);
    char fill = (char)('A' + k % 26);
    size_t n = 1000 + (size_t)k * 700;
    int op = (int)(rand_r(&seed) % 10);
    if (op < 4) {
      int rc = put(shared, key, "", "", n, fill);
      if (rc < 0 && rc != MG_ELIMIT) bad++;
    } else if (op < 9) {
      mg_cobj_t *o = mg_cache_lookup(shared, str(key), NULL, NULL, NULL);
      if (o && !body_is(o, n, fill)) bad++;
      mg_cobj_unref(o);
    } else if (rand_r(&seed) % 4) {
      mg_cache_remove(shared, str(key));
    } else {
      mg_cache_remove_prefix(shared, S("GET http://t/b/"));
    }
  }
  return (void *)bad;
}

static void threads_store_read_remove_and_evict_on_disk_at_once(void) {
  char *dir = tmpdir();
  char err[256];
  shared = mg_cache_new(256 * KIB, 64 * KIB); /* one shard of 256 KiB: a few objects */
  CHECK(shared && mg_cache_open_disk(shared, dir, 400 * KIB, err, sizeof err) == 0);
  if (!shared) return;
  /* every key once first: more than the disk holds (about 570 KB), so it evicts */
  char key[64];
  for (int k = 0; k < KEYS; k++) {
    snprintf(key, sizeof key, "GET http://t/%c/%d", 'a' + k % 3, k);
    CHECK(put(shared, key, "", "", 1000 + (size_t)k * 700, (char)('A' + k % 26)) == 0);
  }
  mg_cache_sync(shared);
  CHECK(stats(shared).disk_evictions > 0);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0);
  long bad = 0;
  for (int i = 0; i < THREADS; i++) {
    void *r;
    CHECK(pthread_join(t[i], &r) == 0);
    bad += (long)r;
  }
  CHECK(bad == 0);
  mg_cache_sync(shared);
  mg_cache_stats_t st = stats(shared);
  CHECK(st.disk_bytes <= st.disk_cap && st.disk_write_errors == 0);
  CHECK((int)st.disk_objects == object_files(dir, NULL, 0));
  mg_cache_free(shared);
  rm_rf(dir);
  free(dir);
}

int main(void) {
  static const t_case_t cases[] = {
    T(an_object_survives_a_new_store_on_the_same_folder),
    T(a_disk_hit_is_promoted_into_memory),
    T(a_purge_during_a_disk_read_is_not_undone_by_the_promotion),
    T(a_truncated_file_is_deleted_at_start_and_not_served),
    T(a_file_damaged_while_indexed_is_deleted_on_lookup),
    T(temp_files_of_an_earlier_run_are_removed_at_start),
    T(the_size_cap_evicts_the_least_recently_used_files),
    T(remove_and_remove_prefix_reach_both_tiers),
    T(a_write_error_costs_the_disk_copy_only),
    T(variants_come_back_from_disk),
    T(a_key_keeps_a_bounded_number_of_variant_files),
    T(a_folder_that_cannot_be_made_is_an_error),
    T(threads_store_read_remove_and_evict_on_disk_at_once),
  };
  return t_run("cachedisk", cases, sizeof(cases) / sizeof(cases[0]));
}
