/* Dynamic upstreams: an upstream's servers as its balancer holds them (balance.h
 * ids, each with its mg_server_t), built at load, changed at run time by the Lua
 * API (mg.upstreams, api.h), by re-resolution of the host names in `servers`
 * (`resolve`, on the main thread's loop) and kept across a reload for upstreams
 * whose config did not change (the new generation adopts the old balancer).
 *
 * Names are resolved by mg_dyn_lookup: an IP literal as it is; a name listed in
 * the file $MOONGATE_HOSTS_FILE (hosts(5) format; a test and operations
 * override, read at each resolution) gets the addresses listed there; any other
 * name goes to getaddrinfo (blocking at load on the main thread, as listeners'
 * names always were; uv_getaddrinfo on libuv's thread pool for re-resolution).
 * A name gives every address of the first answer's family. */
#ifndef MG_DYN_H
#define MG_DYN_H

#include <uv.h>

#include "config.h"

#define MG_DYN_ADDRS 64 /* addresses kept per name */

/* An upstream's server `i` (an id: 0 <= i < mg_upstream_nservers(u)). */
static inline const mg_server_t *mg_upstream_server(const mg_upstream_cfg_t *u, int i) {
  return (const mg_server_t *)mg_balance_data(u->bal, i);
}
/* Ids handed out so far (drained and removed servers keep theirs). */
static inline int mg_upstream_nservers(const mg_upstream_cfg_t *u) { return mg_balance_count(u->bal); }

/* The addresses of host:port, at most `max`: their count, 0 when the name has
 * none, -1 when the lookup failed. Blocking (main thread at load only). */
int mg_dyn_lookup(const char *host, int port, struct sockaddr_storage *out, int max);

/* Adds server `sa` with `weight` to u's balancer (`from`: index in u->names of
 * the name it came from, -1 none, MG_DYN_LISTED an IP literal of `servers`)
 * without publishing (`publish` 0; the caller calls mg_balance_rebuild) or
 * publishing. The id, or MG_BALANCE_*. Unpublished, an address there already
 * is another server (key "ip:port#k"): `servers` may list one several times. */
#define MG_DYN_LISTED (-2)
int mg_dyn_add(mg_upstream_cfg_t *u, const struct sockaddr *sa, int weight, int from, int publish);

/* At a reload: each upstream of `ng` whose config key equals the one of the same
 * name in `old` takes old's balancer (a reference) instead of its own, keeping
 * the servers added, drained or re-weighted at run time and their state. */
void mg_dyn_adopt(mg_gen_t *ng, const mg_gen_t *old);

/* Starts (stops) re-resolving g's upstreams' names every `resolve` seconds on the
 * main thread's loop. Stop before the generation is released. */
void mg_dyn_resolve_start(uv_loop_t *loop, mg_gen_t *g);
void mg_dyn_resolve_stop(mg_gen_t *g);

#endif
