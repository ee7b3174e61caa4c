/* A worker's context: what every part running on a worker thread shares (its loop,
 * timers, read buffers, current config and Lua generation, pools, spares, the access
 * log buffer). worker.c owns and sets it up; the parts below it (connections,
 * exchanges, upstreams, Lua) read it and call back up only through the function
 * pointers it holds. Nothing here is touched by another thread except `cmd`
 * (atomic) and the async handle that announces it, the `wake` handle, and the
 * hook watchdog fields. */
#ifndef MG_WCTX_H
#define MG_WCTX_H

#include <stdatomic.h>
#include <uv.h>

#include "alog.h"
#include "config.h"
#include "http.h"
#include "mg.h"
#include "timer.h"
#include "transport.h"

typedef struct {
  uv_tcp_t tcp;
  mg_worker_t *w;
  const mg_listen_cfg_t *cfg;
  const char *name; /* cfg->name interned in the worker: connections outlive configs */
  const char *hsts; /* cfg->hsts interned the same way; NULL: off */
} mg_listener_t;

enum { MG_CMD_NONE, MG_CMD_DRAIN, MG_CMD_STOP };
/* mg.tcp's connections end in stages (socks_end): the worker drains (idle pools
 * close), its loop ends (every connection closes), it exited (memory goes). */
enum { MG_SOCKS_DRAIN, MG_SOCKS_CLOSE, MG_SOCKS_FREE };

struct mg_worker_s {
  int id;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_async_t async;     /* main thread -> worker: look at `cmd` */
  /* any thread -> worker: a part posts its own shared state, then wakes the
   * worker (uv_async_send(&wake), thread-safe); `woken` (set by that part, may
   * be NULL) runs on the worker and looks. Closed when the worker finishes: a
   * part must stop waking it before (proxy.c: the cache's collapsed requests,
   * whose nodes leave the fetch's list when their connections close). */
  uv_async_t wake;
  void (*woken)(mg_worker_t *w);
  struct mg_req_s *cache_waits; /* requests waiting for a fetch of their key (proxy.c) */
  uv_prepare_t prepare; /* flushes the access log before the loop blocks */
  uv_timer_t drain_timer;
  uv_timer_t pool_timer; /* closes surplus idle upstream connections (upstream.h) */
  mg_timers_t timers;    /* the client and upstream connections' timers */
  mg_tp_ctx_t tp;        /* what its transports share: loop, read buffers (below), the
                            in-memory network of a fuzz target (NULL: sockets) */
  atomic_int cmd;
  int draining;

  mg_gen_t *gen;        /* current config (= wg->gen) */
  struct mg_wgen_s *wg; /* current generation: Lua state, balancer state; requests hold refs */
  struct mg_wgen_s *lua_wg; /* the generation whose Lua runs at this moment (mg.timer.*) */
  struct mg_lrun_s *lua_runs; /* timer callbacks running or waiting, of any generation (luavm.c) */
  struct mg_lreq_s *lua_run;  /* the Lua run of this moment that may wait (luavm.c), or NULL */
  struct mg_req_s *log_waits; /* requests whose log hook waits after their connection went on (proxy.c) */
  uint64_t nlog_waits;        /* how many (bounded by limits.connections) */
  uint64_t log_waits_warned;  /* loop time (ms) of the last "too many log hooks" line */
  struct mg_dns_s *dns;       /* the resolver's cache (resolve.c) */
  struct mg_cosock_w_s *cosock; /* mg.tcp's connections, idle pools, TLS contexts (cosock.c) */
  void (*socks_end)(mg_worker_t *w, int stage); /* set by cosock.c with `cosock`: MG_SOCKS_* */
  struct mg_lhttp_s *lhttp;   /* mg.http: open calls, TLS client contexts (lhttp.c) */
  void (*lhttp_free)(mg_worker_t *w); /* set by lhttp.c with lhttp: called at worker exit */

  mg_listener_t **listeners; /* one per listener of the current gen (handles don't move) */
  int nlisteners;
  struct mg_reload_s *reload; /* handed over by the main thread, under reload_lock */
  uv_mutex_t reload_lock;
  _Atomic uint64_t hook_since; /* loop time (ms, uv_now) + 1 when the running hook started; 0: none */
  atomic_int hook_hook;        /* which hook (MG_HOOK_*) */
  void *hook_req;              /* the request whose hook runs now: the only one the API serves */

  mg_conn_t *conns;     /* every open downstream connection (intrusive list) */
  int nconns;
  int nrefused;         /* of those, the ones refused at accept (limits): they only
                           get a 503 and are not counted against limits.connections */
  uint64_t refused_logged; /* loop time (ms) of the last "connection refused" line */
  uint64_t refused_quiet;  /* refusals since then, not logged one by one */
  mg_pool_t *pools;     /* upstream keep-alive pools, one per server address */
  mg_pool_t **pool_tab; /* the same, hashed by (address, TLS id): pool_cap chains */
  uint32_t pool_cap, npools;
  mg_req_t *spare_reqs; /* finished requests kept for reuse (proxy.c) */
  void *spare_parsers[16]; /* request codecs (mg_h1_t) of idle connections, kept for reuse (conn.c) */
  int nspare_parsers;
  int nspare_reqs;

  mg_http_date_t date;  /* the Date header line, formatted once a second */
  uint64_t seq;         /* request counter (request ids) */
  uint64_t id_seed;
  uint64_t rng;         /* the balancers' random state for this worker (balance.h) */

  char **names;         /* listener names seen (mg_listener_t.name), freed at exit */
  int nnames;

  mg_alog_t alog;       /* access log lines not yet written */
  void (*conn_closed)(mg_worker_t *w); /* set by worker.c: a connection ended (drain) */
  void (*exited)(void);                /* set by main.c: the worker's thread ends */

  char rbuf[MG_READ_BUF]; /* every read of this worker lands here; see mg.h */
  char tbuf[16 * 1024];   /* decrypted TLS records, one at a time */
};

/* The worker running on this thread (NULL on the main thread): for the FFI API
 * (set by worker.c). */
extern _Thread_local mg_worker_t *mg_current_worker;

#endif
