#include "luavm.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "wctx.h"

#define CO_POOL 64

/* Calls runtime.<fn>(args...) on L with a traceback; 0 or -1 with err filled. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
  return 1;
}

static int pcall_tb(lua_State *L, int nargs, int nres, char *err, size_t errlen) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  int rc = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  if (rc != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "error");
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

mg_wgen_t *mg_wgen_new(mg_worker_t *w, mg_gen_t *gen, char *err, size_t errlen) {
  mg_wgen_t *g = calloc(1, sizeof(*g));
  if (!g) goto nomem;
  g->w = w;
  g->gen = gen;
  g->refs = 1;
  g->co_cap = CO_POOL;
  g->co_free = calloc(CO_POOL, sizeof(int));
  g->L = luaL_newstate();
  if (!g->co_free || !g->L) goto nomem;
  mg_gen_ref(gen);
  g->gen_ref = 1;

  lua_State *L = g->L;
  mg_lua_open(L);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "moongate.private.runtime");
  if (pcall_tb(L, 1, 1, err, errlen) < 0) goto fail;
  int rt = lua_gettop(L);
  lua_getfield(L, rt, "start");
  lua_pushstring(L, gen->path);
  lua_pushinteger(L, w->id);
  lua_pushinteger(L, gen->nroutes);
  lua_pushlstring(L, gen->source, gen->source_len);
  if (pcall_tb(L, 4, 0, err, errlen) < 0) goto fail;
  /* the runtime's entry points C calls, kept in the registry */
  struct { const char *name; int *ref; } entries[] = {
    { "dispatch", &g->entry_ref }, { "connect", &g->connect_ref }, { "tls_hello", &g->hello_ref },
    { "timers_live", &g->timers_live_ref }, { "timer_fire", &g->timer_fire_ref },
    { "timer_dropped", &g->timer_dropped_ref },
  };
  for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
    lua_getfield(L, rt, entries[i].name);
    *entries[i].ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  /* init_worker runs as a coroutine: one that waits (runtime.io_begin, mg.sleep)
   * yields "defer" here, on the main thread, and goes on on the worker once the
   * generation is live (mg_lua_timers_live) */
  g->init_ref = LUA_NOREF;
  lua_State *co = lua_newthread(L);
  int co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, rt, "init_worker");
  lua_xmove(L, co, 1);
  int st = lua_resume(co, 0);
  if (st == LUA_YIELD) {
    const char *kind = lua_tostring(co, 1);
    if (kind && strcmp(kind, "defer") == 0) {
      lua_settop(co, 0);
      g->init_ref = co_ref;
    } else {
      snprintf(err, errlen, "init_worker: a hook yielded: only the moongate API may suspend a hook");
      goto fail;
    }
  } else if (st != 0) {
    luaL_traceback(L, co, lua_tostring(co, -1) ? lua_tostring(co, -1) : "(error object is not a string)", 0);
    snprintf(err, errlen, "%s", lua_tostring(L, -1));
    goto fail;
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, co_ref);
  }
  lua_settop(L, 0);
  return g;

nomem:
  snprintf(err, errlen, "out of memory");
fail:
  if (g) {
    if (g->L) lua_close(g->L);
    if (g->gen_ref) mg_gen_unref(g->gen);
    free(g->co_free);
    free(g);
  }
  return NULL;
}

void mg_wgen_ref(mg_wgen_t *g) { g->refs++; }

void mg_wgen_unref(mg_wgen_t *g) {
  if (!g || --g->refs > 0) return;
  lua_close(g->L);
  mg_gen_unref(g->gen);
  free(g->co_free);
  free(g->spare_run);
  free(g);
}

static lua_State *req_coroutine(mg_lreq_t *r) {
  if (r->co) return r->co;
  mg_wgen_t *g = r->wg;
  lua_State *L = g->L;
  if (g->nco_free > 0) {
    r->co_ref = g->co_free[--g->nco_free];
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->co_ref);
    r->co = lua_tothread(L, -1);
    lua_pop(L, 1);
  } else {
    r->co = lua_newthread(L);
    r->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return r->co;
}

static void drop_coroutine(mg_lreq_t *r, int reusable) {
  mg_wgen_t *g = r->wg;
  if (!r->co) return;
  if (reusable && lua_status(r->co) == 0 && g->nco_free < g->co_cap) {
    lua_settop(r->co, 0);
    g->co_free[g->nco_free++] = r->co_ref;
  } else {
    luaL_unref(g->L, LUA_REGISTRYINDEX, r->co_ref);
  }
  r->co = NULL;
  r->co_ref = LUA_NOREF;
}

static const char *hook_names[MG_HOOK_MAX] = { MG_HOOK_NAMES };
static const char *hook_name(int h) { return h >= 0 && h < MG_HOOK_MAX ? hook_names[h] : "timer"; }

static void on_wait_timer(mg_timer_t *t);
static void on_budget(mg_timer_t *t);

#define LREQ_OF(t, field) ((mg_lreq_t *)((char *)(t) - offsetof(mg_lreq_t, field)))

/* A hook's function yielded (runtime.wait): what it waits for is on the
 * coroutine's stack. 0 when the wait is set up, else -1 and *why. */
static int start_wait(mg_lreq_t *r, lua_State *co, int hook, const char **why) {
  mg_wgen_t *g = r->wg;
  if (!mg_lua_may_wait(hook)) {
    *why = "this hook cannot wait (request_body hooks cannot)";
    return -1;
  }
  const char *kind = lua_tostring(co, 1);
  mg_timers_t *ts = &g->w->timers;
  if (kind && strcmp(kind, "io") == 0 && r->io) {
    /* the operation wakes it (mg_lua_wake) */
  } else if (kind && strcmp(kind, "sleep") == 0 && lua_type(co, 2) == LUA_TNUMBER && !r->io) {
    double secs = lua_tonumber(co, 2);
    uint64_t ms = secs > 0 ? (secs > 1e7 ? (uint64_t)1e10 : (uint64_t)(secs * 1000.0 + 0.5)) : 0;
    mg_timer_start(ts, &r->wait_timer, ms, on_wait_timer);
  } else {
    *why = "a hook yielded: only the moongate API may suspend a hook (mg.sleep, sockets, mg.http)";
    return -1;
  }
  lua_settop(co, 0);
  if (!r->waiting) { /* the hook's budget runs from its first wait */
    mg_timer_start(ts, &r->budget, r->budget_ms ? r->budget_ms : g->gen->timeouts.hook, on_budget);
    r->waiting = 1;
    r->wait_hook = hook;
  }
  return 0;
}

/* Runs (or resumes) r's coroutine with nargs arguments on its stack. */
/* With `results`, what the function returned stays on co's stack for the caller
 * (which clears it) when it ended. */
static int run_co(mg_lreq_t *r, int hook, lua_State *co, int nargs, mg_str_t *chunk, int results) {
  mg_wgen_t *g = r->wg;
  int saved = r->phase;
  r->phase = hook;
  /* the main thread's watchdog reads these to report a hook that does not return */
  /* relaxed, and the loop's cached clock (ms): the watchdog only needs seconds */
  atomic_store_explicit(&g->w->hook_hook, hook, memory_order_relaxed);
  atomic_store_explicit(&g->w->hook_since, uv_now(&g->w->loop) + 1, memory_order_relaxed);
  void *outer = g->w->hook_req;
  mg_wgen_t *outer_wg = g->w->lua_wg;
  mg_lreq_t *outer_run = g->w->lua_run;
  g->w->hook_req = r->owner;
  g->w->lua_wg = g;
  g->w->lua_run = mg_lua_may_wait(hook) ? r : NULL;
  int st = lua_resume(co, nargs);
  g->w->hook_req = outer;
  g->w->lua_wg = outer_wg;
  g->w->lua_run = outer_run;
  if (st != LUA_YIELD && r->io) { /* an operation started but not waited for (a yield
                                     caught by the user's own coroutine): dropped */
    r->io->cancel(r->io);
    r->io = NULL;
  }
  atomic_store_explicit(&g->w->hook_since, 0, memory_order_relaxed);
  r->phase = saved;
  if (st == 0) {
    if (chunk && lua_type(co, 2) == LUA_TSTRING) {
      if (r->chunk_ref != LUA_NOREF) luaL_unref(co, LUA_REGISTRYINDEX, r->chunk_ref);
      size_t len;
      chunk->p = lua_tolstring(co, 2, &len);
      chunk->len = len;
      lua_pushvalue(co, 2);
      r->chunk_ref = luaL_ref(co, LUA_REGISTRYINDEX); /* keeps chunk->p alive */
    }
    if (!results) lua_settop(co, 0);
    return 0;
  }
  const char *msg = NULL;
  if (st == LUA_YIELD) {
    if (start_wait(r, co, hook, &msg) == 0) return MG_LUA_WAIT;
    if (r->io) {
      r->io->cancel(r->io);
      r->io = NULL;
    }
  } else {
    msg = lua_tostring(co, -1);
  }
  luaL_traceback(g->L, co, msg ? msg : "(error object is not a string)", 0);
  MG_ERR(g->w->id, "req %s: %s hook failed: %s", r->id ? r->id : "-", hook_name(hook), lua_tostring(g->L, -1));
  lua_pop(g->L, 1);
  mg_lua_cancel(r);
  drop_coroutine(r, 0); /* a coroutine that raised (or yielded wrongly) is done for */
  return -1;
}

int mg_lua_hook(mg_lreq_t *r, int hook, mg_str_t *chunk) {
  mg_wgen_t *g = r->wg;
  if (r->waiting) mg_lua_cancel(r); /* a new phase: the wait before it is over */
  lua_State *co = req_coroutine(r);
  lua_rawgeti(co, LUA_REGISTRYINDEX, g->entry_ref);
  lua_pushinteger(co, hook);
  /* the pointer as a number: LuaJIT compiles ffi.cast from a number, not from a
   * lightuserdata (x86-64 user addresses fit in a double exactly) */
  lua_pushnumber(co, (lua_Number)(uintptr_t)r->owner);
  /* the request's number: the Lua side reuses one request object per coroutine
   * and resets it when this changes */
  lua_pushnumber(co, (lua_Number)r->seq);
  lua_pushinteger(co, r->co_ref); /* the coroutine's slot: one request object each */
  lua_pushinteger(co, r->route);
  if (chunk) lua_pushlstring(co, chunk->p, chunk->len);
  else lua_pushnil(co);
  return run_co(r, hook, co, 6, chunk, 0);
}

/* What the hook waits for is there: the exchange is told, and resumes the hook
 * (mg_lua_resume) where it runs hooks, so that what the hook then does is
 * handled as when it ran the first time. */
static void on_wait_timer(mg_timer_t *t) {
  mg_lreq_t *r = LREQ_OF(t, wait_timer);
  if (!r->waiting || !r->co) return;
  r->waited(r->owner, 0); /* may free r */
}

int mg_lua_resume(mg_lreq_t *r) { return mg_lua_resume_chunk(r, NULL); }

static int resume_run(mg_lreq_t *r, mg_str_t *chunk, int results) {
  if (!r->waiting || !r->co) return -1;
  lua_pushboolean(r->co, 1); /* mg.sleep returns true */
  int rc = run_co(r, r->wait_hook, r->co, 1, chunk, results);
  if (rc == MG_LUA_WAIT) return rc;
  mg_timer_stop(&r->wg->w->timers, &r->budget);
  r->waiting = 0;
  return rc;
}

int mg_lua_resume_chunk(mg_lreq_t *r, mg_str_t *chunk) { return resume_run(r, chunk, 0); }

/* timeouts.hook: the hook is dropped where it waits. */
static void on_budget(mg_timer_t *t) {
  mg_lreq_t *r = LREQ_OF(t, budget);
  mg_wgen_t *g = r->wg;
  uint64_t ms = r->budget_ms ? r->budget_ms : g->gen->timeouts.hook;
  MG_WARN(g->w->id, "req %s: %s hook still waiting after timeouts.hook (%.3g s, route %d): dropped",
          r->id ? r->id : "-", hook_name(r->wait_hook), (double)ms / 1000.0, r->route);
  mg_lua_cancel(r);
  r->waited(r->owner, MG_LUA_TIMEOUT); /* may free r */
}

mg_lreq_t *mg_lua_running(mg_worker_t *w) { return w ? w->lua_run : NULL; }

int mg_lua_wait_io(mg_lreq_t *r, mg_lwait_t *op) {
  if (!r || r->io || !r->co) return -1;
  r->io = op;
  return 0;
}

void mg_lua_wake(mg_lreq_t *r, mg_lwait_t *op) {
  if (r->io != op) return; /* not (or no longer) what it waits on */
  r->io = NULL;
  /* on the next loop turn: the caller is inside its own callback */
  mg_timer_start(&r->wg->w->timers, &r->wait_timer, 0, on_wait_timer);
}

void mg_lua_cancel(mg_lreq_t *r) {
  if (r->io) {
    r->io->cancel(r->io);
    r->io = NULL;
  }
  if (!r->waiting) return;
  mg_timers_t *ts = &r->wg->w->timers;
  mg_timer_stop(ts, &r->wait_timer);
  mg_timer_stop(ts, &r->budget);
  r->waiting = 0;
  drop_coroutine(r, 0); /* suspended: never reused, the collector takes it */
}

void mg_lua_res_add(mg_lreq_t *r, mg_lres_t *res) {
  res->next = r->res;
  if (r->res) r->res->prevp = &res->next;
  res->prevp = &r->res;
  r->res = res;
}

void mg_lua_res_remove(mg_lres_t *res) {
  if (!res->prevp) return;
  *res->prevp = res->next;
  if (res->next) res->next->prevp = res->prevp;
  res->next = NULL;
  res->prevp = NULL;
}

void mg_lua_req_done(mg_lreq_t *r) {
  mg_wgen_t *g = r->wg;
  mg_lua_cancel(r);
  while (r->res) { /* its sockets: closed now, never pointing at r again */
    mg_lres_t *res = r->res;
    mg_lua_res_remove(res);
    res->done(res);
  }
  if (r->chunk_ref != LUA_NOREF) luaL_unref(g->L, LUA_REGISTRYINDEX, r->chunk_ref);
  r->chunk_ref = LUA_NOREF;
  drop_coroutine(r, 1);
}

/* ---------------- connect and tls_hello: runs of their own ---------------- */

mg_lreq_t *mg_lua_conn_run(mg_wgen_t *g, const char *id, void *owner, void (*waited)(void *, int)) {
  mg_lreq_t *r = g->spare_run;
  if (r) g->spare_run = NULL;
  else if (!(r = malloc(sizeof(*r)))) return NULL;
  memset(r, 0, sizeof(*r));
  r->wg = g;
  mg_wgen_ref(g);
  r->co_ref = r->chunk_ref = LUA_NOREF;
  r->phase = -1;
  r->id = id;
  r->owner = owner;
  r->waited = waited;
  return r;
}

void mg_lua_conn_run_done(mg_lreq_t *r) {
  if (!r) return;
  mg_wgen_t *g = r->wg;
  mg_lua_req_done(r);
  if (!g->spare_run) g->spare_run = r; /* the next connection's, without a malloc */
  else free(r);
  mg_wgen_unref(g);
}

/* What a connect run ended with: 0 keep, -1 close (a failure was logged). */
static int connect_result(mg_lreq_t *r, int rc) {
  if (rc == MG_LUA_WAIT) return rc;
  if (rc < 0) return -1; /* run_co logged it */
  int keep = lua_toboolean(r->co, 1);
  lua_settop(r->co, 0);
  return keep ? 0 : -1;
}

int mg_lua_connect(mg_lreq_t *r, mg_str_t client_ip, const char *listener) {
  lua_State *co = req_coroutine(r);
  lua_rawgeti(co, LUA_REGISTRYINDEX, r->wg->connect_ref);
  lua_pushlstring(co, client_ip.p, client_ip.len);
  if (listener) lua_pushstring(co, listener);
  else lua_pushnil(co);
  return connect_result(r, run_co(r, MG_HOOK_CONNECT, co, 2, NULL, 1));
}

int mg_lua_connect_resume(mg_lreq_t *r) { return connect_result(r, resume_run(r, NULL, 1)); }

/* What a tls_hello run ended with (see mg_lua_tls_hello). */
static int hello_result(mg_lreq_t *r, int rc, const mg_tls_server_t *t, const char *sni) {
  if (rc == MG_LUA_WAIT) return MG_TLS_HELLO_WAIT; /* (1 would read as certificate 2) */
  if (rc < 0) return -2; /* run_co logged it: the handshake is refused */
  mg_wgen_t *g = r->wg;
  lua_State *co = r->co;
  int pick = -1;
  if (lua_isboolean(co, 1) && !lua_toboolean(co, 1)) {
    pick = -2;
    MG_INFO(g->w->id, "tls_hello hook refused the handshake (SNI %s)", sni ? sni : "none");
  } else if (lua_type(co, 1) == LUA_TNUMBER) {
    int i = (int)lua_tointeger(co, 1);
    if (i >= 1 && i <= t->ncerts) pick = i - 1;
    else MG_WARN(g->w->id, "tls_hello hook: no certificate %d (SNI decides)", i);
  } else if (lua_type(co, 1) == LUA_TSTRING) {
    const char *name = lua_tostring(co, 1);
    for (int i = 0; i < t->ncerts && pick < 0; i++)
      if (t->certs[i].name && strcmp(t->certs[i].name, name) == 0) pick = i;
    if (pick < 0) MG_WARN(g->w->id, "tls_hello hook: no certificate named '%s' (SNI decides)", name);
  }
  lua_settop(co, 0);
  return pick;
}

int mg_lua_tls_hello(mg_lreq_t *r, const mg_tls_server_t *t, const char *sni, const char *listener) {
  lua_State *co = req_coroutine(r);
  lua_rawgeti(co, LUA_REGISTRYINDEX, r->wg->hello_ref);
  if (sni) lua_pushstring(co, sni);
  else lua_pushnil(co);
  if (listener) lua_pushstring(co, listener);
  else lua_pushnil(co);
  return hello_result(r, run_co(r, MG_HOOK_TLS_HELLO, co, 2, NULL, 1), t, sni);
}

int mg_lua_tls_hello_resume(mg_lreq_t *r) { return resume_run(r, NULL, 1); }

int mg_lua_tls_hello_pick(mg_lreq_t *r, const mg_tls_server_t *t, const char *sni) {
  /* a run that failed dropped its coroutine; one that ended keeps what it returned */
  return hello_result(r, r->co ? 0 : -1, t, sni);
}


/* ---------------- mg.timer.* ---------------- */

typedef struct mg_ltimer_s {
  mg_timer_t t;
  struct mg_ltimer_s *prev, *next;
  mg_wgen_t *g;
  int id;
} mg_ltimer_t;

/* A timer callback's run: a coroutine of its own, like a request's. */
typedef struct mg_lrun_s {
  mg_lreq_t lua;
  struct mg_lrun_s *prev, *next;
  int id; /* the timer's */
} mg_lrun_t;

static void timer_unlink(mg_ltimer_t *t) {
  if (t->prev) t->prev->next = t->next;
  else t->g->timers = t->next;
  if (t->next) t->next->prev = t->prev;
}

static void run_end(mg_lrun_t *run) {
  mg_wgen_t *g = run->lua.wg;
  if (run->prev) run->prev->next = run->next;
  else g->w->lua_runs = run->next;
  if (run->next) run->next->prev = run->prev;
  mg_lua_req_done(&run->lua);
  free(run);
  mg_wgen_unref(g);
}

/* timeouts.hook dropped a callback where it waited: its timer goes on as after
 * an error (runtime.timer_dropped: an every timer is armed again). */
static void timer_dropped(mg_lrun_t *run) {
  mg_wgen_t *g = run->lua.wg;
  char err[512];
  mg_wgen_t *outer = g->w->lua_wg;
  g->w->lua_wg = g;
  lua_rawgeti(g->L, LUA_REGISTRYINDEX, g->timer_dropped_ref);
  lua_pushinteger(g->L, run->id);
  if (pcall_tb(g->L, 1, 0, err, sizeof(err)) < 0) MG_ERR(g->w->id, "timer %d: %s", run->id, err);
  g->w->lua_wg = outer;
}

/* A timer callback that waited may go on (or was dropped: timeouts.hook). */
static void run_waited(void *owner, int rc) {
  mg_lrun_t *run = owner;
  if (rc == MG_LUA_TIMEOUT) timer_dropped(run);
  if (rc == 0) rc = mg_lua_resume(&run->lua);
  if (rc == MG_LUA_WAIT) return;
  run_end(run);
}

/* A run of g's Lua of its own (a timer callback, the rest of init_worker), in the
 * worker's list of runs. */
static mg_lrun_t *run_new(mg_wgen_t *g, int id, const char *what) {
  mg_lrun_t *run = calloc(1, sizeof(*run));
  if (!run) return NULL;
  run->lua.wg = g;
  mg_wgen_ref(g);
  run->lua.co_ref = run->lua.chunk_ref = LUA_NOREF;
  run->lua.phase = -1;
  run->lua.id = what;
  run->lua.owner = run;
  run->lua.waited = run_waited;
  run->id = id;
  run->next = g->w->lua_runs;
  if (g->w->lua_runs) g->w->lua_runs->prev = run;
  g->w->lua_runs = run;
  return run;
}

static void on_ltimer(mg_timer_t *tt) {
  mg_ltimer_t *t = (mg_ltimer_t *)((char *)tt - offsetof(mg_ltimer_t, t));
  mg_wgen_t *g = t->g;
  int id = t->id;
  timer_unlink(t);
  free(t);
  mg_lrun_t *run = run_new(g, id, "timer");
  if (!run) {
    MG_ERR(g->w->id, "timer %d: out of memory: not run", id);
    return;
  }
  lua_State *co = req_coroutine(&run->lua);
  lua_rawgeti(co, LUA_REGISTRYINDEX, g->timer_fire_ref);
  lua_pushinteger(co, id);
  if (run_co(&run->lua, MG_HOOK_TIMER, co, 1, NULL, 0) != MG_LUA_WAIT) run_end(run);
}

int mg_lua_timer_arm(mg_wgen_t *g, int id, double secs) {
  if (g->retired) return -1;
  mg_ltimer_t *t = calloc(1, sizeof(*t));
  if (!t) return -1;
  t->g = g;
  t->id = id;
  t->next = g->timers;
  if (g->timers) g->timers->prev = t;
  g->timers = t;
  uint64_t ms = secs > 0 ? (secs > 1e7 ? (uint64_t)1e10 : (uint64_t)(secs * 1000.0 + 0.5)) : 0;
  mg_timer_start(&g->w->timers, &t->t, ms, on_ltimer);
  return 0;
}

void mg_lua_timer_cancel(mg_wgen_t *g, int id) {
  /* most recent first: a timer cancelled soon after it was started is near */
  for (mg_ltimer_t *t = g->timers; t; t = t->next) {
    if (t->id != id) continue;
    mg_timer_stop(&g->w->timers, &t->t);
    timer_unlink(t);
    free(t);
    return;
  }
}

void mg_lua_timers_live(mg_wgen_t *g) {
  lua_State *L = g->L;
  char err[1024];
  mg_wgen_t *outer = g->w->lua_wg;
  g->w->lua_wg = g;
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->timers_live_ref);
  if (pcall_tb(L, 0, 0, err, sizeof(err)) < 0) MG_ERR(g->w->id, "timers: %s", err);
  g->w->lua_wg = outer;
  if (g->init_ref != LUA_NOREF) { /* the rest of an init_worker that waited, on the worker now */
    mg_lrun_t *run = run_new(g, 0, "init_worker");
    if (!run) {
      MG_ERR(g->w->id, "init_worker: out of memory: the rest of it does not run");
      luaL_unref(L, LUA_REGISTRYINDEX, g->init_ref);
      g->init_ref = LUA_NOREF;
      return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->init_ref);
    run->lua.co = lua_tothread(L, -1);
    run->lua.co_ref = g->init_ref;
    lua_pop(L, 1);
    g->init_ref = LUA_NOREF;
    if (run_co(&run->lua, MG_HOOK_INIT_WORKER, run->lua.co, 0, NULL, 0) != MG_LUA_WAIT) run_end(run);
  }
}

void mg_lua_timers_stop(mg_wgen_t *g, int drop_runs) {
  g->retired = 1;
  while (g->timers) {
    mg_ltimer_t *t = g->timers;
    mg_timer_stop(&g->w->timers, &t->t);
    timer_unlink(t);
    free(t);
  }
  if (!drop_runs) return;
  /* every generation's: an older one's callback may still wait (a reload left
   * it to finish), and it holds that generation */
  mg_worker_t *w = g->w;
  while (w->lua_runs) run_end(w->lua_runs);
}
