#include "arena.h"

#include <stdlib.h>

struct mg_arena_chunk_s {
  mg_arena_chunk_t *next;
  size_t size;
  char data[];
};

#define CHUNK_SIZE 4096

void mg_arena_init(mg_arena_t *a) {
  a->head = NULL;
  a->cur = a->end = NULL;
}

void mg_arena_dispose(mg_arena_t *a) {
  mg_arena_chunk_t *c = a->head;
  while (c) {
    mg_arena_chunk_t *next = c->next;
    free(c);
    c = next;
  }
  mg_arena_init(a);
}

void mg_arena_reset(mg_arena_t *a) {
  mg_arena_chunk_t *keep = a->head;
  if (!keep) return;
  /* keep the last (oldest, standard-sized) chunk: big ones are one-offs */
  while (keep->next) {
    mg_arena_chunk_t *next = keep->next;
    free(keep);
    keep = next;
  }
  if (keep->size != CHUNK_SIZE) {
    free(keep);
    mg_arena_init(a);
    return;
  }
  a->head = keep;
  a->cur = keep->data;
  a->end = keep->data + keep->size;
}

void *mg_arena_alloc(mg_arena_t *a, size_t n) {
  n = (n + 7) & ~(size_t)7;
  if ((size_t)(a->end - a->cur) < n) {
    size_t size = n > CHUNK_SIZE ? n : CHUNK_SIZE;
    mg_arena_chunk_t *c = malloc(sizeof(*c) + size);
    if (!c) return NULL;
    c->size = size;
    c->next = a->head;
    a->head = c;
    a->cur = c->data;
    a->end = c->data + size;
  }
  void *p = a->cur;
  a->cur += n;
  return p;
}

char *mg_arena_strdup(mg_arena_t *a, const char *p, size_t len) {
  char *s = mg_arena_alloc(a, len + 1);
  if (!s) return NULL;
  memcpy(s, p, len);
  s[len] = '\0';
  return s;
}
