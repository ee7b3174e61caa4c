/* Active health checks: once for the process, on the main thread's loop.
 *
 * Every server of an upstream with `health = {...}` is probed every interval
 * (jittered): a TCP connect, or an HTTP/1.1 GET whose status line must carry an
 * expected status; over TLS for TLS upstreams (the upstream's own client
 * settings). After `fall` failures in a row a server is marked down
 * (MG_PEER_DOWN in its balancer's shared peer state, which every worker's picks
 * skip), after `rise` successes in a row up again; one log line per change.
 * Servers start up (or as their shared state says, when a reload adopted the
 * balancer: the verdicts carry over). Servers added at run time (mg.upstreams,
 * re-resolution) get probes within a second; removed ones are not probed while
 * they stay removed. A check set belongs to one config generation and holds a
 * reference to it, so that no probe outlives the balancers it writes to. */
#ifndef MG_HEALTH_H
#define MG_HEALTH_H

#include <uv.h>

#include "config.h"

typedef struct mg_health_s mg_health_t;

/* Starts the checks of g's upstreams on `loop` (main thread). NULL when no
 * upstream has checks (or out of memory: logged). */
mg_health_t *mg_health_start(uv_loop_t *loop, mg_gen_t *g);
/* Stops them: no probe starts or finishes after this; the handles close on the
 * loop's next turns, then the generation's reference goes. NULL: no-op. */
void mg_health_stop(mg_health_t *h);

#endif
