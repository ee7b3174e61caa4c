/* Dynamic upstreams: an upstream's servers as its balancer holds them (balance.h
 * ids, each with its mg_server_t), built at load, changed at run time by the Lua
 * API (mg.upstreams, api.h), by re-resolution of the host names in `servers`
 * (`resolve`, on the main thread's loop) and kept across a reload for upstreams
 * whose config did not change (the new generation adopts the old balancer).
 *
 * This part: adoption at a reload and re-resolution (uv_getaddrinfo on libuv's
 * thread pool, from the main thread's loop). Servers by address, name lookup
 * and the $MOONGATE_HOSTS_FILE override are config.h's (mg_upstream_*); the Lua
 * API is api.c's. */
#ifndef MG_DYN_H
#define MG_DYN_H

#include <uv.h>

#include "config.h"

/* At a reload: each upstream of `ng` whose config key equals the one of the same
 * name in `old` takes old's balancer (a reference) instead of its own, keeping
 * the servers added, drained or re-weighted at run time and their state. */
void mg_dyn_adopt(mg_gen_t *ng, const mg_gen_t *old);

/* Starts (stops) re-resolving g's upstreams' names every `resolve` seconds on the
 * main thread's loop. Stop before the generation is released. */
void mg_dyn_resolve_start(uv_loop_t *loop, mg_gen_t *g);
void mg_dyn_resolve_stop(mg_gen_t *g);

#endif
