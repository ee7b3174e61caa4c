/* mg.http: HTTP/1.1 calls from Lua over the upstream client (upstream.h), so a
 * call to a server the proxy also talks to shares its keep-alive pool (pools are
 * keyed by address and TLS settings). Host names go through resolve.h; a hook
 * waits through luavm (mg_lua_wait_io / mg_lua_wake). The FFI functions
 * (mg_http_*) are declared in api.h and implemented in lhttp.c.
 *
 * Ownership: a call belongs to the Lua run that started it (a request's hooks or
 * a timer callback) and is freed when Lua closes it or when that run ends,
 * whichever comes first; Lua holds a slot number and a generation, never the
 * pointer, so a handle kept past its run finds nothing. Per worker: the open
 * calls' table and a small cache of TLS client contexts (verify, ca, sni), both
 * freed by mg_lhttp_free at worker exit. */
#ifndef MG_LHTTP_H
#define MG_LHTTP_H

#include "mg.h"

#define MG_LHTTP_KEEPALIVE 32           /* idle connections a call's server keeps */
#define MG_LHTTP_KEEPALIVE_MS 60000
#define MG_LHTTP_STREAM_HIGH (256 * 1024) /* stream: reading stops above this much unread */
#define MG_LHTTP_STREAM_LOW (64 * 1024)   /* ... and goes on below this */

/* Worker exit (after the loop ended): what mg.http kept for the worker goes.
 * Reached through w->lhttp_free (the worker does not include this part). */
void mg_lhttp_free(mg_worker_t *w);

#endif
