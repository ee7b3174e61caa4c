/* Filter chains: the stages a message body passes through inside an exchange,
 * between the codec that read it and the writer that sends it on. Each exchange
 * has two: the request body's (toward the upstream) and the response's (toward
 * the client), set up from the route when their head is known. A filter sees the
 * head (and may drop out for this message), every piece of body, and the end;
 * it passes on what it makes with mg_filter_pass / mg_filter_pass_end, which go to
 * the next filter or, after the last, to the chain's sink. With no filter the
 * chain hands each piece straight to the sink: no copy is made on the way.
 *
 * The `body` hook is the first filter (proxy.c); compression, the cache's store
 * and the WAF's body inspection are to be others. Filters live in the request's
 * arena: nothing to free. */
#ifndef MG_FILTER_H
#define MG_FILTER_H

#include "mg.h"

typedef struct mg_filter_s mg_filter_t;
typedef struct mg_fchain_s mg_fchain_t;

typedef struct {
  const char *name;
  /* The head is known, before it is written: 0 to stay in the chain, 1 to drop
   * out (nothing to do with this message), < 0 to fail the exchange. May be NULL. */
  int (*head)(mg_filter_t *f);
  /* A piece of body: 0, or < 0 to fail (the rest of the message is cut). */
  int (*body)(mg_filter_t *f, const char *p, size_t n);
  /* The end of the body: pass on what is held back, then the end. May be NULL
   * (the end is passed on). */
  int (*end)(mg_filter_t *f);
  /* The input paused (a read's worth came and no more is there yet): pass on
   * what is held back that can go now, so a stream flows. 0, or < 0 to fail.
   * May be NULL (nothing held back). */
  int (*flush)(mg_filter_t *f);
  /* The filter may change the body's length: the message is re-framed (chunked,
   * or by the close for HTTP/1.0) instead of keeping its Content-Length. */
  int changes_length;
} mg_filter_ops_t;

struct mg_filter_s {
  const mg_filter_ops_t *ops;
  mg_filter_t *next;  /* NULL: the last, its output goes to the sink */
  mg_fchain_t *chain;
  void *ctx;          /* the filter's state */
};

struct mg_fchain_s {
  mg_filter_t *first; /* NULL: no filter */
  int (*sink)(void *ctx, const char *p, size_t n);
  int (*sink_end)(void *ctx);
  void *sink_ctx;
};

/* An empty chain ending in `sink`. */
void mg_fchain_init(mg_fchain_t *c, int (*sink)(void *, const char *, size_t), int (*sink_end)(void *),
                    void *sink_ctx);
/* Appends f (its ops and ctx set by the caller) at the end of the chain. */
void mg_fchain_add(mg_fchain_t *c, mg_filter_t *f);
/* Runs every filter's head: those that answer 1 leave the chain. 0, or < 0. */
int mg_fchain_head(mg_fchain_t *c);
/* True when a filter left in the chain may change the body's length. */
int mg_fchain_changes_length(const mg_fchain_t *c);

static inline int mg_fchain_body(mg_fchain_t *c, const char *p, size_t n) {
  if (n == 0) return 0;
  return c->first ? c->first->ops->body(c->first, p, n) : c->sink(c->sink_ctx, p, n);
}
int mg_fchain_end(mg_fchain_t *c);
/* Every filter's flush, first to last (what one passes on reaches the next
 * before the next flushes). 0, or < 0. */
int mg_fchain_flush(mg_fchain_t *c);

/* What a filter makes goes on with these. */
int mg_filter_pass(mg_filter_t *f, const char *p, size_t n);
int mg_filter_pass_end(mg_filter_t *f);

#endif
