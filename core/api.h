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
/* Server i's state, shared by every worker (balance.h): attempts in flight, the
 * moving average of its response time in µs (0: no response yet), failures in a row. */
int mg_req_server_state(mg_req_t *r, int i, int *active, unsigned *ewma_us, int *fails);
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

/* ---- mg.tcp (cosock.c) ---- */
/* A socket for hooks (core/cosock.h). Owned by Lua: mg_tcp_new's result is freed
 * by mg_tcp_free (ffi.gc), which closes its connection. The operations that may
 * wait return 0, -1 with *err (a static string, or one in the socket valid until
 * its next call), MG_API_EPHASE (no hook that may wait runs now), or
 * MG_API_EAGAIN: the caller waits (runtime.wait "io") and asks again, with
 * mg_tcp_result (connect, sslhandshake, send) or the same mg_tcp_receive call. */
typedef struct mg_cosock_s mg_cosock_t;
mg_cosock_t *mg_tcp_new(void);
void mg_tcp_free(mg_cosock_t *s);
/* Milliseconds; < 0 leaves one as it is, 0 means no timeout. */
void mg_tcp_settimeouts(mg_cosock_t *s, double connect_ms, double send_ms, double read_ms);
/* host: a name or an IP literal; pool (plen 0: "host:port") keys the idle pool;
 * ca (calen 0: the system bundle) is what sslhandshake verifies against. */
int mg_tcp_connect(mg_cosock_t *s, const char *host, size_t hlen, int port, const char *pool,
                   size_t plen, int pool_size, const char *ca, size_t calen, const char **err);
int mg_tcp_result(mg_cosock_t *s, const char **err);
int mg_tcp_sslhandshake(mg_cosock_t *s, const char *name, size_t nlen, int verify, const char **err);
/* Queues p; with more = 0 sends everything queued and waits until written. */
int mg_tcp_send(mg_cosock_t *s, const char *p, size_t len, int more, const char **err);
/* mode 0: n bytes, 1: a line (without CR LF), 2: until closed, 3: what is there
 * (up to n). *out (or, on error, the partial data) points into the socket's
 * buffer until its next call. */
int mg_tcp_receive(mg_cosock_t *s, int mode, size_t n, mg_str_t *out, const char **err);
/* idle_ms < 0: the default (60 s); pool_size <= 0: connect's, else 30. */
int mg_tcp_setkeepalive(mg_cosock_t *s, double idle_ms, int pool_size, const char **err);
int mg_tcp_close(mg_cosock_t *s);
int mg_tcp_reused(mg_cosock_t *s);

/* ---- mg.http (lhttp.c) ---- */
/* One HTTP/1.1 call from Lua (lua/moongate/http.lua builds and checks the head). */
typedef struct {
  const char *host;   /* a name or an IP literal ([brackets] allowed) */
  size_t host_len;
  int port;
  int tls, verify;    /* https; verify the server's certificate (and name: sni) */
  const char *ca;     /* NUL-terminated CA file; NULL: the system bundle */
  const char *sni;    /* NUL-terminated server name sent and verified; NULL: none */
  const char *head;   /* the request head, CRLF CRLF included */
  size_t head_len;
  const char *body;
  size_t body_len;
  int is_head, idempotent, stream;
  double max_body;    /* bytes; 0: no bound */
  double timeout;     /* seconds, the whole call */
} mg_http_opts_t;
typedef struct {
  int status;
  mg_str_t err;       /* not empty: the call failed (and nothing else is set) */
  mg_str_t body;      /* not streaming: the whole body */
  mg_str_t headers;   /* "name:value\n" per header, names in lower case */
} mg_http_res_t;
/* Starts a call owned by the running hook (MG_API_EPHASE where nothing may wait):
 * its handle in *slot, *gen; MG_API_EAGAIN (the hook waits, then asks
 * mg_http_result), 0 (the result is there: an immediate failure), or a code. */
int mg_http_start(const mg_http_opts_t *o, uint32_t *slot, uint32_t *gen);
/* The answer (streaming: its head), 0, or MG_API_EAGAIN: the hook waits again. The
 * slices stay valid until mg_http_close. MG_API_ENOTFOUND: closed (or its run ended). */
int mg_http_result(uint32_t slot, uint32_t gen, mg_http_res_t *out);
/* Streaming: the next piece (up to max bytes; valid until the next call), an empty
 * piece at the end, an error in *err, or MG_API_EAGAIN: the hook waits. */
int mg_http_read(uint32_t slot, uint32_t gen, size_t max, mg_str_t *piece, mg_str_t *err);
/* Frees the call (its connection is closed if the response is not over). */
void mg_http_close(uint32_t slot, uint32_t gen);

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

/* ---- balance = "hash" with hash_key = function(req) (i12-hash) ---- */
/* In the balance phase: the request's upstream's index + 1 when it hashes by a
 * Lua function not called yet for this request, else 0; the caller then calls it
 * (once per request: a retry does not call it again, whatever it returned). */
int mg_req_hash_want(mg_req_t *r);
/* The key that function returned (copied; at most 4096 bytes, else MG_API_EINVAL):
 * the request is hashed by it for this and any retry (an empty key: the client's
 * address, as for an empty header). */
int mg_req_set_hash_key(mg_req_t *r, const char *p, size_t len);

/* ---- i12-split ---- */
/* The name of the upstream the request goes to (a split route's choice, or
 * req:set_upstream's): valid as long as the generation; MG_API_ENOTFOUND before
 * one is chosen (the request hook of a split route) or without one. */
int mg_req_upstream_name(mg_req_t *r, mg_str_t *out);
/* ---- i12-health ---- */
/* Balance hook: server i's health, as MG_PEER_* bits (MG_PEER_DOWN 1: failed its
 * active checks; MG_PEER_EJECTED 2: ejected, and the ejection is not over), or
 * MG_API_EPHASE / MG_API_ENOTFOUND. */
int mg_req_server_flags(mg_req_t *r, int i);
/* ---- i12-retry: an upstream's retry and circuit breaker state ---- */
typedef struct {
  double requests;                /* requests sent to it (first attempts) */
  double retries;                 /* retries started */
  double retries_budget_exceeded; /* retries refused by retry.budget */
  double overflow_connections, overflow_pending, overflow_requests; /* 503s of each breaker */
  double active_requests, active_connections, pending, active_retries; /* now, all workers */
} mg_upstream_stats_t;
/* The upstream called `name` in the configuration the calling hook or timer runs
 * on (counted since that configuration was loaded); MG_API_ENOTFOUND when none
 * is, MG_API_EPHASE outside a worker. */
int mg_upstream_stats(const char *name, size_t len, mg_upstream_stats_t *out);
/* ---- i12-dyn: mg.upstreams, servers of the running generation's upstreams
 * changed at run time (core/dyn.c; lua/moongate/upstreams.lua). Every worker sees
 * a change at once (the balancer is shared); usable from any hook and timer.
 * `u` is an upstream's index (mg_ups_find), a server's `id` permanent within it. */
typedef struct {
  mg_str_t addr;     /* "ip:port" */
  int weight, active, fails;
  unsigned ewma_us;  /* 0: no sample yet */
  unsigned flags;    /* mg_peer_t.flags: 0 up; MG_PEER_DRAINING 4, MG_PEER_REMOVED 8 */
} mg_ups_server_t;
int mg_ups_count(void);
int mg_ups_name(int u, mg_str_t *out);
/* The index of upstream `name`, MG_API_ENOTFOUND, MG_API_EPHASE outside a worker. */
int mg_ups_find(const char *name, size_t len);
/* Adds (or revives) a server "ip:port" / "[ip6]:port" with weight 1..1000 (the Lua
 * side checks it): its id, or an MG_API_* code with *err. publish = 0: one of
 * several, visible after mg_ups_publish. */
int mg_ups_add(int u, const char *addr, size_t len, int weight, int publish, mg_str_t *err);
int mg_ups_publish(int u);
/* op 0 remove, 1 drain, 2 set the weight: the id, or an MG_API_* code with *err. */
int mg_ups_change(int u, const char *addr, size_t len, int op, int weight, mg_str_t *err);
/* Ids 0..mg_ups_nservers(u)-1 (removed ones included: flags say). */
int mg_ups_nservers(int u);
int mg_ups_server(int u, int id, mg_ups_server_t *out);
/* ---- i13-compress: res:compress(on), in the request or response hook (before the
 * head goes out): 0 sends this response as it comes; 1 lets the route's compress
 * settings decide again (docs/compression.md). MG_API_EPHASE elsewhere. */
int mg_res_compress(mg_req_t *r, int on);
/* ---- i13-api: mg.cache, the response cache from Lua (docs/cache.md "Purge and
 * statistics"). The store is the process's: any hook or timer of any worker may
 * call these (no request needed). MG_API_ENOTFOUND when no cache is configured. */
typedef struct {
  double objects, bytes, cap;  /* now */
  double lookups, hits, misses, stores, replaced, rejected, evictions, too_big; /* since start */
  /* the disk store (0 without one): files and their bytes now, the cap, and since
   * start: lookups answered from disk, files written, writes failed or dropped,
   * files evicted, damaged files deleted */
  double disk_objects, disk_bytes, disk_cap, disk_hits, disk_writes, disk_write_errors, disk_evictions,
      disk_corrupt;
} mg_cache_api_stats_t;
/* Removes every variant of a key: `s` is a URL ("http[s]://host[:port]/path?q": the
 * key a GET of it is stored under, and `s` itself as a raw key too) or a raw key
 * (as a cache_key hook gave it). The count removed; MG_API_EINVAL: a URL that does
 * not parse. */
int mg_api_cache_purge(const char *s, size_t len);
/* Removes every key that starts with `s` (a URL prefix is made a key prefix:
 * "http://Host/a" -> "GET http://host/a"). The count removed, or MG_API_EINVAL. */
int mg_api_cache_purge_prefix(const char *s, size_t len);
int mg_api_cache_stats(mg_cache_api_stats_t *out);
/* The cache_key hook's answer: the request's primary key (copied; 1 to 16384
 * bytes, else MG_API_EINVAL), in place of the default one. MG_API_EPHASE outside
 * the cache_key hook. */
int mg_req_set_cache_key(mg_req_t *r, const char *p, size_t len);
/* ---- issue 14: gateway policies (docs/policies.md). The name of the policy that
 * answered the request (copied; 1 to 64 bytes, else MG_API_EINVAL): the access
 * log line gets it as its `policy` field. */
int mg_req_set_policy(mg_req_t *r, const char *p, size_t len);

/* ---- i14-ratelimit: policies (lua/moongate/policy/) ---- */
/* core/shdict.h has the contract: a token bucket in a shared dictionary entry;
 * 0 allowed, 1 refused, or a negative MG_SHDICT_* code. */
int mg_shdict_gcra(mg_shdict_t *d, const char *key, size_t klen, double interval, double capacity,
                   double *wait, double *remaining);
/* Prefix sets (core/cidr.h), built at config time and matched per request. Owned
 * by Lua: mg_api_cidr_new's result is freed by mg_api_cidr_free (ffi.gc). add:
 * 0, MG_API_EINVAL (bad text: the set is unchanged), MG_API_ENOMEM. match: 1 when
 * the address text (IPv4, IPv6, IPv4-mapped IPv6) is in a prefix of the set, else 0. */
typedef struct mg_cidr_s mg_cidr_t;
mg_cidr_t *mg_api_cidr_new(void);
int mg_api_cidr_add(mg_cidr_t *set, const char *text, size_t len);
int mg_api_cidr_match(const mg_cidr_t *set, const char *ip, size_t len);
size_t mg_api_cidr_count(const mg_cidr_t *set);
void mg_api_cidr_free(mg_cidr_t *set);
/* The address of the connection's peer (req.client_ip is the client after
 * trusted_proxies); any hook that has a request. */
int mg_req_peer_ip(mg_req_t *r, mg_str_t *out);

/* ---- i14-auth: key_auth, basic_auth, mtls_consumer (core/auth.c, api.c) ---- */
/* SHA-256 of `p` into out[32]; 0. */
int mg_api_sha256(const char *p, size_t len, unsigned char out[32]);
/* 1 when the n bytes at a and b are equal, in a time that does not depend on them. */
int mg_api_ct_equal(const void *a, const void *b, size_t n);
/* Password hashes through the system crypt (libxcrypt): bcrypt ($2b$, $2y$) and
 * SHA-2 crypt ($5$, $6$). supported: 0, or MG_API_EINVAL (another scheme, or not a
 * well-formed hash). check: 1 the password matches, 0 it does not, MG_API_EINVAL,
 * MG_API_ENOMEM. Slow by design (bcrypt's cost): call at most once per request. */
int mg_api_crypt_supported(const char *hash, size_t hlen);
int mg_api_crypt_check(const char *pw, size_t pwlen, const char *hash, size_t hlen);
/* The same check on libuv's thread pool, the running hook waiting for it (the
 * worker serves other requests meanwhile): begin returns MG_API_EAGAIN with *job
 * set (the hook waits, runtime.wait "io", then calls result), MG_API_EPHASE (no
 * hook that may wait runs: check in place) or MG_API_ENOMEM. result: what
 * mg_api_crypt_check says (the job is gone then), or MG_API_EAGAIN (wait again).
 * A job whose hook is dropped is freed when its request ends. */
typedef struct mg_crypt_job_s mg_crypt_job_t;
int mg_api_crypt_begin(const char *pw, size_t pwlen, const char *hash, size_t hlen, mg_crypt_job_t **job);
int mg_api_crypt_result(mg_crypt_job_t *job);
/* The consumer an authentication policy found (copied; 1 to 256 bytes, else
 * MG_API_EINVAL): the access log line gets it as its `consumer` field. */
int mg_req_set_consumer(mg_req_t *r, const char *p, size_t len);
/* The nth (0-based) name of a kind in the connection's client certificate
 * (verified or not: look at req.tls.client_verified): MG_TLS_NAME_CN the subject's
 * common names, MG_TLS_NAME_DNS the subjectAltName DNS names. Returns how many
 * there are (> nth), or MG_API_ENOTFOUND (plain HTTP, no certificate, no such name). */
enum { MG_TLS_NAME_CN = 0, MG_TLS_NAME_DNS = 1 };
int mg_req_tls_client_name(mg_req_t *r, int kind, size_t nth, mg_str_t *out);
/* ---- i14-cors: policies cors, headers, limit_conn ---- */
/* Regular expressions (core/rx.h has the contract): compiled at config load by the
 * headers policy, owned by Lua (mg_rx_free through ffi.gc). */
typedef struct mg_rx_s mg_rx_t;
mg_rx_t *mg_rx_new(const char *pat, size_t len, unsigned flags, char *err, size_t errlen, size_t *erroff);
void mg_rx_free(mg_rx_t *rx);
int mg_rx_groups(const mg_rx_t *rx);
int mg_rx_jit(const mg_rx_t *rx);
int mg_rx_match(mg_rx_t *rx, const char *s, size_t len, size_t *ovec, size_t n_pairs);
/* limit_conn: counts the request in `key` of the dictionary (+1, atomically, any
 * number of workers) and keeps it counted until the request ends, however it ends
 * (answered, client gone mid-response, upstream failed): then -1, once. Returns 1
 * (held; *count = the count with it), 0 when that count would pass `limit` (not
 * counted; *count = the count it saw), MG_API_EPHASE outside the request hook,
 * MG_API_ENOMEM, or a negative MG_SHDICT_* code (dictionary full, not a number). */
int mg_req_hold(mg_req_t *r, mg_shdict_t *d, const char *key, size_t klen, double limit, double *count);
/* ---- i14-jwt: the jwt policy's signature checks (core/jws.h has the contract:
 * keys parsed once, owned by Lua through ffi.gc + mg_api_jws_key_free; verify:
 * 1 valid, 0 not, -1 an algorithm that does not go with the key's type). */
typedef struct mg_jws_key_s mg_jws_key_t;
mg_jws_key_t *mg_api_jws_key_hmac(const char *secret, size_t len);
mg_jws_key_t *mg_api_jws_key_pem(const char *pem, size_t len);
mg_jws_key_t *mg_api_jws_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen);
mg_jws_key_t *mg_api_jws_key_ec(int crv, const unsigned char *x, size_t xlen, const unsigned char *y,
                                size_t ylen);
mg_jws_key_t *mg_api_jws_key_ed25519(const unsigned char *x, size_t xlen);
int mg_api_jws_key_type(const mg_jws_key_t *k);
void mg_api_jws_key_free(mg_jws_key_t *k);
int mg_api_jws_verify(const mg_jws_key_t *k, int alg, const char *input, size_t ilen,
                      const unsigned char *sig, size_t slen);
/* ---- i14-waf-core: the waf policy ---- */
/* The rule ids the WAF matched (copied; 1 to 512 bytes, else MG_API_EINVAL): the
 * access log line gets them as its `waf` field. */
int mg_req_set_waf(mg_req_t *r, const char *p, size_t len);
/* The most req:read_body may hold for this request (the route's buffer_body,
 * limits.body_size, whichever is smaller), in bytes; MG_API_EPHASE when the
 * request is gone. A body announced larger fails the read (413). */
double mg_req_body_bound(mg_req_t *r);
/* The request-target as the client sent it (before normalization; the path part of
 * an absolute-form target), kept when a waf policy is configured (or forward_path =
 * "as_received"); MG_API_ENOTFOUND when it was not kept. */
int mg_req_orig_target(mg_req_t *r, mg_str_t *out);

#endif
