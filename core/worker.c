#include "worker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "luavm.h"
#include "resolve.h"
#include "proxy.h"
#include "upstream.h"

/* Runs before the loop blocks: lines of a burst go out in one write. */
static void on_prepare(uv_prepare_t *p) { mg_alog_flush(&((mg_worker_t *)p->data)->alog); }

_Thread_local mg_worker_t *mg_current_worker;

/* ---------------- lifecycle ---------------- */

static void on_connection(uv_stream_t *server, int status) {
  mg_listener_t *l = server->data;
  if (status < 0) {
    MG_WARN(l->w->id, "accept on %s: %s", l->cfg->text, uv_strerror(status));
    return;
  }
  mg_conn_accept(l);
}

static void finish(mg_worker_t *w) {
  mg_upstream_close_pools(w);
  if (w->socks_end) w->socks_end(w, MG_SOCKS_CLOSE); /* a timer callback's too: the loop ends */
  if (!uv_is_closing((uv_handle_t *)&w->async)) uv_close((uv_handle_t *)&w->async, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->wake)) uv_close((uv_handle_t *)&w->wake, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->prepare)) uv_close((uv_handle_t *)&w->prepare, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->drain_timer)) uv_close((uv_handle_t *)&w->drain_timer, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->pool_timer)) uv_close((uv_handle_t *)&w->pool_timer, NULL);
  mg_timers_close(&w->timers);
}

static void free_listener(uv_handle_t *h) { free(h->data); }

static void close_listener(mg_listener_t *l) {
  if (!uv_is_closing((uv_handle_t *)&l->tcp)) uv_close((uv_handle_t *)&l->tcp, free_listener);
}

static void close_listeners(mg_worker_t *w) {
  for (int i = 0; i < w->nlisteners; i++)
    if (w->listeners[i]) close_listener(w->listeners[i]);
}

/* Opens a listener on an fd the main thread bound. */
/* The worker's copy of a listener name (or HSTS header line), shared by every
 * connection accepted under it and kept until the worker exits (names are few;
 * configs come and go). NULL for an unnamed listener, or when out of memory (the
 * connection is then routed as unnamed, or answers without HSTS). */
static const char *intern(mg_worker_t *w, const char *name) {
  if (!name) return NULL;
  for (int i = 0; i < w->nnames; i++)
    if (strcmp(w->names[i], name) == 0) return w->names[i];
  char **more = realloc(w->names, sizeof(*more) * (size_t)(w->nnames + 1));
  if (!more) return NULL;
  w->names = more;
  char *copy = strdup(name);
  if (!copy) return NULL;
  w->names[w->nnames++] = copy;
  return copy;
}

static mg_listener_t *open_listener(mg_worker_t *w, const mg_listen_cfg_t *cfg, int fd) {
  mg_listener_t *l = calloc(1, sizeof(*l));
  if (!l) return NULL;
  l->w = w;
  l->cfg = cfg;
  l->name = intern(w, cfg->name);
  l->hsts = intern(w, cfg->hsts);
  uv_tcp_init(&w->loop, &l->tcp);
  l->tcp.data = l;
  if (fd < 0) return l; /* no socket: connections come from an in-memory network (transport.h) */
  if (uv_tcp_open(&l->tcp, fd) < 0 || uv_listen((uv_stream_t *)&l->tcp, 511, on_connection) < 0) {
    MG_ERR(w->id, "cannot listen on %s", cfg->text);
    close_listener(l);
    return NULL;
  }
  return l;
}

static void free_reload(mg_reload_t *rl) {
  if (!rl) return;
  for (int i = 0; rl->fds && rl->wg && i < rl->wg->gen->nlisteners; i++)
    if (rl->fds[i] >= 0) close(rl->fds[i]); /* sockets never adopted */
  if (rl->wg) mg_wgen_unref(rl->wg);
  free(rl->fds);
  free(rl);
}

/* Switches to the new generation: new requests use it, in-flight ones keep the
 * one they hold. Listeners whose address stays are kept as they are (their
 * connections are not touched); new addresses open, removed ones close. */
static void apply_reload(mg_worker_t *w, mg_reload_t *rl) {
  mg_gen_t *ng = rl->wg->gen;
  mg_listener_t **nl = calloc((size_t)ng->nlisteners + 1, sizeof(*nl));
  if (!nl) {
    free_reload(rl);
    return;
  }
  for (int i = 0; i < ng->nlisteners; i++) {
    if (rl->fds[i] >= 0) {
      /* made for this reload, or for an earlier one it replaced before this
       * worker took it (then with that config's setting): set it again */
      if (mg_listen_defer(rl->fds[i], ng->listeners[i].deferred) < 0)
        MG_WARN(w->id, "%s: TCP_DEFER_ACCEPT: %s", ng->listeners[i].text, strerror(errno));
      nl[i] = open_listener(w, &ng->listeners[i], rl->fds[i]);
      rl->fds[i] = -1; /* adopted (or closed by open_listener's failure path) */
      continue;
    }
    for (int j = 0; j < w->nlisteners; j++) {
      mg_listener_t *l = w->listeners[j];
      if (l && strcmp(l->cfg->text, ng->listeners[i].text) == 0) {
        uv_os_fd_t fd;
        if (l->cfg->deferred != ng->listeners[i].deferred && uv_fileno((uv_handle_t *)&l->tcp, &fd) == 0 &&
            mg_listen_defer(fd, ng->listeners[i].deferred) < 0)
          MG_WARN(w->id, "%s: TCP_DEFER_ACCEPT: %s", ng->listeners[i].text, strerror(errno));
        l->cfg = &ng->listeners[i];
        l->name = intern(w, l->cfg->name);
        l->hsts = intern(w, l->cfg->hsts);
        nl[i] = l;
        w->listeners[j] = NULL;
        break;
      }
    }
  }
  close_listeners(w); /* the ones not carried over */
  free(w->listeners);
  w->listeners = nl;
  w->nlisteners = ng->nlisteners;
  mg_wgen_t *old = w->wg;
  w->wg = rl->wg;
  w->gen = ng;
  rl->wg = NULL;
  free_reload(rl);
  mg_lua_timers_stop(old, 0); /* its timers stop; callbacks running finish on it */
  mg_lua_timers_live(w->wg);
  mg_wgen_unref(old);
  MG_INFO(w->id, "config reloaded");
}

void mg_worker_reload(mg_worker_t *w, mg_reload_t *rl) {
  uv_mutex_lock(&w->reload_lock);
  mg_reload_t *old = w->reload;
  if (old) {
    /* superseded before the worker took it: the main thread counted the old
     * reload's new addresses as open already, so their sockets move over */
    const mg_gen_t *og = old->wg->gen, *ng = rl->wg->gen;
    for (int i = 0; i < ng->nlisteners; i++) {
      if (rl->fds[i] >= 0) continue;
      for (int j = 0; j < og->nlisteners; j++)
        if (old->fds[j] >= 0 && strcmp(og->listeners[j].text, ng->listeners[i].text) == 0) {
          rl->fds[i] = old->fds[j];
          old->fds[j] = -1;
        }
    }
  }
  w->reload = rl;
  uv_mutex_unlock(&w->reload_lock);
  free_reload(old);
  uv_async_send(&w->async);
}

static mg_reload_t *take_reload(mg_worker_t *w) {
  uv_mutex_lock(&w->reload_lock);
  mg_reload_t *rl = w->reload;
  w->reload = NULL;
  uv_mutex_unlock(&w->reload_lock);
  return rl;
}

static void close_all(mg_worker_t *w) {
  mg_conn_t *c = w->conns;
  while (c) {
    mg_conn_t *next = c->next;
    mg_conn_close(c);
    c = next;
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  mg_worker_t *w = t->data;
  MG_WARN(w->id, "drain timeout: closing %d connection(s)", w->nconns);
  close_all(w);
}

static void conn_closed(mg_worker_t *w) {
  w->nconns--;
  if (w->draining && w->nconns == 0) finish(w);
}

static void on_async(uv_async_t *a) {
  mg_worker_t *w = a->data;
  mg_reload_t *rl = take_reload(w);
  if (rl) {
    if (w->draining) free_reload(rl);
    else apply_reload(w, rl);
  }
  int cmd = atomic_load(&w->cmd);
  if (cmd == MG_CMD_DRAIN && !w->draining) {
    w->draining = 1;
    close_listeners(w);
    mg_upstream_close_pools(w);
    if (w->socks_end) w->socks_end(w, MG_SOCKS_DRAIN);
    mg_conn_t *c = w->conns;
    while (c) {
      mg_conn_t *next = c->next;
      mg_conn_drain(c);
      c = next;
    }
    if (w->nconns == 0) finish(w);
    else uv_timer_start(&w->drain_timer, on_drain_timeout, w->gen->timeouts.drain, 0);
  } else if (cmd == MG_CMD_STOP) {
    w->draining = 1;
    close_listeners(w);
    close_all(w);
    if (w->nconns == 0) finish(w);
  }
}

static void on_wake(uv_async_t *a) {
  mg_worker_t *w = a->data;
  if (w->woken) w->woken(w);
}

static void run(void *arg) {
  mg_worker_t *w = arg;
  mg_current_worker = w;
  mg_lua_timers_live(w->wg); /* the timers init_worker asked for */
  uv_run(&w->loop, UV_RUN_DEFAULT);
  mg_proxy_drop_logs(w);
  mg_lua_timers_stop(w->wg, 1);
  if (w->lhttp_free) w->lhttp_free(w); /* mg.http's state (lhttp.c) */
  mg_resolve_free(w);
  if (w->socks_end) w->socks_end(w, MG_SOCKS_FREE);
  mg_alog_flush(&w->alog);
  mg_outq_free_spares();
  mg_tp_ctx_close(&w->tp);
  while (w->spare_reqs) {
    mg_req_t *r = w->spare_reqs;
    w->spare_reqs = r->next_spare;
    mg_req_dispose(r);
  }
  w->nspare_reqs = 0;
  while (w->nspare_parsers > 0) free(w->spare_parsers[--w->nspare_parsers]);
  /* the loop ends when finish() closed the last referenced handle */
  if (w->exited) w->exited();
}

int mg_worker_make(mg_worker_t *w, int id, mg_gen_t *gen, int *fds, void (*exited)(void), char *err,
                   size_t errlen) {
  int rc;
  w->id = id;
  w->exited = exited;
  w->conn_closed = conn_closed;
  atomic_init(&w->cmd, MG_CMD_NONE);
  uint64_t seed = 0;
  uv_random(NULL, NULL, &seed, sizeof(seed), 0, NULL);
  w->id_seed = seed;
  w->rng = seed ^ ((uint64_t)(id + 1) * 0x9e3779b97f4a7c15ull);
  /* the loop first: init_worker hooks may read its clock (mg.now) */
  if ((rc = uv_loop_init(&w->loop)) < 0) return rc;
  w->tp = (mg_tp_ctx_t){ .loop = &w->loop, .rbuf = w->rbuf, .rcap = sizeof(w->rbuf), .tbuf = w->tbuf,
                         .tcap = sizeof(w->tbuf), .net = NULL, .pipe = { -1, -1 } };
  /* proxy.lua runs in the worker's own state; init_worker hooks run here, with
   * the worker's identity, before its thread starts */
  mg_current_worker = w;
  w->wg = mg_wgen_new(w, gen, err, errlen);
  mg_current_worker = NULL;
  if (!w->wg) return MG_ECONFIG;
  w->gen = gen;

  int arc = mg_alog_init(&w->alog);
  w->nlisteners = gen->nlisteners;
  w->listeners = calloc((size_t)gen->nlisteners + 1, sizeof(*w->listeners));
  if (arc < 0 || !w->listeners) return UV_ENOMEM;

  uv_async_init(&w->loop, &w->async, on_async);
  w->async.data = w;
  uv_async_init(&w->loop, &w->wake, on_wake);
  w->wake.data = w;
  uv_prepare_init(&w->loop, &w->prepare);
  w->prepare.data = w;
  uv_prepare_start(&w->prepare, on_prepare);
  uv_unref((uv_handle_t *)&w->prepare);
  uv_timer_init(&w->loop, &w->drain_timer);
  w->drain_timer.data = w;
  uv_unref((uv_handle_t *)&w->drain_timer);
  uv_timer_init(&w->loop, &w->pool_timer);
  w->pool_timer.data = w;
  uv_unref((uv_handle_t *)&w->pool_timer);
  mg_timers_init(&w->timers, &w->loop);
  w->reload = NULL;
  uv_mutex_init(&w->reload_lock);
  for (int i = 0; i < gen->nlisteners; i++) {
    w->listeners[i] = open_listener(w, &gen->listeners[i], fds[i]);
    if (!w->listeners[i]) return UV_EADDRINUSE;
  }
  return 0;
}

int mg_worker_run(mg_worker_t *w) { return uv_thread_create(&w->thread, run, w); }

int mg_listen_defer(int fd, int on) {
  int secs = on ? 1 : 0;
  return setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &secs, sizeof(secs));
}

void mg_worker_command(mg_worker_t *w, int cmd) {
  atomic_store(&w->cmd, cmd);
  uv_async_send(&w->async);
}

void mg_worker_join(mg_worker_t *w) {
  uv_thread_join(&w->thread);
  uv_loop_close(&w->loop);
  mg_upstream_free_pools(w);
  mg_alog_free(&w->alog);
  free(w->listeners);
  for (int i = 0; i < w->nnames; i++) free(w->names[i]);
  free(w->names);
  free_reload(take_reload(w));
  uv_mutex_destroy(&w->reload_lock);
  mg_wgen_unref(w->wg);
}
