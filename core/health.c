#include "health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "balance.h"
#include "log.h"
#include "proxyproto.h"
#include "tls.h"
#include "transport.h"

/* At most this much of an answer is read looking for its status line. */
#define STATUS_READ_MAX 8192

typedef struct probe_s probe_t;

struct mg_health_s {
  uv_loop_t *loop;
  mg_gen_t *gen;     /* referenced until every handle closed */
  mg_tp_ctx_t tp;
  probe_t **probes;  /* one per server id of each checked upstream (each its own
                        allocation: the list grows as servers are added) */
  int nprobes, cap;
  int *covered;      /* per upstream of gen: ids that have a probe */
  uv_timer_t sync;   /* looks for servers added at run time, every second */
  int handles;       /* open handles (timers, transports) */
  int stopped;
  int open, max_open; /* checks holding a socket, and the most at once */
  probe_t *wait_head, *wait_tail; /* checks due that wait for a socket (FIFO) */
  int said_full;     /* the "waiting" line was logged (once per check set) */
};

struct probe_s {
  mg_health_t *h;
  const mg_upstream_cfg_t *u;
  int i;             /* the server */
  uv_timer_t timer;  /* the next check, or the running one's timeout */
  mg_tp_t tp;
  uv_connect_t creq;
  unsigned tp_open : 1; /* tp's handle is open (until its `closed`) */
  unsigned busy : 1;    /* a check runs */
  unsigned up : 1;      /* the verdict */
  int oks, bads;        /* results in a row */
  size_t got;           /* bytes of the answer read */
  char line[64];        /* the start of the status line */
  size_t llen;
  probe_t *wait_next;   /* in h's waiting list */
  int skip;             /* in a 1xx's header block: its lines are skipped */
  size_t col;           /* skipping: bytes on the current line (0: empty so far) */
};

/* The main thread's read buffers (checks of an old and a new generation may
 * run side by side during a reload: the buffers are only used within a call). */
static char rbuf[16384], tbuf[16384];
static uint64_t rng;

static uint64_t next_rand(void) {
  if (!rng) rng = uv_hrtime() | 1;
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545f4914f6cdd1dull;
}

/* The interval with ±15 % jitter, so that checks of many servers spread out. */
static uint64_t jittered(uint64_t ms) {
  uint64_t j = ms * 3 / 10;
  return ms - ms * 15 / 100 + (j ? next_rand() % j : 0);
}

static void handle_closed(mg_health_t *h) {
  if (--h->handles > 0 || !h->stopped) return;
  for (int j = 0; j < h->nprobes; j++) free(h->probes[j]);
  free(h->probes);
  free(h->covered);
  mg_gen_unref(h->gen);
  free(h);
}

static void on_sync_closed(uv_handle_t *t) { handle_closed(t->data); }

static void on_timer_closed(uv_handle_t *t) { handle_closed(((probe_t *)t->data)->h); }

static void result(probe_t *p, int ok, const char *cause);

/* ---- the transport's events ---- */

static void ev_ready(void *owner, int rc, int kind, const char *why) {
  probe_t *p = owner;
  char cause[160];
  if (rc < 0) {
    snprintf(cause, sizeof(cause), "%s %s", kind == MG_TP_FAIL_CONNECT ? "connect" : "TLS", why ? why : "failed");
    result(p, 0, cause);
    return;
  }
  const mg_health_cfg_t *c = &p->u->health;
  if (c->type == MG_HEALTH_TCP) {
    result(p, 1, "connected");
    return;
  }
  const char *host = c->host ? c->host : p->u->tls && p->u->tls->sni ? p->u->tls->sni : mg_upstream_server(p->u, p->i)->text;
  char req[2048];
  int n = snprintf(req, sizeof(req),
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: moongate-health\r\nConnection: close\r\n\r\n",
                   c->path, host);
  if (n < 0 || (size_t)n >= sizeof(req)) {
    result(p, 0, "request too long");
    return;
  }
  if (mg_outq_append(&p->tp.out, req, (size_t)n) < 0 || mg_tp_flush(&p->tp) < 0) {
    result(p, 0, "cannot send the request");
    return;
  }
  mg_tp_read(&p->tp, 1);
}

static int expected(const mg_health_cfg_t *c, int status) {
  if (c->nexpect == 0) return status >= 200 && status <= 399;
  for (int k = 0; k < c->nexpect; k++)
    if (c->expect[k] == status) return 1;
  return 0;
}

/* The status line is complete (or the read limit was reached): 1 when that
 * gave the check's result, 0 for an interim 1xx (other than 101), whose header
 * block is skipped to the next status line (RFC 9110 15.2: a client must take
 * them before the final answer, e.g. 103 Early Hints). */
static int status_line(probe_t *p) {
  const char *l = p->line;
  if (p->got >= STATUS_READ_MAX || p->llen < 12 || memcmp(l, "HTTP/1.", 7) != 0 || l[8] != ' ' || l[9] < '1' ||
      l[9] > '5' || l[10] < '0' || l[10] > '9' || l[11] < '0' || l[11] > '9' ||
      (p->llen > 12 && l[12] != ' ' && l[12] != '\r')) {
    result(p, 0, "no HTTP status line");
    return 1;
  }
  int status = (l[9] - '0') * 100 + (l[10] - '0') * 10 + (l[11] - '0');
  if (status < 200 && status != 101) {
    p->skip = 1;
    p->col = 0;
    p->llen = 0;
    return 0;
  }
  char cause[32];
  snprintf(cause, sizeof(cause), "status %d", status);
  result(p, expected(&p->u->health, status), cause);
  return 1;
}

static int ev_data(void *owner, const char *d, size_t n) {
  probe_t *p = owner;
  if (!p->busy) return 1;
  for (size_t k = 0; k < n; k++, p->got++) {
    if (p->got >= STATUS_READ_MAX) {
      status_line(p);
      return 1;
    }
    if (p->skip) { /* a 1xx's header block ends at its empty line */
      if (d[k] == '\n') {
        if (p->col == 0) p->skip = 0;
        p->col = 0;
      } else if (d[k] != '\r') {
        p->col++;
      }
      continue;
    }
    if (d[k] == '\n') {
      if (status_line(p)) return 1;
      continue;
    }
    if (p->llen < sizeof(p->line)) p->line[p->llen++] = d[k];
  }
  return 0;
}

static void ev_read_end(void *owner) {}
static void ev_eof(void *owner) {
  probe_t *p = owner;
  if (p->busy) result(p, 0, "closed before a status line");
}
static void ev_error(void *owner, int err, const char *why) {
  probe_t *p = owner;
  char cause[160];
  snprintf(cause, sizeof(cause), "read failed: %s", why ? why : "error");
  if (p->busy) result(p, 0, cause);
}
static void ev_written(void *owner, int status) {
  probe_t *p = owner;
  if (status < 0 && p->busy) result(p, 0, "write failed");
}
static void start_check(probe_t *p);

static void ev_closed(void *owner) {
  probe_t *p = owner;
  mg_health_t *h = p->h;
  p->tp_open = 0;
  h->open--;
  /* the socket is free: the check that waited longest starts */
  if (!h->stopped && h->wait_head) {
    probe_t *q = h->wait_head;
    h->wait_head = q->wait_next;
    if (!h->wait_head) h->wait_tail = NULL;
    q->wait_next = NULL;
    start_check(q);
  }
  handle_closed(h);
}

static const mg_tp_events_t probe_events = {
  .ready = ev_ready, .data = ev_data, .read_end = ev_read_end, .eof = ev_eof, .error = ev_error,
  .written = ev_written, .closed = ev_closed,
};

/* ---- checks ---- */

static void on_timer(uv_timer_t *t);

static void start_check(probe_t *p) {
  mg_health_t *h = p->h;
  const mg_upstream_cfg_t *u = p->u;
  if (p->tp_open) { /* the last one's socket is still closing: soon */
    uv_timer_start(&p->timer, on_timer, 10, 0);
    return;
  }
  if (atomic_load_explicit(&mg_balance_peer(u->bal, p->i)->flags, memory_order_relaxed) & MG_PEER_REMOVED) {
    /* removed at run time: not probed while it stays removed */
    uv_timer_start(&p->timer, on_timer, jittered(u->health.interval_ms), 0);
    return;
  }
  if (h->open >= h->max_open) { /* its turn comes when a socket closes */
    if (!h->said_full) {
      h->said_full = 1;
      MG_WARN(-1, "health checks: %d in flight, the most (a quarter of the open-file limit): the next ones wait "
              "their turn", h->open);
    }
    if (h->wait_tail) h->wait_tail->wait_next = p;
    else h->wait_head = p;
    h->wait_tail = p;
    return;
  }
  h->open++;
  p->busy = 1;
  p->got = p->llen = p->col = 0;
  p->skip = 0;
  p->tp_open = 1;
  h->handles++;
  int rc = mg_tp_connect(&p->tp, &h->tp, &p->creq, (const struct sockaddr *)&mg_upstream_server(u, p->i)->addr,
                         &probe_events, p);
  if (rc < 0) {
    char cause[160];
    snprintf(cause, sizeof(cause), "connect %s", uv_strerror(rc));
    result(p, 0, cause);
    return;
  }
  if (u->proxy_protocol) { /* no client behind a check: v1 UNKNOWN, v2 LOCAL */
    char hdr[MG_PP_WRITE_MAX];
    size_t n = u->proxy_protocol == 2 ? mg_pp_write_v2(hdr, sizeof(hdr), NULL, NULL)
                                      : mg_pp_write_v1(hdr, sizeof(hdr), NULL, NULL);
    if (mg_outq_append(&p->tp.out, hdr, n) < 0 || mg_tp_flush(&p->tp) < 0) {
      result(p, 0, "cannot send the PROXY header");
      return;
    }
  }
  if (u->tls) {
    SSL *ssl = mg_tls_connect_new(u->tls, NULL, NULL);
    if (!ssl) {
      result(p, 0, "out of memory");
      return;
    }
    mg_tp_tls(&p->tp, ssl);
  }
  uv_timer_start(&p->timer, on_timer, u->health.timeout_ms, 0);
}

static void on_timer(uv_timer_t *t) {
  probe_t *p = t->data;
  if (p->h->stopped) return;
  if (p->busy) result(p, 0, "timed out");
  else start_check(p);
}

/* A check's result: the server's streaks, a change of state (logged once), and
 * the next check. */
static void result(probe_t *p, int ok, const char *cause) {
  const mg_health_cfg_t *c = &p->u->health;
  p->busy = 0;
  if (p->tp_open) mg_tp_close(&p->tp);
  if (ok) { /* (the streaks stop at rise / fall: all that is compared) */
    p->bads = 0;
    if (p->oks < c->rise) p->oks++;
  } else {
    p->oks = 0;
    if (p->bads < c->fall) p->bads++;
  }
  int change = (!p->up && ok && p->oks >= c->rise) || (p->up && !ok && p->bads >= c->fall);
  if (change) {
    p->up = ok;
    mg_peer_set_down(p->u->bal, p->i, !ok);
    MG_WARN(-1, "upstream %s: server %s %s (%s)", p->u->name, mg_upstream_server(p->u, p->i)->text,
            ok ? "down -> up" : "up -> down", cause);
  }
  if (!p->h->stopped) uv_timer_start(&p->timer, on_timer, jittered(c->interval_ms), 0);
}

/* Probes for u's ids from h->covered[k] on (servers added at run time too). A
 * server starts as its peer state says (a reload that adopted the balancer
 * carries the old checks' verdicts over). -1: out of memory. */
static int cover(mg_health_t *h, int k) {
  const mg_upstream_cfg_t *u = &h->gen->upstreams[k];
  int n = mg_upstream_nservers(u);
  for (int i = h->covered[k]; i < n; i++) {
    if (h->nprobes == h->cap) {
      int cap = h->cap ? h->cap * 2 : 16;
      probe_t **np = realloc(h->probes, (size_t)cap * sizeof(*np));
      if (!np) return -1;
      h->probes = np;
      h->cap = cap;
    }
    probe_t *p = calloc(1, sizeof(*p));
    if (!p) return -1;
    h->probes[h->nprobes++] = p;
    h->covered[k] = i + 1;
    p->h = h;
    p->u = u;
    p->i = i;
    p->up = !(atomic_load_explicit(&mg_balance_peer(u->bal, i)->flags, memory_order_relaxed) & MG_PEER_DOWN);
    uv_timer_init(h->loop, &p->timer);
    p->timer.data = p;
    h->handles++;
    /* the first check at a random point of the first interval */
    uint64_t iv = u->health.interval_ms;
    uv_timer_start(&p->timer, on_timer, iv ? next_rand() % iv : 0, 0);
  }
  return 0;
}

static int checked(const mg_upstream_cfg_t *u) { return u->health.type != MG_HEALTH_NONE && u->bal; }

static void on_sync(uv_timer_t *t) {
  mg_health_t *h = t->data;
  if (h->stopped) return;
  for (int k = 0; k < h->gen->nupstreams; k++)
    if (checked(&h->gen->upstreams[k]) && cover(h, k) < 0) {
      MG_ERR(-1, "health checks: out of memory: upstream %s: servers added are not checked",
             h->gen->upstreams[k].name);
      return;
    }
}

mg_health_t *mg_health_start(uv_loop_t *loop, mg_gen_t *g) {
  int any = 0;
  for (int k = 0; k < g->nupstreams; k++) any |= checked(&g->upstreams[k]);
  if (!any) return NULL;
  mg_health_t *h = calloc(1, sizeof(*h));
  int *covered = calloc((size_t)g->nupstreams, sizeof(int));
  if (!h || !covered) {
    free(h);
    free(covered);
    MG_ERR(-1, "health checks: out of memory: not started");
    return NULL;
  }
  mg_gen_ref(g);
  h->loop = loop;
  h->gen = g;
  h->covered = covered;
  /* sockets held by checks at once: a quarter of the open-file limit, so that
   * servers that never answer cannot take the workers' descriptors */
  struct rlimit rl;
  rlim_t lim = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? rl.rlim_cur / 4 : 4096;
  h->max_open = lim < 16 ? 16 : lim > 4096 ? 4096 : (int)lim;
  h->tp = (mg_tp_ctx_t){ .loop = loop, .rbuf = rbuf, .rcap = sizeof(rbuf), .tbuf = tbuf, .tcap = sizeof(tbuf),
                         .net = NULL, .pipe = { -1, -1 } };
  uv_timer_init(loop, &h->sync);
  h->sync.data = h;
  h->handles++;
  uv_timer_start(&h->sync, on_sync, 1000, 1000);
  on_sync(&h->sync);
  return h;
}

void mg_health_stop(mg_health_t *h) {
  if (!h) return;
  h->stopped = 1;
  uv_timer_stop(&h->sync);
  uv_close((uv_handle_t *)&h->sync, on_sync_closed);
  for (int j = 0; j < h->nprobes; j++) {
    probe_t *p = h->probes[j];
    p->busy = 0;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
    if (p->tp_open) mg_tp_close(&p->tp);
  }
}
