/* What the cache's C tests (test_cache.c, test_cachedisk.c) share: storing an
 * object of n bytes of one fill byte, and checking a stored body. */
#ifndef MG_TEST_CACHE_UTIL_H
#define MG_TEST_CACHE_UTIL_H

#include <string.h>

#include "cache.h"

static inline mg_str_t str(const char *s) { return (mg_str_t){ s, strlen(s) }; }

/* Stores key (with that vary key and head) with a body of n bytes of `fill`: the
 * commit's answer (MG_ELIMIT when the body passed max_object), or the write's
 * error (the writer aborted). */
static inline int cache_put(mg_cache_t *c, const char *key, const char *vary, const char *head, size_t n, char fill,
                            const mg_cp_meta_t *meta) {
  mg_cwriter_t *w = mg_cache_begin(c, str(key));
  if (!w) return MG_ENOMEM;
  char buf[1000];
  memset(buf, fill, sizeof buf);
  while (n > 0) {
    size_t k = n < sizeof buf ? n : sizeof buf;
    int rc = mg_cache_write(w, buf, k);
    if (rc == MG_ELIMIT) break; /* the commit refuses it */
    if (rc < 0) {
      mg_cache_abort(w);
      return rc;
    }
    n -= k;
  }
  return mg_cache_commit(w, str(vary), str(head), meta);
}

/* The body is n bytes of fill, in chunks no longer than MG_CACHE_CHUNK. */
static inline int body_is(const mg_cobj_t *o, size_t n, char fill) {
  size_t seen = 0;
  for (const mg_cchunk_t *ch = o->body; ch; ch = ch->next) {
    if (ch->len > MG_CACHE_CHUNK) return 0;
    for (size_t i = 0; i < ch->len; i++)
      if (ch->data[i] != fill) return 0;
    seen += ch->len;
  }
  return seen == n && o->body_len == n;
}

#endif
