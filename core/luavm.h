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

typedef struct mg_wgen_s {
  mg_gen_t *gen;
  mg_worker_t *w;
  lua_State *L;
  int entry_ref;     /* runtime.dispatch */
  int connect_ref;   /* runtime.connect */
  int hello_ref;     /* runtime.tls_hello */
  int refs;          /* requests using it, +1 while it is the worker's current one */
  int *rr_current;   /* smooth WRR state: one slot per server of every upstream */
  int *rr_base;      /* offset of each upstream's first slot in rr_current */
  int *co_free;      /* pooled coroutine refs */
  int nco_free, co_cap;
  int gen_ref;       /* holds a reference on gen */
} mg_wgen_t;

/* A request's Lua side, embedded in the exchange's request (proxy.h): its
 * coroutine, the last chunk a body hook returned, and the hook running now. The
 * exchange fills in wg, seq, route, id and owner when the request begins; the
 * rest is luavm's. */
typedef struct {
  mg_wgen_t *wg;
  lua_State *co;
  int co_ref, chunk_ref; /* LUA_NOREF when none */
  uint64_t seq;          /* per-worker request number (Lua resets its objects on change) */
  int route;             /* 1-based index of the matched route, 0: none */
  int phase;             /* the MG_HOOK_* running now, -1 outside hooks */
  const char *id;        /* the request id, for log lines */
  void *owner;           /* the request: handed to Lua, and what the FFI API serves */
} mg_lreq_t;

/* Builds the worker's view of gen: loads proxy.lua into a new state and runs the
 * init_worker hooks. NULL and a message in err on failure. Runs on the main
 * thread (at start and on reload, so a failure can stop either cleanly); the
 * state is used only by the worker once handed over. */
mg_wgen_t *mg_wgen_new(mg_worker_t *w, mg_gen_t *gen, char *err, size_t errlen);
void mg_wgen_ref(mg_wgen_t *g);
void mg_wgen_unref(mg_wgen_t *g);

/* Runs hook `hook` for r (the route's and the global ones). Returns 0, or -1 when
 * the hook failed (logged with its traceback; the caller answers 500). `chunk`
 * is for the body hook: in, the chunk; out, the replacement if the hook gave one
 * (valid until the next call). */
int mg_lua_hook(mg_lreq_t *r, int hook, mg_str_t *chunk);
/* The request ends: releases its coroutine and Lua object. */
void mg_lua_req_done(mg_lreq_t *r);
/* The connect hook: 1 to keep the connection, 0 to close it. */
int mg_lua_connect(mg_wgen_t *g, mg_str_t client_ip, const char *listener);
/* Runs the tls_hello hooks: the index of the certificate to use, -1 to let SNI
 * decide, -2 to refuse the handshake (also when a hook fails: logged). */
int mg_lua_tls_hello(mg_wgen_t *g, const mg_tls_server_t *t, const char *sni, const char *listener);

/* Which hooks exist, globally or on a route (bit per MG_HOOK_*). */
static inline int mg_hook_on(const mg_gen_t *g, const mg_route_t *rt, int hook) {
  return ((g->hooks | (rt ? rt->hooks : 0u)) >> hook) & 1u;
}

#endif
