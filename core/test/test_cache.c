/* core/cache: the memory store. The cap holds, eviction follows the LRU order,
 * admission keeps a popular object against a one-hit wonder, variants, readers
 * keep replaced and evicted objects alive, and threads reading and writing at
 * once (run under ASan: build-asan/test_cache). */
#include "cache.h"
#include "cache_util.h"
#include "test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define S(lit) MG_STR(lit)

static const mg_cp_meta_t meta0 = { .status = 200, .lifetime = 60, .last_modified = -1 };

/* Stores key with a body of n bytes of `fill`; the commit's answer. */
static int put(mg_cache_t *c, const char *key, const char *vary, size_t n, char fill) {
  return cache_put(c, key, vary, "content-type: text/plain\r\n", n, fill, &meta0);
}

/* Whether key is stored (a lookup: it counts for admission and the LRU order). */
static int has(mg_cache_t *c, const char *key) {
  mg_cobj_t *o = mg_cache_lookup(c, str(key), NULL, NULL, NULL);
  mg_cobj_unref(o);
  return o != NULL;
}


static void stores_and_finds_head_body_and_meta(void) {
  mg_cache_t *c = mg_cache_new(1 << 20, 64 << 10);
  CHECK(c != NULL);
  CHECK(mg_cache_lookup(c, S("GET http://a/x"), NULL, NULL, NULL) == NULL);
  CHECK(put(c, "GET http://a/x", "", 40000, 'x') == 0); /* three chunks */
  int nv = -1;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/x"), NULL, NULL, &nv);
  CHECK(o != NULL && nv == 1);
  if (o) {
    CHECK(body_is(o, 40000, 'x'));
    CHECK(mg_str_eq(o->head, S("content-type: text/plain\r\n")));
    CHECK(mg_str_eq(o->key, S("GET http://a/x")));
    CHECK(o->vary.len == 0);
    CHECK(o->meta.status == 200 && o->meta.lifetime == 60);
    mg_cobj_unref(o);
  }
  CHECK(put(c, "GET http://a/empty", "", 0, 'x') == 0);
  o = mg_cache_lookup(c, S("GET http://a/empty"), NULL, NULL, NULL);
  CHECK(o != NULL && o && o->body == NULL && o->body_len == 0);
  mg_cobj_unref(o);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.objects == 2 && st.stores == 2 && st.hits == 2 && st.lookups == 3);
  CHECK(mg_cache_remove(c, S("GET http://a/x")) == 1);
  CHECK(!has(c, "GET http://a/x"));
  mg_cache_free(c);
}

/* i13-api: mg.cache.purge_prefix's walk: every key with the prefix (all their
 * variants), in every shard, none other; a reader keeps its object. */
static void removes_by_prefix_in_every_shard(void) {
  mg_cache_t *c = mg_cache_new(64 << 20, 64 << 10);
  CHECK(c != NULL);
  char key[64];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "GET http://a/static/%d", i);
    CHECK(put(c, key, "", 10, 's') == 0);
    snprintf(key, sizeof key, "GET http://a/other/%d", i);
    CHECK(put(c, key, "", 10, 'o') == 0);
  }
  CHECK(put(c, "GET http://a/static/v", "accept-language:en\n", 10, 'e') == 0);
  CHECK(put(c, "GET http://a/static/v", "accept-language:fr\n", 10, 'f') == 0);
  CHECK(put(c, "GET http://a/stati", "", 10, 'x') == 0); /* shorter than the prefix */
  mg_cobj_t *held = mg_cache_lookup(c, S("GET http://a/static/7"), NULL, NULL, NULL);
  CHECK(held != NULL);
  CHECK(mg_cache_remove_prefix(c, S("GET http://a/static/")) == 202);
  CHECK(!has(c, "GET http://a/static/0") && !has(c, "GET http://a/static/199") && !has(c, "GET http://a/static/v"));
  CHECK(has(c, "GET http://a/other/0") && has(c, "GET http://a/other/199") && has(c, "GET http://a/stati"));
  CHECK(body_is(held, 10, 's')); /* still readable by the one who holds it */
  mg_cobj_unref(held);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.objects == 201);
  CHECK(mg_cache_remove_prefix(c, S("GET http://a/static/")) == 0);
  CHECK(mg_cache_remove_prefix(c, S("")) == 201); /* everything */
  mg_cache_stats(c, &st);
  CHECK(st.objects == 0 && st.bytes == 0);
  mg_cache_free(c);
}

static void the_byte_cap_holds_while_objects_keep_coming(void) {
  uint64_t cap = 256 << 10;
  mg_cache_t *c = mg_cache_new(cap, 8 << 10);
  CHECK(c != NULL);
  char key[64];
  for (int i = 0; i < 2000; i++) {
    snprintf(key, sizeof key, "GET http://a/%d", i);
    has(c, key);
    int rc = put(c, key, "", 1000 + (size_t)(i % 7000), 'a');
    CHECK(rc == 0 || rc == MG_CACHE_NOT_ADMITTED);
    mg_cache_stats_t st;
    mg_cache_stats(c, &st);
    if (st.bytes > cap) {
      CHECK(st.bytes <= cap);
      break;
    }
  }
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.evictions > 0);
  CHECK(st.bytes > cap / 2); /* it is used, not just emptied */
  CHECK(st.objects == st.stores - st.evictions);
  mg_cache_free(c);
}

/* One shard (the cap is under four objects of max_object), bodies of 15000 bytes:
 * four fit, the fifth evicts. */
static mg_cache_t *small_store(void) {
  mg_cache_t *c = mg_cache_new(64 << 10, 16 << 10);
  CHECK(c != NULL);
  return c;
}

static void evicts_the_least_recently_used(void) {
  mg_cache_t *c = small_store();
  CHECK(put(c, "A", "", 15000, 'a') == 0);
  CHECK(put(c, "B", "", 15000, 'b') == 0);
  CHECK(put(c, "C", "", 15000, 'c') == 0);
  CHECK(put(c, "D", "", 15000, 'd') == 0);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.objects == 4 && st.evictions == 0);
  CHECK(has(c, "A")); /* A is now the most recent: B is the tail */
  CHECK(!has(c, "E"));
  CHECK(put(c, "E", "", 15000, 'e') == 0);
  mg_cache_stats(c, &st);
  CHECK(st.evictions == 1 && st.objects == 4);
  CHECK(!has(c, "B"));
  CHECK(has(c, "A") && has(c, "C") && has(c, "D") && has(c, "E"));
  /* A, C, D, E were looked up in that order: A is the LRU tail, but asked for
   * twice; F, asked for once, is refused rather than evict it */
  CHECK(!has(c, "F"));
  CHECK(put(c, "F", "", 15000, 'f') == MG_CACHE_NOT_ADMITTED);
  CHECK(has(c, "C")); /* order now D, E, C (A is still the tail) */
  has(c, "F");
  has(c, "F");
  CHECK(put(c, "F", "", 15000, 'f') == 0); /* F: 3 > A: 2 */
  mg_cache_stats(c, &st);
  CHECK(st.evictions == 2 && st.objects == 4);
  CHECK(!has(c, "A"));
  CHECK(has(c, "C") && has(c, "D") && has(c, "E") && has(c, "F"));
  mg_cache_free(c);
}

static void admission_keeps_a_popular_object_from_a_one_hit_wonder(void) {
  mg_cache_t *c = small_store();
  for (int i = 0; i < 6; i++) has(c, "P"); /* asked for often */
  CHECK(put(c, "P", "", 15000, 'p') == 0);
  CHECK(put(c, "X1", "", 15000, '1') == 0);
  CHECK(put(c, "X2", "", 15000, '2') == 0);
  CHECK(put(c, "X3", "", 15000, '3') == 0);
  /* P is the LRU tail; N is asked for once */
  CHECK(!has(c, "N"));
  CHECK(put(c, "N", "", 15000, 'n') == MG_CACHE_NOT_ADMITTED);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.rejected == 1 && st.evictions == 0 && st.objects == 4);
  /* once N is asked for more often than P, it gets in and P goes */
  for (int i = 0; i < 8; i++) has(c, "N");
  CHECK(put(c, "N", "", 15000, 'n') == 0);
  mg_cache_stats(c, &st);
  CHECK(st.evictions == 1);
  mg_cobj_t *o = mg_cache_lookup(c, S("N"), NULL, NULL, NULL);
  CHECK(o && body_is(o, 15000, 'n'));
  mg_cobj_unref(o);
  mg_cache_free(c);
}

static void a_reader_keeps_a_replaced_or_evicted_object_alive(void) {
  mg_cache_t *c = small_store();
  CHECK(put(c, "K", "", 15000, 'o') == 0);
  mg_cobj_t *old = mg_cache_lookup(c, S("K"), NULL, NULL, NULL);
  CHECK(old != NULL);
  CHECK(put(c, "K", "", 12000, 'n') == 0); /* replaces */
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.replaced == 1 && st.objects == 1);
  mg_cobj_t *cur = mg_cache_lookup(c, S("K"), NULL, NULL, NULL);
  CHECK(cur && cur != old && body_is(cur, 12000, 'n'));
  CHECK(old && body_is(old, 15000, 'o')); /* still whole (ASan: not freed) */
  /* evicted while held: push K out with more popular keys */
  for (int i = 0; i < 4; i++) {
    char k[4] = { 'Y', (char)('0' + i), 0, 0 };
    for (int j = 0; j < 3; j++) has(c, k);
    CHECK(put(c, k, "", 15000, 'y') == 0);
  }
  CHECK(!has(c, "K"));
  CHECK(cur && body_is(cur, 12000, 'n'));
  mg_cobj_unref(cur);
  mg_cobj_unref(old);
  mg_cache_free(c);
}

static int match_vary(const mg_cobj_t *o, void *ctx) { return mg_str_eq(o->vary, str(ctx)); }

static void variants_of_one_key(void) {
  mg_cache_t *c = mg_cache_new(1 << 20, 64 << 10);
  CHECK(put(c, "GET http://a/v", "accept-language:en\n", 100, 'e') == 0);
  CHECK(put(c, "GET http://a/v", "accept-language:fr\n", 200, 'f') == 0);
  CHECK(put(c, "GET http://a/v", "accept-language:fr\n", 300, 'F') == 0); /* replaces fr */
  int nv = 0;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/v"), match_vary, "accept-language:en\n", &nv);
  CHECK(o && nv == 2 && body_is(o, 100, 'e'));
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/v"), match_vary, "accept-language:fr\n", &nv);
  CHECK(o && nv == 2 && body_is(o, 300, 'F'));
  mg_cobj_unref(o);
  o = mg_cache_lookup(c, S("GET http://a/v"), match_vary, "accept-language:de\n", &nv);
  CHECK(o == NULL && nv == 2); /* a vary miss */
  CHECK(mg_cache_remove(c, S("GET http://a/v")) == 2);
  o = mg_cache_lookup(c, S("GET http://a/v"), match_vary, "accept-language:en\n", &nv);
  CHECK(o == NULL && nv == 0);
  mg_cache_free(c);
}

/* Clients sending ever new values of a varied-on header: the key keeps
 * MG_CACHE_VARIANTS_MAX variants, a new one replacing the least recently used. */
static void a_key_keeps_a_bounded_number_of_variants(void) {
  mg_cache_t *c = mg_cache_new(8 << 20, 64 << 10);
  char vk[64];
  for (int i = 0; i < MG_CACHE_VARIANTS_MAX; i++) {
    snprintf(vk, sizeof vk, "user-agent:ua%d\n", i);
    CHECK(put(c, "GET http://a/ua", vk, 10, 'u') == 0);
  }
  int nv = 0;
  mg_cobj_t *o = mg_cache_lookup(c, S("GET http://a/ua"), match_vary, "user-agent:ua0\n", &nv);
  CHECK(o && nv == MG_CACHE_VARIANTS_MAX); /* ua0 is the most recent now; ua1 the least */
  mg_cobj_unref(o);
  for (int i = MG_CACHE_VARIANTS_MAX; i < 1000; i++) {
    snprintf(vk, sizeof vk, "user-agent:ua%d\n", i);
    CHECK(put(c, "GET http://a/ua", vk, 10, 'u') == 0);
    if (i == MG_CACHE_VARIANTS_MAX) {
      o = mg_cache_lookup(c, S("GET http://a/ua"), match_vary, "user-agent:ua1\n", &nv);
      CHECK(o == NULL && nv == MG_CACHE_VARIANTS_MAX); /* ua1 went, not ua0 */
      o = mg_cache_lookup(c, S("GET http://a/ua"), match_vary, "user-agent:ua0\n", &nv);
      CHECK(o != NULL);
      mg_cobj_unref(o);
    }
  }
  o = mg_cache_lookup(c, S("GET http://a/ua"), match_vary, "user-agent:ua999\n", &nv);
  CHECK(o && nv == MG_CACHE_VARIANTS_MAX);
  mg_cobj_unref(o);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.objects == MG_CACHE_VARIANTS_MAX);
  mg_cache_free(c);
}

static void a_response_without_vary_replaces_every_variant_and_back(void) {
  mg_cache_t *c = mg_cache_new(1 << 20, 64 << 10);
  CHECK(put(c, "K", "accept-language:en\n", 100, 'e') == 0);
  CHECK(put(c, "K", "accept-language:fr\n", 100, 'f') == 0);
  CHECK(put(c, "K", "", 100, 'n') == 0); /* the origin dropped its Vary */
  int nv = 0;
  mg_cobj_t *o = mg_cache_lookup(c, S("K"), match_vary, "", &nv);
  CHECK(o && nv == 1 && body_is(o, 100, 'n'));
  mg_cobj_unref(o);
  CHECK(put(c, "K", "accept-language:de\n", 100, 'd') == 0); /* and took it up again */
  o = mg_cache_lookup(c, S("K"), match_vary, "accept-language:de\n", &nv);
  CHECK(o && nv == 1 && body_is(o, 100, 'd'));
  mg_cobj_unref(o);
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.objects == 1 && st.replaced == 3);
  mg_cache_free(c);
}

static void bodies_over_max_object_are_not_stored(void) {
  mg_cache_t *c = mg_cache_new(1 << 20, 10000);
  mg_cwriter_t *w = mg_cache_begin(c, S("big"));
  char buf[6000];
  memset(buf, 'b', sizeof buf);
  CHECK(mg_cache_write(w, buf, sizeof buf) == 0);
  CHECK(mg_cache_write(w, buf, sizeof buf) == MG_ELIMIT);
  CHECK(mg_cache_write(w, buf, 1) == MG_ELIMIT);
  CHECK(mg_cache_commit(w, S(""), S(""), &meta0) == MG_ELIMIT);
  CHECK(!has(c, "big"));
  CHECK(put(c, "exact", "", 10000, 'e') == 0); /* exactly max_object is fine */
  w = mg_cache_begin(c, S("aborted"));
  CHECK(mg_cache_write(w, buf, 100) == 0);
  mg_cache_abort(w);
  CHECK(!has(c, "aborted"));
  mg_cache_stats_t st;
  mg_cache_stats(c, &st);
  CHECK(st.too_big == 1 && st.objects == 1);
  mg_cache_free(c);
}

static void the_process_store_is_made_once_and_kept_across_reloads(void) {
  char cerr[256];
  CHECK(mg_cache_global() == NULL);
  CHECK(mg_cache_configure(0, 0, NULL, 0, cerr, sizeof cerr) == 0 && mg_cache_global() == NULL);
  CHECK(mg_cache_configure(1 << 20, 1 << 16, NULL, 0, cerr, sizeof cerr) == 0);
  mg_cache_t *c = mg_cache_global();
  CHECK(c != NULL);
  CHECK(put(c, "kept", "", 10, 'k') == 0);
  CHECK(mg_cache_configure(1 << 20, 1 << 16, NULL, 0, cerr, sizeof cerr) == 0 && mg_cache_global() == c);
  CHECK(mg_cache_configure(2 << 20, 1 << 16, NULL, 0, cerr, sizeof cerr) == 1 && mg_cache_global() == c); /* restart applies it */
  CHECK(has(c, "kept"));
  mg_cache_shutdown();
  CHECK(mg_cache_global() == NULL);
}

/* ---- threads ---- */

#define THREADS 4
#define ITERS 20000
#define KEYS 300

static mg_cache_t *shared;

/* key i's body: (i * 97) % 9000 + 1 bytes of 'A' + i % 26 */
static size_t body_len_of(int i) { return (size_t)((i * 97) % 9000 + 1); }

static void *worker(void *arg) {
  unsigned seed = (unsigned)(uintptr_t)arg;
  long bad = 0;
  char key[32];
  for (int n = 0; n < ITERS; n++) {
    int i = (int)(rand_r(&seed) % KEYS);
    snprintf(key, sizeof key, "GET http://t/%d", i);
    mg_cobj_t *o = mg_cache_lookup(shared, str(key), NULL, NULL, NULL);
    if (o) {
      if (!body_is(o, body_len_of(i), (char)('A' + i % 26)) || !mg_str_eq(o->key, str(key))) bad++;
      mg_cobj_unref(o);
      if (rand_r(&seed) % 16 == 0) put(shared, key, "", body_len_of(i), (char)('A' + i % 26)); /* replace */
      if (rand_r(&seed) % 64 == 0) mg_cache_remove(shared, str(key));
    } else {
      int rc = put(shared, key, "", body_len_of(i), (char)('A' + i % 26));
      if (rc < 0) bad++;
    }
  }
  return (void *)bad;
}

static void threads_read_write_replace_and_evict_at_once(void) {
  uint64_t cap = 512 << 10; /* a fraction of the keys: evictions all the time */
  shared = mg_cache_new(cap, 16 << 10);
  CHECK(shared != NULL);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0);
  long bad = 0;
  for (int i = 0; i < THREADS; i++) {
    void *r;
    CHECK(pthread_join(t[i], &r) == 0);
    bad += (long)r;
  }
  CHECK(bad == 0);
  mg_cache_stats_t st;
  mg_cache_stats(shared, &st);
  CHECK(st.bytes <= cap);
  CHECK(st.hits > 0 && st.evictions > 0 && st.replaced > 0);
  CHECK(st.lookups == (uint64_t)THREADS * ITERS);
  mg_cache_free(shared);
}

int main(void) {
  static const t_case_t cases[] = {
    T(stores_and_finds_head_body_and_meta),
    T(removes_by_prefix_in_every_shard),
    T(the_byte_cap_holds_while_objects_keep_coming),
    T(evicts_the_least_recently_used),
    T(admission_keeps_a_popular_object_from_a_one_hit_wonder),
    T(a_reader_keeps_a_replaced_or_evicted_object_alive),
    T(variants_of_one_key),
    T(a_response_without_vary_replaces_every_variant_and_back),
    T(a_key_keeps_a_bounded_number_of_variants),
    T(bodies_over_max_object_are_not_stored),
    T(the_process_store_is_made_once_and_kept_across_reloads),
    T(threads_read_write_replace_and_evict_at_once),
  };
  return t_run("cache", cases, sizeof(cases) / sizeof(cases[0]));
}
