/* Lua in the workers: one lua_State per worker per config generation (a "wgen"),
 * loaded from the same proxy.lua, holding the user's hooks. C enters Lua only
 * through the entry point registered by lua/moongate/private/runtime.lua, with
 * lua_resume on a per-request coroutine, so that a hook error never unwinds C. */
#ifndef MG_LUAVM_H
#define MG_LUAVM_H

#include <lua.h>

#include "config.h"
#include "mg_hooks.h"
#include "mg.h"
#include "timer.h"

typedef struct mg_wgen_s {
  mg_gen_t *gen;
  mg_worker_t *w;
  lua_State *L;
  int entry_ref;     /* runtime.dispatch */
  int connect_ref;   /* runtime.connect */
  int hello_ref;     /* runtime.tls_hello */
  int refs;          /* requests using it, +1 while it is the worker's current one */
  int *co_free;      /* pooled coroutine refs */
  int nco_free, co_cap;
  int gen_ref;       /* holds a reference on gen */
  int timers_live_ref, timer_fire_ref, timer_dropped_ref; /* runtime.timers_live, .timer_fire, .timer_dropped */
  struct mg_ltimer_s *timers; /* mg.timer.* armed, waiting to fire */
  int retired;       /* no longer the worker's: no timer is armed for it any more */
  int init_ref;      /* init_worker waited: its coroutine, resumed on the worker (LUA_NOREF: none) */
  struct mg_lreq_s *spare_run; /* a connect/tls_hello run kept for the next connection */
} mg_wgen_t;

/* Timer callbacks run as this pseudo-hook: they may wait. */
#define MG_HOOK_TIMER MG_HOOK_MAX

/* A request's Lua side, embedded in the exchange's request (proxy.h): its
 * coroutine, the last chunk a body hook returned, and the hook running now. The
 * exchange fills in wg, seq, route, id and owner when the request begins; the
 * rest is luavm's. */
/* What mg_lua_hook gives besides 0 and -1, and what `waited` may say. */
enum {
  MG_LUA_WAIT = 1,     /* the hook waits (mg.sleep): `waited` tells when it is over */
  MG_LUA_TIMEOUT = -2, /* (waited) timeouts.hook ran out while it waited: it was dropped */
};

/* An I/O operation a hook waits on (a socket's connect or read, an HTTP call),
 * embedded in its owner. The owner sets `cancel`: luavm calls it when the
 * waiting hook goes away (its request ended, timeouts.hook), and from then on
 * the operation must not wake the hook. */
typedef struct mg_lwait_s mg_lwait_t;
struct mg_lwait_s {
  void (*cancel)(mg_lwait_t *op);
};

/* Something a run owns that must end with it (a socket from mg.tcp, an HTTP call
 * from mg.http): linked into the run by its owner (mg_lua_res_add), and `done` is
 * called when the run ends (mg_lua_req_done, after the wait's cancel) unless the
 * owner unlinked it first (mg_lua_res_remove, which needs no run: safe on a res
 * in no list). */
typedef struct mg_lres_s mg_lres_t;
struct mg_lres_s {
  mg_lres_t *next, **prevp; /* prevp NULL: in no list */
  void (*done)(mg_lres_t *res);
};

typedef struct mg_lreq_s {
  mg_wgen_t *wg;
  lua_State *co;
  int co_ref, chunk_ref; /* LUA_NOREF when none */
  uint64_t seq;          /* per-worker request number (Lua resets its objects on change) */
  int route;             /* 1-based index of the matched route, 0: none */
  int phase;             /* the MG_HOOK_* running now, -1 outside hooks */
  const char *id;        /* the request id, for log lines */
  void *owner;           /* the request: handed to Lua, and what the FFI API serves */
  /* A hook that waits: its coroutine is suspended, the phase it runs in is
   * `wait_hook`; wait_timer ends the wait (mg.sleep), budget ends the hook
   * (timeouts.hook). `waited` (set by the exchange) hears that the wait is over
   * (0: resume it with mg_lua_resume) or that the hook was dropped
   * (MG_LUA_TIMEOUT). Never called for a wait that is cancelled. */
  int waiting, wait_hook;
  mg_timer_t wait_timer, budget;
  void (*waited)(void *owner, int rc);
  uint64_t budget_ms;    /* timeouts.hook for this run (the route's, else the global one); 0: the global */
  mg_lwait_t *io;        /* the I/O operation the hook waits on (mg_lua_wait_io), NULL when none */
  mg_lres_t *res;        /* what ends with the run (mg_lua_res_add); NULL when none */
} mg_lreq_t;

/* Builds the worker's view of gen: loads proxy.lua into a new state and runs the
 * init_worker hooks. NULL and a message in err on failure. Runs on the main
 * thread (at start and on reload, so a failure can stop either cleanly); the
 * state is used only by the worker once handed over. */
mg_wgen_t *mg_wgen_new(mg_worker_t *w, mg_gen_t *gen, char *err, size_t errlen);
void mg_wgen_ref(mg_wgen_t *g);
void mg_wgen_unref(mg_wgen_t *g);

/* Runs hook `hook` for r (the route's and the global ones). Returns 0, or -1 when
 * the hook failed (logged with its traceback; the caller answers 500), or, for
 * the hooks that may wait (mg_lua_may_wait), MG_LUA_WAIT: r->waited follows.
 * `chunk` is for the body hook: in, the chunk; out, the replacement if the hook
 * gave one (valid until the next call). */
int mg_lua_hook(mg_lreq_t *r, int hook, mg_str_t *chunk);
/* Every hook may wait (mg.sleep, I/O) but the request_body filter (its chain
 * does not hold a piece yet). */
static inline int mg_lua_may_wait(int hook) { return hook != MG_HOOK_REQUEST_BODY; }
/* Resumes a hook whose wait is over (`waited` said 0): 0 when it is done, -1
 * when it failed (logged), MG_LUA_WAIT when it waits again. */
int mg_lua_resume(mg_lreq_t *r);
/* The same for a body hook: *chunk is what it gave (chunk->p NULL: nothing). */
int mg_lua_resume_chunk(mg_lreq_t *r, mg_str_t *chunk);
/* A waiting hook is dropped (its client went away): no `waited` call. */
void mg_lua_cancel(mg_lreq_t *r);
/* I/O from Lua (sockets, the HTTP client). The Lua run of this moment on w: a
 * request's hook or a timer callback (NULL outside them: a pcall'd hook, or no
 * Lua running). */
mg_lreq_t *mg_lua_running(mg_worker_t *w);
/* The running hook is to wait for `op`: the FFI call that started it returns
 * MG_API_EAGAIN, and its Lua wrapper yields (runtime.wait "io"). 0, or -1 when
 * it cannot (nothing that may wait runs, or it already waits on something). */
int mg_lua_wait_io(mg_lreq_t *r, mg_lwait_t *op);
/* `op` completed (or failed): the hook it waits on resumes on the next loop turn
 * (never from inside the caller's callback), and its wrapper asks again. */
void mg_lua_wake(mg_lreq_t *r, mg_lwait_t *op);

/* The request ends: releases its coroutine and Lua object (cancels a wait), and
 * ends what it owned (mg_lres_t: each `done` runs once, after the cancel). */
void mg_lua_req_done(mg_lreq_t *r);
/* res ends with r (its `done` runs in mg_lua_req_done), or no longer does. */
void mg_lua_res_add(mg_lreq_t *r, mg_lres_t *res);
void mg_lua_res_remove(mg_lres_t *res);
/* mg.timer.*: arms timer `id` of g's Lua state to fire after secs (the worker
 * thread only). 0, or -1 (g retired, or out of memory). */
int mg_lua_timer_arm(mg_wgen_t *g, int id, double secs);
/* mg.timer handle:cancel(): timer `id` of g, if still armed, is dropped now (its
 * memory too, not when it would have fired). */
void mg_lua_timer_cancel(mg_wgen_t *g, int id);
/* The worker runs g from now on: the timers its init_worker hooks asked for are
 * armed (runtime.timers_live). Worker thread. */
void mg_lua_timers_live(mg_wgen_t *g);
/* g retires (a reload replaced it, or the worker ends): its armed timers are
 * dropped and no more are armed; with drop_runs, the callbacks still waiting
 * too, those of every generation (the worker ends), else they finish on g. */
void mg_lua_timers_stop(mg_wgen_t *g, int drop_runs);
/* connect and tls_hello hooks run as runs of their own, made for a connection
 * (id: for log lines, owner and waited: as a request's) from a spare kept per
 * generation (no allocation unless a hook waits); NULL when out of memory.
 * mg_lua_conn_run_done ends one (cancels a wait). */
mg_lreq_t *mg_lua_conn_run(mg_wgen_t *g, const char *id, void *owner, void (*waited)(void *, int));
void mg_lua_conn_run_done(mg_lreq_t *r);
/* The connect hook: 0 to keep the connection, -1 to close it, MG_LUA_WAIT: it
 * waits (r->waited follows; then mg_lua_connect_resume, same answers). */
int mg_lua_connect(mg_lreq_t *r, mg_str_t client_ip, const char *listener);
int mg_lua_connect_resume(mg_lreq_t *r);
/* Runs the tls_hello hooks: the index of the certificate to use, -1 to let SNI
 * decide, -2 to refuse the handshake (also when a hook fails; logged), or
 * MG_TLS_HELLO_WAIT (tls.h): a hook waits, r->waited follows. Then
 * mg_lua_tls_hello_resume resumes it: 0 when the run ended (what it returned
 * is kept for mg_lua_tls_hello_pick), -1 when it failed (logged; the pick then
 * refuses), MG_LUA_WAIT when it waits again. */
int mg_lua_tls_hello(mg_lreq_t *r, const mg_tls_server_t *t, const char *sni, const char *listener);
int mg_lua_tls_hello_resume(mg_lreq_t *r);
/* The certificate a tls_hello run that waited chose (its resume said 0 or -1),
 * with mg_lua_tls_hello's answers (never MG_TLS_HELLO_WAIT). */
int mg_lua_tls_hello_pick(mg_lreq_t *r, const mg_tls_server_t *t, const char *sni);

/* Which hooks exist, globally or on a route (bit per MG_HOOK_*). */
static inline int mg_hook_on(const mg_gen_t *g, const mg_route_t *rt, int hook) {
  return ((g->hooks | (rt ? rt->hooks : 0u)) >> hook) & 1u;
}

#endif
