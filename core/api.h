/* THE FFI ABI: every C function Lua may call. lua/moongate/ffi.lua holds the
 * matching ffi.cdef, in the same order (spec/unit/ffi_spec.lua checks the two
 * agree). Rules: plain C types and opaque handles; strings in as (ptr, len), out
 * as mg_str_t slices that stay valid until the request ends (or, for response
 * headers, until they are changed); return 0 or a negative MG_API_E* code; nothing
 * here raises a Lua error or longjmps. */
#ifndef MG_API_H
#define MG_API_H

#include <stddef.h>

#include "mg.h"

/* Codes returned to Lua (the wrappers turn them into errors or nil, err). */
enum {
  MG_API_ENOTFOUND = -30001, /* no such header / upstream / argument */
  MG_API_EPHASE = -30002,    /* not allowed in the current hook */
  MG_API_EINVAL = -30003,    /* a bad argument (CR/LF in a header value, bad status...) */
  MG_API_ENOMEM = -30004,
  MG_API_EAGAIN = -30005,    /* started: the hook waits (its Lua wrapper yields), then asks again */
};

/* Header operations. */
enum { MG_HDR_SET = 0, MG_HDR_ADD = 1, MG_HDR_DEL = 2 };

/* Hook points (MG_HOOK_<NAME>, MG_HOOK_MAX, MG_HOOK_NAMES), in request order: generated
 * from lua/moongate/hooks.lua, the one list both sides number them by. */
#include "mg_hooks.h"

/* A snapshot of the request line and connection, filled by mg_req_info. The
 * slices point into request memory. A slice with p == NULL is absent (Lua: nil):
 * method before llhttp read it; path and query before the target was split;
 * host and http_minor (-1) before the head was complete. A request moongate
 * refused while reading its head reaches the log hook in that state. */
typedef struct {
  mg_str_t method, path, query, host, client_ip, id, scheme;
  int http_minor;
  int route;      /* index of the matched route, -1 when none */
  int upstream;   /* index of the chosen upstream, -1 when none */
} mg_req_info_t;

int mg_req_info(mg_req_t *r, mg_req_info_t *out);
/* The TLS session of the request's connection; MG_API_ENOTFOUND on plain HTTP. The
 * client_* fields are empty without a client certificate. */
typedef struct {
  mg_str_t version, cipher, sni, alpn, client_subject, client_issuer, client_fingerprint;
  int client_verified;
} mg_tls_info_t;
int mg_req_tls(mg_req_t *r, mg_tls_info_t *out);
/* The nth (0-based) header called `name` (case-insensitive); returns how many
 * headers have that name (> nth), or MG_API_ENOTFOUND. A head that was refused
 * before it was complete has no headers (count 0, ENOTFOUND). */
int mg_req_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out);
size_t mg_req_header_count(mg_req_t *r);
int mg_req_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value);
int mg_req_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen,
                      int op);
int mg_req_set_path(mg_req_t *r, const char *p, size_t len);
int mg_req_set_query(mg_req_t *r, const char *q, size_t len); /* len 0: no query */
int mg_req_set_upstream(mg_req_t *r, const char *name, size_t len);
/* Answers directly. `headers` is "Name: value\r\n"* (validated by the caller). */
int mg_req_respond(mg_req_t *r, int status, const char *headers, size_t hlen, const char *body,
                   size_t blen);
/* The request body bytes seen so far (for logs) and the server chosen, as "ip:port". */
int mg_req_upstream_addr(mg_req_t *r, mg_str_t *out);
/* Balance hook: the servers of the chosen upstream, and the pick. */
int mg_req_server_count(mg_req_t *r);
int mg_req_server_at(mg_req_t *r, int i, mg_str_t *addr, int *weight);
int mg_req_set_server(mg_req_t *r, int i);

/* The response: the upstream's head as the response hook left it. When moongate
 * answered itself (a refusal, an error, a respond route) there is no such head:
 * the log hook reads no headers (count 0, ENOTFOUND), and the status sent. */
int mg_res_status(mg_req_t *r);
int mg_res_set_status(mg_req_t *r, int status);
int mg_res_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out);
size_t mg_res_header_count(mg_req_t *r);
int mg_res_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value);
int mg_res_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen,
                      int op);

/* The shared dictionaries (core/shdict.h has the contracts). */
typedef struct mg_shdict_s mg_shdict_t;
mg_shdict_t *mg_shdict_find(const char *name, size_t len);
int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, int *type, double *num, char *buf,
                  size_t bufcap, size_t *len);
int mg_shdict_set(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted);
int mg_shdict_add(mg_shdict_t *d, const char *key, size_t klen, int type, double num,
                  const char *str, size_t slen, double ttl, int *evicted);
int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double by, int has_init,
                   double init, double ttl, double *out);
int mg_shdict_delete(mg_shdict_t *d, const char *key, size_t klen);

/* Logging and time, for the calling worker. level: 0 debug .. 3 error. */
void mg_api_log(int level, const char *msg, size_t len);
double mg_api_now(void); /* the worker loop's cached time, seconds */
int mg_api_worker_id(void);
/* mg.timer.*: timer `id` of the Lua state running now fires after secs. 0 or -1. */
int mg_api_timer(double secs, int id);
/* The timer `id` of the Lua state running now is cancelled. */
void mg_api_timer_cancel(int id);

/* ---- request bodies (proxy.c reads and frames them) ---- */
/* req:read_body, in request hooks and respond functions: 0 when the whole body
 * is in (or there is none), MG_API_EAGAIN when the hook is to wait and then ask
 * again, MG_API_EINVAL with *err (a static string: "body too large", "timeout",
 * ...) when the read failed, MG_API_EPHASE. */
int mg_req_read_body(mg_req_t *r, mg_str_t *err);
/* The body read (or set): valid until the request ends; MG_API_ENOTFOUND when
 * none was. */
int mg_req_body(mg_req_t *r, mg_str_t *out);
/* request and upstream_request hooks: the upstream gets this body (copied),
 * with a Content-Length; the client's is read and dropped. */
int mg_req_set_body(mg_req_t *r, const char *p, size_t len);
/* request and upstream_request hooks: the method that goes upstream, one HTTP
 * knows (not CONNECT): MG_API_EINVAL for anything else. */
int mg_req_set_method(mg_req_t *r, const char *m, size_t len);

#endif
