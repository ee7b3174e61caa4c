#include "resolve.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "wctx.h"

typedef struct mg_dns_entry_s {
  struct mg_dns_entry_s *next, *prev;
  struct mg_dns_s *dns;     /* NULL once the cache is gone (a lookup still running) */
  uv_getaddrinfo_t req;
  int pending;              /* the lookup runs */
  int status;               /* 0, or the failure */
  struct sockaddr_storage addr;
  uint64_t expires;         /* loop time (ms) */
  mg_dnsq_t *waiters;
  size_t len;
  char name[MG_DNS_NAME_MAX + 1];
} mg_dns_entry_t;

typedef struct mg_dns_s {
  mg_worker_t *w;
  mg_dns_entry_t *head; /* most recently asked first */
  int n;
} mg_dns_t;

static void set_port(struct sockaddr_storage *ss, int port) {
  if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
  else ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* A literal address: 1 (out filled), 0 not one. */
static int literal(const char *host, size_t len, int port, struct sockaddr_storage *out) {
  char buf[64];
  if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
    host++;
    len -= 2;
  }
  if (len == 0 || len >= sizeof(buf)) return 0;
  memcpy(buf, host, len);
  buf[len] = 0;
  memset(out, 0, sizeof(*out));
  struct sockaddr_in *a4 = (struct sockaddr_in *)out;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
  if (inet_pton(AF_INET, buf, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
  } else if (inet_pton(AF_INET6, buf, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
  } else {
    return 0;
  }
  set_port(out, port);
  return 1;
}

/* Letters, digits, '-', '_', '.': what a host name may hold here. */
static int valid_name(const char *p, size_t len) {
  if (len == 0 || len > MG_DNS_NAME_MAX || p[0] == '.' || p[0] == '-') return 0;
  for (size_t i = 0; i < len; i++) {
    char c = p[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_' || c == '.'))
      return 0;
  }
  return 1;
}

static void entry_unlink(mg_dns_entry_t *e) {
  mg_dns_t *d = e->dns;
  if (!d) return;
  if (e->prev) e->prev->next = e->next;
  else d->head = e->next;
  if (e->next) e->next->prev = e->prev;
  e->next = e->prev = NULL;
  d->n--;
}

static void entry_link(mg_dns_t *d, mg_dns_entry_t *e) {
  e->dns = d;
  e->prev = NULL;
  e->next = d->head;
  if (d->head) d->head->prev = e;
  d->head = e;
  d->n++;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  mg_dns_entry_t *e = req->data;
  e->pending = 0;
  /* the first IPv4 answer, else the first one */
  const struct addrinfo *pick = NULL;
  for (const struct addrinfo *a = status == 0 ? res : NULL; a; a = a->ai_next) {
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
    if (!pick || (pick->ai_family != AF_INET && a->ai_family == AF_INET)) pick = a;
  }
  if (status == 0 && !pick) status = UV_EAI_NODATA;
  if (pick) memcpy(&e->addr, pick->ai_addr, pick->ai_addrlen);
  if (res) uv_freeaddrinfo(res);
  e->status = status;
  if (!e->dns) { /* the cache went meanwhile (worker exit) */
    free(e);
    return;
  }
  mg_worker_t *w = e->dns->w;
  e->expires = uv_now(&w->loop) + (status == 0 ? MG_DNS_TTL_MS : MG_DNS_NEG_TTL_MS);
  if (status < 0)
    MG_WARN(w->id, "resolving '%s' failed: %s", e->name, uv_strerror(status));
  while (e->waiters) {
    mg_dnsq_t *q = e->waiters;
    e->waiters = q->next;
    if (e->waiters) e->waiters->prev = NULL;
    q->next = q->prev = NULL;
    q->entry = NULL;
    if (status < 0) {
      q->cb(q, status, NULL);
    } else {
      struct sockaddr_storage ss = e->addr;
      set_port(&ss, q->port);
      q->cb(q, 0, (struct sockaddr *)&ss);
    }
  }
}

int mg_resolve(mg_worker_t *w, mg_dnsq_t *q, const char *host, size_t len, int port,
               mg_resolved_cb cb, struct sockaddr_storage *out) {
  if (port <= 0 || port > 65535) return MG_EINVAL;
  if (literal(host, len, port, out)) return 1;
  if (!valid_name(host, len)) return MG_EINVAL;
  mg_dns_t *d = w->dns;
  if (!d) {
    d = calloc(1, sizeof(*d));
    if (!d) return UV_ENOMEM;
    d->w = w;
    w->dns = d;
  }
  uint64_t now = uv_now(&w->loop);
  mg_dns_entry_t *e = d->head;
  while (e && !(e->len == len && strncasecmp(e->name, host, len) == 0)) e = e->next;
  if (e && !e->pending && e->expires <= now) { /* stale: asked again */
    entry_unlink(e);
    free(e);
    e = NULL;
  }
  if (e && !e->pending) {
    if (e != d->head) { /* most recently asked first */
      entry_unlink(e);
      entry_link(d, e);
    }
    if (e->status < 0) return e->status;
    *out = e->addr;
    set_port(out, port);
    return 1;
  }
  if (!e) {
    if (d->n >= MG_DNS_MAX) { /* the least recently asked answer goes */
      mg_dns_entry_t *t = d->head;
      while (t && t->next) t = t->next;
      while (t && t->pending) t = t->prev;
      if (t) {
        entry_unlink(t);
        free(t);
      }
    }
    e = calloc(1, sizeof(*e));
    if (!e) return UV_ENOMEM;
    memcpy(e->name, host, len);
    e->len = len;
    e->req.data = e;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = uv_getaddrinfo(&w->loop, &e->req, on_resolved, e->name, NULL, &hints);
    if (rc < 0) {
      free(e);
      return rc;
    }
    e->pending = 1;
    entry_link(d, e);
  }
  q->cb = cb;
  q->port = port;
  q->entry = e;
  q->prev = NULL;
  q->next = e->waiters;
  if (e->waiters) e->waiters->prev = q;
  e->waiters = q;
  return 0;
}

void mg_resolve_cancel(mg_dnsq_t *q) {
  mg_dns_entry_t *e = q->entry;
  if (!e) return;
  if (q->prev) q->prev->next = q->next;
  else e->waiters = q->next;
  if (q->next) q->next->prev = q->prev;
  q->next = q->prev = NULL;
  q->entry = NULL;
}

void mg_resolve_free(mg_worker_t *w) {
  mg_dns_t *d = w->dns;
  if (!d) return;
  while (d->head) {
    mg_dns_entry_t *e = d->head;
    entry_unlink(e);
    e->dns = NULL;
    e->waiters = NULL;
    if (!e->pending) free(e); /* else on_resolved frees it */
  }
  free(d);
  w->dns = NULL;
}
