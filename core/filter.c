#include "filter.h"

void mg_fchain_init(mg_fchain_t *c, int (*sink)(void *, const char *, size_t), int (*sink_end)(void *),
                    void *sink_ctx) {
  c->first = NULL;
  c->sink = sink;
  c->sink_end = sink_end;
  c->sink_ctx = sink_ctx;
}

void mg_fchain_add(mg_fchain_t *c, mg_filter_t *f) {
  f->next = NULL;
  f->chain = c;
  mg_filter_t **at = &c->first;
  while (*at) at = &(*at)->next;
  *at = f;
}

int mg_fchain_head(mg_fchain_t *c) {
  mg_filter_t **at = &c->first;
  while (*at) {
    mg_filter_t *f = *at;
    int rc = f->ops->head ? f->ops->head(f) : 0;
    if (rc < 0) return rc;
    if (rc == 1) *at = f->next; /* out of the chain for this message */
    else at = &f->next;
  }
  return 0;
}

int mg_fchain_changes_length(const mg_fchain_t *c) {
  for (const mg_filter_t *f = c->first; f; f = f->next)
    if (f->ops->changes_length) return 1;
  return 0;
}

int mg_filter_pass(mg_filter_t *f, const char *p, size_t n) {
  if (n == 0) return 0; /* an empty piece would end a chunked body */
  mg_filter_t *next = f->next;
  return next ? next->ops->body(next, p, n) : f->chain->sink(f->chain->sink_ctx, p, n);
}

int mg_filter_pass_end(mg_filter_t *f) {
  mg_filter_t *next = f->next;
  if (next) return next->ops->end ? next->ops->end(next) : mg_filter_pass_end(next);
  return f->chain->sink_end ? f->chain->sink_end(f->chain->sink_ctx) : 0;
}

int mg_fchain_end(mg_fchain_t *c) {
  mg_filter_t *f = c->first;
  if (f) return f->ops->end ? f->ops->end(f) : mg_filter_pass_end(f);
  return c->sink_end ? c->sink_end(c->sink_ctx) : 0;
}

int mg_fchain_flush(mg_fchain_t *c) {
  for (mg_filter_t *f = c->first; f; f = f->next) {
    if (!f->ops->flush) continue;
    int rc = f->ops->flush(f);
    if (rc < 0) return rc;
  }
  return 0;
}
