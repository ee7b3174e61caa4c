/* mg.tcp: TCP sockets for hooks (OpenResty's cosocket shape). A socket is a
 * small object owned by Lua (freed by its ffi.gc finalizer); its connection is a
 * separate object owned by the worker (a transport, a bounded read buffer, one
 * timer), so that setkeepalive can move it into the worker's idle pool, keyed
 * by "host:port" or the connect call's pool name, and a later connect can take
 * it back. The FFI functions (mg_tcp_*) are declared in api.h; what is here is
 * its limits.
 *
 * Waiting goes through luavm (mg_lua_wait_io / mg_lua_wake). A socket belongs to
 * the run (request or timer callback) that first connected it: when that run
 * ends its connection is closed and the socket answers "closed" from then on.
 *
 * Bounds: a line ("*l") longer than MG_COSOCK_LINE_MAX and "*a" or receive(n)
 * over MG_COSOCK_ALL_MAX fail with "too large"; between calls at most
 * MG_COSOCK_PREFETCH bytes are read ahead, then reading stops until Lua takes
 * them (backpressure). */
#ifndef MG_COSOCK_H
#define MG_COSOCK_H

#include "mg.h"

#define MG_COSOCK_LINE_MAX (64 * 1024)
#define MG_COSOCK_ALL_MAX (16 * 1024 * 1024)
#define MG_COSOCK_PREFETCH (16 * 1024)
#define MG_COSOCK_KEY_MAX 512       /* pool keys: "host:port" or a pool name */
#define MG_COSOCK_POOLS_MAX 256     /* pool keys per worker; beyond, setkeepalive closes */
#define MG_COSOCK_POOL_SIZE 30      /* idle connections per key when none is given */
#define MG_COSOCK_IDLE_MS 60000     /* setkeepalive's idle timeout when none is given */

/* The worker ends the connections through w->socks_end (wctx.h), set by the
 * first connect: the worker does not include this part. */

#endif
