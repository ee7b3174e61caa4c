/* A config generation: everything proxy.lua declared, resolved and frozen. Built by
 * the main thread (mg_config_load), then only read, by every worker; refcounted so a
 * later reload can swap it while in-flight requests keep the one they started on. */
#ifndef MG_CONFIG_H
#define MG_CONFIG_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "balance.h"
#include "cidr.h"
#include "compress.h"
#include "mg.h"
#include "tls.h"

typedef struct {
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char text[64]; /* "ip:port" as written in logs */
  char *name;    /* listener name or NULL */
  mg_tls_server_t *tls; /* NULL: plain HTTP */
  int deferred;         /* TCP_DEFER_ACCEPT: accepted once the client's first bytes are in */
  int proxy_protocol;   /* a PROXY protocol v1/v2 header comes first (from trusted_proxies
                           only): it gives the client's address */
  int redirect_https;   /* plain listener answering everything with a redirect to
                           https on this port; 0: off */
  char *hsts;           /* TLS listener: "Strict-Transport-Security: ...\r\n", added to
                           every response on it; NULL: off */
} mg_listen_cfg_t;

typedef struct {
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char text[64]; /* "ip:port": logs only, never sent to clients; the server's key
                    in its balancer */
  int weight;    /* as configured or added (the current one: the peer's weight) */
  int from;      /* index in the upstream's names it was resolved from; < 0: none */
  int dups;      /* the same address listed again in `servers` (dyn.c) */
} mg_server_t;

/* A host name in an upstream's `servers`, re-resolved every `resolve` seconds. */
typedef struct {
  char *host;
  int port, weight;
} mg_upname_t;
/* i12-health: an upstream's active checks (health = {...}; core/health.c) */
enum { MG_HEALTH_NONE, MG_HEALTH_HTTP, MG_HEALTH_TCP };
typedef struct {
  int type;               /* MG_HEALTH_* */
  char *path;             /* http: the request target */
  char *host;             /* http: the Host header; NULL: the server's "ip:port" */
  int expect[16];         /* statuses that pass; none (nexpect 0): any 2xx or 3xx */
  int nexpect;
  uint64_t interval_ms, timeout_ms;
  int rise, fall;         /* results in a row that bring a server up / take it down */
} mg_health_cfg_t;

typedef struct {
  char *name;
  mg_balancer_t *bal;        /* the servers (mg_upstream_server below), their shared
                                state and the policy picking them; built with the
                                generation, which holds a reference (a reload may
                                adopt it); NULL for mg.http's ad hoc upstreams */
  int keepalive;             /* max idle pooled connections per server per worker */
  uint64_t keepalive_ms;
  mg_tls_client_t *tls;      /* NULL: plain HTTP to the servers */
  int splice;                /* response bodies may be spliced to plain clients (transport.h) */
  int proxy_protocol;        /* 0: none; 1 or 2: every new connection starts with a
                                PROXY protocol header of that version naming the
                                client (such connections are never pooled) */
  /* balance = "hash": what is hashed (hash_key; its name points into hash_spec) */
  mg_hash_key_t hash_key;
  char *hash_spec;
  int hash_fn;               /* hash_key is a Lua function: the balance phase runs it
                                (mg_req_set_hash_key) */
  /* sticky = {...}: the cookie naming the server (its token: balance.h), and the
   * attributes its Set-Cookie carries ("; Path=/; HttpOnly..."); NULL: off */
  char *sticky_cookie;
  char *sticky_attrs;
  mg_health_cfg_t health;    /* i12-health: active checks (type MG_HEALTH_NONE: off) */
  /* i12-retry: retries, circuit breakers and timeouts (docs/config.md "Retries,
   * circuit breakers and timeouts"); lua/moongate/init.lua fills in the defaults */
  int retry_tries;           /* attempts in all, the first included; 0: each server once */
  unsigned retry_on;         /* MG_RETRY_* */
  int retry_status[16];      /* statuses whose response is discarded and the request sent again */
  int nretry_status;
  uint64_t per_try_ms;       /* an attempt's head must come within it; 0: no bound */
  uint64_t backoff_base_ms, backoff_max_ms;
  double retry_budget;       /* retries in flight <= budget x requests in flight (at least
                                MG_RETRY_MIN_CONCURRENCY) */
  uint64_t retry_buffer;     /* request body bytes kept to be sent again */
  int max_connections, max_pending, max_requests; /* circuit breakers; 0: none */
  uint64_t connect_ms, read_ms, write_ms;         /* the upstream's timeouts; 0: the global ones */
  /* i12-dyn */
  char *key;                 /* the normalised config (init.lua): equal keys across a
                                reload keep the balancer (dyn.c mg_dyn_adopt) */
  uint64_t resolve_ms;       /* re-resolve `names` this often; 0: never */
  mg_upname_t *names;        /* host names in `servers` (IP literals are not) */
  int nnames;
} mg_upstream_cfg_t;

/* ---- i12-dyn: an upstream's servers, by id, held by its balancer ----
 * Names are resolved by mg_upstream_lookup: an IP literal as it is; a name listed
 * in the file $MOONGATE_HOSTS_FILE (hosts(5) format; a test and operations
 * override, read at each resolution) gets the addresses listed there; any other
 * name goes to getaddrinfo (blocking, at load on the main thread, as listeners'
 * names always were; dyn.c re-resolves with uv_getaddrinfo). A name gives every
 * address of the first answer's family. */
#define MG_UPSTREAM_ADDRS 64 /* addresses kept per name */

/* An upstream's server `i` (an id: 0 <= i < mg_upstream_nservers(u)). */
static inline const mg_server_t *mg_upstream_server(const mg_upstream_cfg_t *u, int i) {
  return (const mg_server_t *)mg_balance_data(u->bal, i);
}
/* Ids handed out so far (drained and removed servers keep theirs). */
static inline int mg_upstream_nservers(const mg_upstream_cfg_t *u) { return mg_balance_count(u->bal); }

/* The addresses of host:port, at most `max`: their count, 0 when the name has
 * none, -1 when the lookup failed. Blocking (main thread at load only). */
int mg_upstream_lookup(const char *host, int port, struct sockaddr_storage *out, int max);

/* Adds server `sa` with `weight` to u's balancer (`from`: index in u->names of
 * the name it came from, -1 none, MG_UPSTREAM_LISTED an IP literal of `servers`)
 * without publishing (`publish` 0; the caller calls mg_balance_rebuild) or
 * publishing. The id, or MG_BALANCE_*. Unpublished, an address there already
 * is another server (key "ip:port#k"): `servers` may list one several times. */
#define MG_UPSTREAM_LISTED (-2)
int mg_upstream_add(mg_upstream_cfg_t *u, const struct sockaddr *sa, int weight, int from, int publish);

/* "ip:port" / "[ip6]:port" of sa (a server's key). */
void mg_upstream_text(const struct sockaddr *sa, char *text, size_t len);
socklen_t mg_upstream_addrlen(const struct sockaddr *sa);
/* The addresses $MOONGATE_HOSTS_FILE lists for host (the port set): their count,
 * or -1 when the file does not name host (or is not set). */
int mg_upstream_hosts_file(const char *host, int port, struct sockaddr_storage *out, int max);
/* Appends sa with this port to out[0..n) unless there, or of another family than
 * out[0], or full: the new count. */
int mg_upstream_push_addr(struct sockaddr_storage *out, int n, int max, const struct sockaddr *sa, int port);


/* i12-split: how a route spreads its requests over several upstreams (docs/config.md
 * "Traffic split"). Built with the generation on the main thread, read by every
 * worker, freed with the generation. A header rule is looked at first; requests it
 * does not take follow the weighted list (or the route's one upstream). */
typedef struct {
  int *ups;                  /* nups upstream indices (into gen->upstreams), weighted... */
  int nups;
  mg_balancer_t *bal;        /* ...by this round robin over their weights: one sequence per
                                route for the whole process (its counter is the only write);
                                NULL with ups: no weighted list */
  mg_str_t header;           /* lower-case header name; len 0: no header rule */
  mg_str_t *values;          /* nvalues exact header values, each sending to value_ups[i] */
  int *value_ups;
  int nvalues;
  int present;               /* the header present with no listed value: this upstream;
                                -1: such requests follow the weights */
} mg_split_t;

/* i13-compress: a route's compress settings (docs/compression.md), completed by
 * the Lua side (lua/moongate/private/loader.lua) over mg.config's and the defaults. */
typedef struct {
  uint64_t min_length;       /* bodies of a known length under it are sent as they are */
  int level[MG_CODING_MAX];  /* by MG_CODING_* */
  int prefer[MG_CODING_MAX]; /* the codings offered, best first */
  int nprefer;
  mg_str_t *types;           /* lower case; a wildcard subtype ("text/" then "*") is kept as the prefix "text/" */
  int ntypes;
} mg_compress_cfg_t;

/* retry.on conditions (statuses apart) */
enum { MG_RETRY_CONNECT = 1, MG_RETRY_TIMEOUT = 2, MG_RETRY_RESET = 4 };
/* the budget's floor: this many retries may always be in flight (Envoy's
 * min_retry_concurrency) */
#define MG_RETRY_MIN_CONCURRENCY 3

typedef struct {
  char *listener;            /* NULL: every listener */
  char *host;                /* NULL: any host; "*.x" stored as ".x" with wildcard=1 */
  size_t host_len;
  int wildcard;
  char *path;
  size_t path_len;
  uint64_t methods;          /* bit (1 << llhttp method); 0 = any */
  unsigned hooks;            /* bit per MG_HOOK_* set in this route's `on` (and RESPOND) */
  uint64_t buffer_body;      /* bytes req:read_body may hold (MG_BUFFER_BODY by default) */
  int upstream;              /* index into gen->upstreams, -1 for respond */
  int status;                /* respond */
  char *resp_head;           /* respond: status line and header lines, prebuilt */
  size_t resp_head_len;
  char *resp_body;
  size_t resp_body_len;
  uint64_t hook_ms;          /* the route's timeouts.hook (ms), 0: the global one */
  mg_split_t *split;         /* i12-split: NULL: every request goes to `upstream` */
  /* i12-retry */
  int idempotent;            /* requests may be sent again whatever their method */
  uint64_t connect_ms, read_ms, write_ms; /* the route's timeouts; 0: the upstream's */
  mg_compress_cfg_t *compress; /* i13-compress: NULL: responses are not compressed */
  int decode;                  /* decode = true: gzip/br/zstd upstream bodies are decoded */
  int cache;                 /* issue 13: GET/HEAD answered from and stored into the cache */
  /* issue 13: the route's cache options (docs/cache.md "Per-route options") */
  uint64_t cache_lock_ms;    /* a miss waits this long for a fetch of its key under way; 0: no collapsing */
  int cache_range_fetch;     /* a range request that misses fetches the whole object */
  int cache_nttl;            /* cache_ttl[]: sorted by status */
  struct { int status; int64_t seconds; } cache_ttl[32]; /* lifetime when the response has none */
} mg_route_t;

/* A route's buffer_body when proxy.lua gives none (and for requests no route matched). */
#define MG_BUFFER_BODY (1024 * 1024)

typedef struct {
  uint64_t client_header, client_body, keepalive, send;
  uint64_t upstream_connect, upstream_read, upstream_write, drain, handshake; /* milliseconds */
  uint64_t request;         /* whole request, first byte to last body byte; 0: off */
  uint64_t hook;            /* a hook that waits (mg.sleep) must be done within it */
  uint64_t upstream_paused; /* an upstream connection paused for a client that does
                               not take the response */
  uint64_t tunnel;          /* an upgraded connection (WebSocket) with no byte either way */
} mg_timeouts_t;

typedef struct {
  size_t head_size, headers, uri_size;
  uint64_t body_size;          /* 0: unlimited */
  uint64_t body_rate;          /* bytes/s a request body must average after
                                  timeouts.client_body; 0: off */
  uint64_t connections;        /* open client connections per worker; 0: unlimited
                                  ("auto" in proxy.lua is resolved at load) */
  uint64_t connections_per_ip; /* per client address, all workers together; 0: off */
} mg_limits_t;

struct mg_gen_s {
  atomic_int refs;
  char *path;          /* the config file */
  char *source;        /* its text as read once by this load: every worker runs it */
  size_t source_len;
  int workers;
  char *access_log;    /* NULL: off */
  char *error_log;
  char *pid;
  int log_level;
  mg_timeouts_t timeouts;
  mg_limits_t limits;
  mg_listen_cfg_t *listeners;
  int nlisteners;
  mg_upstream_cfg_t *upstreams;
  int nupstreams;
  mg_route_t *routes;  /* most specific first (lua/moongate/router.lua) */
  int nroutes;
  unsigned hooks;      /* bit per MG_HOOK_* registered with mg.on */
  char **shared;       /* shared dictionary names, with their sizes in shared_size */
  size_t *shared_size;
  int nshared;
  int forward_raw;     /* forward_path = "as_received": the target goes upstream as the
                          client sent it (routing always uses the normalized path) */
  int keep_target;     /* i14-waf-core: keep the target as received for mg_req_orig_target
                          (a waf policy is configured): one arena copy per request */
  mg_cidr_t *trusted;  /* trusted_proxies: peers whose X-Forwarded-For/Forwarded/
                          X-Real-IP/X-Request-Id are believed; NULL: none */
  int watch;           /* reload when one of `files` changes */
  char **files;        /* proxy.lua and the files it required from its folder */
  int nfiles;
  struct mg_dyn_res_s *resolving; /* i12-dyn: the re-resolution timers (main thread) */
  /* issue 13: mg.config { cache = {...} } (or a route with cache = true): the store's
   * size (main.c makes it, core/cache.h) and the rules' options; cache_memory 0: none */
  uint64_t cache_memory, cache_max_object;
  int64_t cache_heuristic_max; /* seconds */
  int cache_allow_set_cookie;
  char *cache_path;          /* the disk store's folder (absolute); NULL: memory only */
  uint64_t cache_disk_size;  /* its byte cap */
};

/* Runs the config file in a fresh Lua state and builds a generation with one
 * reference, owned by the caller. On error returns MG_ECONFIG and writes a message
 * naming the file (and line and key when known) into err. */
int mg_config_load(const char *path, mg_gen_t **out, char *err, size_t errlen);
/* issue 14: `moongate -T`: loads the config at `path` (absolute) again in a Lua
 * state of its own and writes every route with its policy chain and hooks to `f`
 * (lua/moongate/private/explain.lua). 0, or MG_ECONFIG with the error in err. */
int mg_config_explain(const char *path, FILE *f, char *err, size_t errlen);
void mg_gen_ref(mg_gen_t *g);
void mg_gen_unref(mg_gen_t *g);

/* The route for a request, or NULL. host is the Host header (port allowed). */
const mg_route_t *mg_route_match(const mg_gen_t *g, const char *listener, int method,
                                 mg_str_t host, mg_str_t path);

/* Where the Lua library lives: $MOONGATE_LUA_DIR, else the build-time source dir. */
const char *mg_lua_dir(void);

#endif
