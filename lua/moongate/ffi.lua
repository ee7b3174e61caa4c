-- The one ffi.cdef: mirrors core/api.h, in the same order (spec/unit/ffi_spec.lua
-- checks that every function declared there is declared here with the same text).
local ffi = require "ffi"

ffi.cdef [[
typedef struct { const char *p; size_t len; } mg_str_t;
typedef struct mg_req_s mg_req_t;

enum {
  MG_API_ENOTFOUND = -30001,
  MG_API_EPHASE = -30002,
  MG_API_EINVAL = -30003,
  MG_API_ENOMEM = -30004,
  MG_API_EAGAIN = -30005,
};
enum { MG_HDR_SET = 0, MG_HDR_ADD = 1, MG_HDR_DEL = 2 };

typedef struct {
  mg_str_t method, path, query, host, client_ip, id, scheme;
  int http_minor;
  int route;
  int upstream;
} mg_req_info_t;

int mg_req_info(mg_req_t *r, mg_req_info_t *out);
typedef struct {
  mg_str_t version, cipher, sni, alpn, client_subject, client_issuer, client_fingerprint;
  int client_verified;
} mg_tls_info_t;
int mg_req_tls(mg_req_t *r, mg_tls_info_t *out);
int mg_req_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out);
size_t mg_req_header_count(mg_req_t *r);
int mg_req_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value);
int mg_req_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen, int op);
int mg_req_set_path(mg_req_t *r, const char *p, size_t len);
int mg_req_set_query(mg_req_t *r, const char *q, size_t len);
int mg_req_set_upstream(mg_req_t *r, const char *name, size_t len);
int mg_req_respond(mg_req_t *r, int status, const char *headers, size_t hlen, const char *body, size_t blen);
int mg_req_upstream_addr(mg_req_t *r, mg_str_t *out);
int mg_req_server_count(mg_req_t *r);
int mg_req_server_at(mg_req_t *r, int i, mg_str_t *addr, int *weight);
int mg_req_server_state(mg_req_t *r, int i, int *active, unsigned *ewma_us, int *fails);
int mg_req_set_server(mg_req_t *r, int i);

int mg_res_status(mg_req_t *r);
int mg_res_set_status(mg_req_t *r, int status);
int mg_res_header(mg_req_t *r, const char *name, size_t nlen, size_t nth, mg_str_t *out);
size_t mg_res_header_count(mg_req_t *r);
int mg_res_header_at(mg_req_t *r, size_t i, mg_str_t *name, mg_str_t *value);
int mg_res_set_header(mg_req_t *r, const char *name, size_t nlen, const char *value, size_t vlen, int op);

typedef struct mg_shdict_s mg_shdict_t;
mg_shdict_t *mg_shdict_find(const char *name, size_t len);
int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, int *type, double *num, char *buf, size_t bufcap, size_t *len);
int mg_shdict_set(mg_shdict_t *d, const char *key, size_t klen, int type, double num, const char *str, size_t slen, double ttl, int *evicted);
int mg_shdict_add(mg_shdict_t *d, const char *key, size_t klen, int type, double num, const char *str, size_t slen, double ttl, int *evicted);
int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double by, int has_init, double init, double ttl, double *out);
int mg_shdict_delete(mg_shdict_t *d, const char *key, size_t klen);

void mg_api_log(int level, const char *msg, size_t len);
double mg_api_now(void);
int mg_api_worker_id(void);
int mg_api_timer(double secs, int id);
void mg_api_timer_cancel(int id);

/* ---- mg.tcp (cosock.c) ---- */
typedef struct mg_cosock_s mg_cosock_t;
mg_cosock_t *mg_tcp_new(void);
void mg_tcp_free(mg_cosock_t *s);
void mg_tcp_settimeouts(mg_cosock_t *s, double connect_ms, double send_ms, double read_ms);
int mg_tcp_connect(mg_cosock_t *s, const char *host, size_t hlen, int port, const char *pool, size_t plen, int pool_size, const char *ca, size_t calen, const char **err);
int mg_tcp_result(mg_cosock_t *s, const char **err);
int mg_tcp_sslhandshake(mg_cosock_t *s, const char *name, size_t nlen, int verify, const char **err);
int mg_tcp_send(mg_cosock_t *s, const char *p, size_t len, int more, const char **err);
int mg_tcp_receive(mg_cosock_t *s, int mode, size_t n, mg_str_t *out, const char **err);
int mg_tcp_setkeepalive(mg_cosock_t *s, double idle_ms, int pool_size, const char **err);
int mg_tcp_close(mg_cosock_t *s);
int mg_tcp_reused(mg_cosock_t *s);

typedef struct {
  const char *host;
  size_t host_len;
  int port;
  int tls, verify;
  const char *ca;
  const char *sni;
  const char *head;
  size_t head_len;
  const char *body;
  size_t body_len;
  int is_head, idempotent, stream;
  double max_body;
  double timeout;
} mg_http_opts_t;
typedef struct {
  int status;
  mg_str_t err;
  mg_str_t body;
  mg_str_t headers;
} mg_http_res_t;
int mg_http_start(const mg_http_opts_t *o, uint32_t *slot, uint32_t *gen);
int mg_http_result(uint32_t slot, uint32_t gen, mg_http_res_t *out);
int mg_http_read(uint32_t slot, uint32_t gen, size_t max, mg_str_t *piece, mg_str_t *err);
void mg_http_close(uint32_t slot, uint32_t gen);

int mg_req_read_body(mg_req_t *r, mg_str_t *err);
int mg_req_body(mg_req_t *r, mg_str_t *out);
int mg_req_set_body(mg_req_t *r, const char *p, size_t len);
int mg_req_set_method(mg_req_t *r, const char *m, size_t len);

int mg_req_hash_want(mg_req_t *r);
int mg_req_set_hash_key(mg_req_t *r, const char *p, size_t len);

/* ---- i12-split ---- */
int mg_req_upstream_name(mg_req_t *r, mg_str_t *out);
/* i12-health */
int mg_req_server_flags(mg_req_t *r, int i);
/* i12-retry */
typedef struct {
  double requests;
  double retries;
  double retries_budget_exceeded;
  double overflow_connections, overflow_pending, overflow_requests;
  double active_requests, active_connections, pending, active_retries;
} mg_upstream_stats_t;
int mg_upstream_stats(const char *name, size_t len, mg_upstream_stats_t *out);
/* i12-dyn: mg.upstreams */
typedef struct {
  mg_str_t addr;
  int weight, active, fails;
  unsigned ewma_us;
  unsigned flags;
} mg_ups_server_t;
int mg_ups_count(void);
int mg_ups_name(int u, mg_str_t *out);
int mg_ups_find(const char *name, size_t len);
int mg_ups_add(int u, const char *addr, size_t len, int weight, int publish, mg_str_t *err);
int mg_ups_publish(int u);
int mg_ups_change(int u, const char *addr, size_t len, int op, int weight, mg_str_t *err);
int mg_ups_nservers(int u);
int mg_ups_server(int u, int id, mg_ups_server_t *out);
int mg_res_compress(mg_req_t *r, int on);
/* i13-api: mg.cache */
typedef struct {
  double objects, bytes, cap;
  double lookups, hits, misses, stores, replaced, rejected, evictions, too_big;
  double disk_objects, disk_bytes, disk_cap, disk_hits, disk_writes, disk_write_errors, disk_evictions,
      disk_corrupt;
} mg_cache_api_stats_t;
int mg_api_cache_purge(const char *s, size_t len);
int mg_api_cache_purge_prefix(const char *s, size_t len);
int mg_api_cache_stats(mg_cache_api_stats_t *out);
int mg_req_set_cache_key(mg_req_t *r, const char *p, size_t len);
/* issue 14 */
int mg_req_set_policy(mg_req_t *r, const char *p, size_t len);
/* ---- i14-ratelimit: policies ---- */
int mg_shdict_gcra(mg_shdict_t *d, const char *key, size_t klen, double interval, double capacity, double *wait, double *remaining);
typedef struct mg_cidr_s mg_cidr_t;
mg_cidr_t *mg_api_cidr_new(void);
int mg_api_cidr_add(mg_cidr_t *set, const char *text, size_t len);
int mg_api_cidr_match(const mg_cidr_t *set, const char *ip, size_t len);
size_t mg_api_cidr_count(const mg_cidr_t *set);
void mg_api_cidr_free(mg_cidr_t *set);
int mg_req_peer_ip(mg_req_t *r, mg_str_t *out);
/* ---- i14-auth ---- */
int mg_api_sha256(const char *p, size_t len, unsigned char out[32]);
int mg_api_ct_equal(const void *a, const void *b, size_t n);
int mg_api_crypt_supported(const char *hash, size_t hlen);
int mg_api_crypt_check(const char *pw, size_t pwlen, const char *hash, size_t hlen);
typedef struct mg_crypt_job_s mg_crypt_job_t;
int mg_api_crypt_begin(const char *pw, size_t pwlen, const char *hash, size_t hlen, mg_crypt_job_t **job);
int mg_api_crypt_result(mg_crypt_job_t *job);
int mg_req_set_consumer(mg_req_t *r, const char *p, size_t len);
int mg_req_tls_client_name(mg_req_t *r, int kind, size_t nth, mg_str_t *out);
/* ---- i14-cors: policies cors, headers, limit_conn ---- */
typedef struct mg_rx_s mg_rx_t;
mg_rx_t *mg_rx_new(const char *pat, size_t len, unsigned flags, char *err, size_t errlen, size_t *erroff);
void mg_rx_free(mg_rx_t *rx);
int mg_rx_groups(const mg_rx_t *rx);
int mg_rx_jit(const mg_rx_t *rx);
int mg_rx_match(mg_rx_t *rx, const char *s, size_t len, size_t *ovec, size_t n_pairs);
int mg_req_hold(mg_req_t *r, mg_shdict_t *d, const char *key, size_t klen, double limit, double *count);
/* ---- i14-jwt: core/jws.h ---- */
typedef struct mg_jws_key_s mg_jws_key_t;
mg_jws_key_t *mg_api_jws_key_hmac(const char *secret, size_t len);
mg_jws_key_t *mg_api_jws_key_pem(const char *pem, size_t len);
mg_jws_key_t *mg_api_jws_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen);
mg_jws_key_t *mg_api_jws_key_ec(int crv, const unsigned char *x, size_t xlen, const unsigned char *y, size_t ylen);
mg_jws_key_t *mg_api_jws_key_ed25519(const unsigned char *x, size_t xlen);
int mg_api_jws_key_type(const mg_jws_key_t *k);
void mg_api_jws_key_free(mg_jws_key_t *k);
int mg_api_jws_verify(const mg_jws_key_t *k, int alg, const char *input, size_t ilen, const unsigned char *sig, size_t slen);
/* ---- i14-waf-core ---- */
int mg_req_set_waf(mg_req_t *r, const char *p, size_t len);
double mg_req_body_bound(mg_req_t *r);
int mg_req_orig_target(mg_req_t *r, mg_str_t *out);
]]

-- name -> number: a hook's number is its position in moongate.hooks minus one
local hook_numbers = {}
for i, h in ipairs(require "moongate.hooks") do hook_numbers[h[1]] = i - 1 end

return {
  -- the namespace the functions above resolve in (the executable); the Lua modules
  -- call through this field, so a unit spec can put a stand-in in its place
  C = ffi.C,
  ENOTFOUND = -30001, EPHASE = -30002, EINVAL = -30003, ENOMEM = -30004, EAGAIN = -30005,
  HDR_SET = 0, HDR_ADD = 1, HDR_DEL = 2,
  -- hook numbers (C: MG_HOOK_*), both from the one list in moongate.hooks
  hooks = hook_numbers,
  HOOK_RESPOND = hook_numbers.respond,
}
