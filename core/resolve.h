/* Name resolution for the workers' own connections (sockets and HTTP calls made
 * from Lua): an IP literal is parsed at once; a name goes to getaddrinfo on
 * libuv's thread pool (uv_getaddrinfo), never blocking the loop, and its answer
 * is kept per worker for MG_DNS_TTL_MS (a failure for MG_DNS_NEG_TTL_MS), since
 * getaddrinfo does not tell the record's TTL. Queries for a name already being
 * resolved wait for the same lookup. */
#ifndef MG_RESOLVE_H
#define MG_RESOLVE_H

#include <stddef.h>
#include <sys/socket.h>

#include "mg.h"

#define MG_DNS_TTL_MS 30000
#define MG_DNS_NEG_TTL_MS 2000
#define MG_DNS_MAX 512     /* names kept per worker; the oldest answer goes first */
#define MG_DNS_NAME_MAX 253

typedef struct mg_dnsq_s mg_dnsq_t;
/* status 0 and the address (its port set), or a libuv error (UV_EAI_*). */
typedef void (*mg_resolved_cb)(mg_dnsq_t *q, int status, const struct sockaddr *addr);

/* A query, embedded in its owner: valid until its callback ran or it was cancelled. */
struct mg_dnsq_s {
  mg_dnsq_t *next, *prev;
  struct mg_dns_entry_s *entry;
  mg_resolved_cb cb;
  int port;
};

/* Resolves host (len bytes: a name, an IPv4 or IPv6 literal, with or without
 * [brackets]) for port. Returns 1 with *out filled when the answer is known now
 * (a literal, or a cached answer), 0 when q's callback follows (on a later loop
 * turn), or a negative code: MG_EINVAL for a name that cannot be one, UV_ENOMEM,
 * or the cached failure. */
int mg_resolve(mg_worker_t *w, mg_dnsq_t *q, const char *host, size_t len, int port,
               mg_resolved_cb cb, struct sockaddr_storage *out);
/* The query's owner goes: no callback. */
void mg_resolve_cancel(mg_dnsq_t *q);
/* Worker exit: the cache goes (a lookup still running frees its entry when done). */
void mg_resolve_free(mg_worker_t *w);

#endif
