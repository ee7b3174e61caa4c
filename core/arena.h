/* A bump allocator: one per request. Everything allocated from it is released in
 * one go by mg_arena_reset/mg_arena_dispose; nothing is freed individually. */
#ifndef MG_ARENA_H
#define MG_ARENA_H

#include "mg.h"

typedef struct mg_arena_chunk_s mg_arena_chunk_t;

typedef struct {
  mg_arena_chunk_t *head; /* current chunk first; older chunks follow */
  char *cur, *end;
} mg_arena_t;

void mg_arena_init(mg_arena_t *a);
/* Frees every chunk but the first, keeps that one for reuse. */
void mg_arena_reset(mg_arena_t *a);
void mg_arena_dispose(mg_arena_t *a);
/* Returns 8-byte aligned memory owned by the arena, or NULL when out of memory. */
void *mg_arena_alloc(mg_arena_t *a, size_t n);
char *mg_arena_strdup(mg_arena_t *a, const char *p, size_t len);

#endif
