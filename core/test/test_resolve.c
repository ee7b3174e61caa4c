/* core/resolve.c: literals at once, names off the loop and cached, queries
 * that share a lookup, cancelled queries. A real libuv loop and getaddrinfo
 * ("localhost" comes from /etc/hosts: no network needed). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>

#include "../resolve.h"
#include "../wctx.h"
#include "test.h"

typedef struct {
  mg_dnsq_t q;
  int called, status, family, port;
} probe_t;

static void got(mg_dnsq_t *q, int status, const struct sockaddr *addr) {
  probe_t *p = (probe_t *)q;
  p->called++;
  p->status = status;
  if (addr) {
    p->family = addr->sa_family;
    p->port = ntohs(addr->sa_family == AF_INET ? ((const struct sockaddr_in *)addr)->sin_port
                                               : ((const struct sockaddr_in6 *)addr)->sin6_port);
  }
}

static mg_worker_t *worker(void) {
  mg_worker_t *w = calloc(1, sizeof(*w));
  uv_loop_init(&w->loop);
  return w;
}

static void done(mg_worker_t *w) {
  uv_run(&w->loop, UV_RUN_DEFAULT);
  mg_resolve_free(w);
  CHECK(uv_loop_close(&w->loop) == 0);
  free(w);
}

static void literals(void) {
  mg_worker_t *w = worker();
  probe_t p = { 0 };
  struct sockaddr_storage ss;
  CHECK(mg_resolve(w, &p.q, "127.0.0.1", 9, 8080, got, &ss) == 1);
  CHECK(ss.ss_family == AF_INET);
  CHECK(ntohs(((struct sockaddr_in *)&ss)->sin_port) == 8080);
  CHECK(mg_resolve(w, &p.q, "[::1]", 5, 443, got, &ss) == 1);
  CHECK(ss.ss_family == AF_INET6);
  CHECK(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) == 443);
  CHECK(mg_resolve(w, &p.q, "::1", 3, 1, got, &ss) == 1);
  CHECK(p.called == 0);
  CHECK(w->dns == NULL); /* literals need no cache */
  done(w);
}

static void refused_names(void) {
  mg_worker_t *w = worker();
  probe_t p = { 0 };
  struct sockaddr_storage ss;
  const char *bad[] = { "", "a b", "host\r\nx", "-lead", ".lead", "a/b", "a:b" };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    CHECK(mg_resolve(w, &p.q, bad[i], strlen(bad[i]), 80, got, &ss) == MG_EINVAL);
  CHECK(mg_resolve(w, &p.q, "x\0y", 3, 80, got, &ss) == MG_EINVAL); /* a NUL inside */
  char longname[300];
  memset(longname, 'a', sizeof(longname));
  CHECK(mg_resolve(w, &p.q, longname, sizeof(longname), 80, got, &ss) == MG_EINVAL);
  CHECK(mg_resolve(w, &p.q, "localhost", 9, 0, got, &ss) == MG_EINVAL);
  CHECK(mg_resolve(w, &p.q, "localhost", 9, 65536, got, &ss) == MG_EINVAL);
  CHECK(p.called == 0);
  done(w);
}

static void name_then_cache(void) {
  mg_worker_t *w = worker();
  probe_t a = { 0 }, b = { 0 }, c = { 0 };
  struct sockaddr_storage ss;
  CHECK(mg_resolve(w, &a.q, "localhost", 9, 81, got, &ss) == 0);
  CHECK(mg_resolve(w, &b.q, "LocalHost", 9, 82, got, &ss) == 0); /* the same lookup */
  CHECK(a.called == 0 && b.called == 0); /* never from inside mg_resolve */
  uv_run(&w->loop, UV_RUN_DEFAULT);
  CHECK(a.called == 1 && a.status == 0 && a.port == 81);
  CHECK(b.called == 1 && b.status == 0 && b.port == 82);
  CHECK(a.family == AF_INET || a.family == AF_INET6);
  /* cached now: answered at once, with this query's port */
  memset(&ss, 0, sizeof(ss));
  CHECK(mg_resolve(w, &c.q, "localhost", 9, 83, got, &ss) == 1);
  CHECK(ss.ss_family == a.family);
  CHECK(c.called == 0);
  done(w);
}

static void cancelled(void) {
  mg_worker_t *w = worker();
  probe_t a = { 0 }, b = { 0 };
  struct sockaddr_storage ss;
  CHECK(mg_resolve(w, &a.q, "localhost", 9, 80, got, &ss) == 0);
  CHECK(mg_resolve(w, &b.q, "localhost", 9, 80, got, &ss) == 0);
  mg_resolve_cancel(&a.q);
  mg_resolve_cancel(&a.q); /* twice: harmless */
  uv_run(&w->loop, UV_RUN_DEFAULT);
  CHECK(a.called == 0);
  CHECK(b.called == 1 && b.status == 0);
  done(w);
}

int main(void) {
  const t_case_t cases[] = {
    { "literals are answered at once", literals },
    { "what cannot be a name is refused", refused_names },
    { "a name is looked up once, then cached", name_then_cache },
    { "a cancelled query hears nothing", cancelled },
  };
  return t_run("resolve", cases, sizeof(cases) / sizeof(cases[0]));
}
