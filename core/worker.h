/* A worker: one thread, one uv loop, its own SO_REUSEPORT listeners, downstream
 * connections and upstream pools. Nothing here is touched by another thread except
 * `cmd` (atomic) and the async handle that announces it. */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include "wctx.h"


/* Creates worker `id` for `gen` with the given already-listening fds (one per
 * listener of gen, owned by the worker from now on): loads proxy.lua into the
 * worker's Lua state and runs its init_worker hooks (err says why when that
 * fails), but does not start it: mg_worker_run does, once every worker is made.
 * An fd of -1 makes a listener without a socket (the fuzz target's in-memory
 * network feeds it: mg_conn_accept with w->tp.net set). */
int mg_worker_make(mg_worker_t *w, int id, mg_gen_t *gen, int *fds, void (*exited)(void), char *err,
                   size_t errlen);
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


#endif
