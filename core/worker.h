/* A worker: one thread, one uv loop, its own SO_REUSEPORT listeners, downstream
 * connections and upstream pools. Nothing here is touched by another thread except
 * `cmd` (atomic) and the async handle that announces it. */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include <stdatomic.h>
#include <uv.h>

#include "config.h"
#include "http.h"
#include "mg.h"
#include "timer.h"


typedef struct {
  uv_tcp_t tcp;
  mg_worker_t *w;
  const mg_listen_cfg_t *cfg;
  const char *name; /* cfg->name interned in the worker: connections outlive configs */
  const char *hsts; /* cfg->hsts interned the same way; NULL: off */
} mg_listener_t;

enum { MG_CMD_NONE, MG_CMD_DRAIN, MG_CMD_STOP };

struct mg_worker_s {
  int id;
  uv_thread_t thread;
  uv_loop_t loop;
  uv_async_t async;     /* main thread -> worker: look at `cmd` */
  uv_prepare_t prepare; /* flushes the access log before the loop blocks */
  uv_timer_t drain_timer;
  uv_timer_t pool_timer; /* closes surplus idle upstream connections (upstream.h) */
  mg_timers_t timers;    /* the downstream connections' timers */
  atomic_int cmd;
  int draining;

  mg_gen_t *gen;        /* current config (= wg->gen) */
  struct mg_wgen_s *wg; /* current generation: Lua state, balancer state; requests hold refs */

  mg_listener_t **listeners; /* one per listener of the current gen (handles don't move) */
  int nlisteners;
  struct mg_reload_s *reload; /* handed over by the main thread, under reload_lock */
  uv_mutex_t reload_lock;
  _Atomic uint64_t hook_since; /* loop time (ms, uv_now) + 1 when the running hook started; 0: none */
  atomic_int hook_hook;        /* which hook (MG_HOOK_*) */
  mg_req_t *hook_req;          /* the request whose hook runs now: the only one the API serves */

  mg_conn_t *conns;     /* every open downstream connection (intrusive list) */
  int nconns;
  int nrefused;         /* of those, the ones refused at accept (limits): they only
                           get a 503 and are not counted against limits.connections */
  uint64_t refused_logged; /* loop time (ms) of the last "connection refused" line */
  uint64_t refused_quiet;  /* refusals since then, not logged one by one */
  mg_pool_t *pools;     /* upstream keep-alive pools, one per server address */
  mg_req_t *spare_reqs; /* finished requests kept for reuse (proxy.c) */
  void *spare_parsers[16]; /* llhttp_t of idle connections, kept for reuse (conn.c) */
  int nspare_parsers;
  int nspare_reqs;

  mg_http_date_t date;  /* the Date header line, formatted once a second */
  uint64_t seq;         /* request counter (request ids) */
  uint64_t id_seed;

  char **names;         /* listener names seen (mg_listener_t.name), freed at exit */
  int nnames;

  char *alog;           /* access log lines not yet written */
  size_t alog_len, alog_cap;

  char rbuf[MG_READ_BUF]; /* every read of this worker lands here; see mg.h */
  char tbuf[16 * 1024];   /* decrypted TLS records, one at a time */
};

/* Creates worker `id` for `gen` with the given already-listening fds (one per
 * listener of gen, owned by the worker from now on): loads proxy.lua into the
 * worker's Lua state and runs its init_worker hooks (err says why when that
 * fails), but does not start it: mg_worker_run does, once every worker is made. */
int mg_worker_make(mg_worker_t *w, int id, mg_gen_t *gen, int *fds, char *err, size_t errlen);
/* Starts a made worker's thread: from now on it accepts and serves. */
int mg_worker_run(mg_worker_t *w);
/* TCP_DEFER_ACCEPT on a listening socket (on: the kernel hands a connection over
 * once its first bytes are in, so a new connection wakes the worker once, not
 * twice; a client that sends nothing is handed over after about a second). */
int mg_listen_defer(int fd, int on);
/* A new generation for a worker: its Lua state (built by the main thread) and, per
 * listener of the new gen, a listening fd to adopt or -1 to keep the worker's
 * listener of the same address. Owned by the worker once handed over. */
typedef struct mg_reload_s {
  struct mg_wgen_s *wg;
  int *fds;
} mg_reload_t;

/* Hands a reload to the worker (any thread). */
void mg_worker_reload(mg_worker_t *w, mg_reload_t *rl);

/* Asks the worker to drain (MG_CMD_DRAIN) or stop now (MG_CMD_STOP). Any thread. */
void mg_worker_command(mg_worker_t *w, int cmd);
void mg_worker_join(mg_worker_t *w);

/* Called by conn.c when a connection closes (for drain accounting). */
void mg_worker_conn_closed(mg_worker_t *w);
/* Appends one access-log line (with its newline). */
void mg_worker_access_log(mg_worker_t *w, const char *line, size_t len);
/* Picks a server of upstream `u` by smooth weighted round robin, skipping the
 * servers whose bit is set in `skip`. -1 when all are skipped. */
int mg_worker_pick_server(struct mg_wgen_s *wg, int u, uint64_t skip);

/* The worker running on this thread (NULL on the main thread): for the FFI API. */
extern _Thread_local mg_worker_t *mg_current_worker;

#endif
