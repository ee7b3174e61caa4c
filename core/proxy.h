/* One request/response exchange: routing, direct answers, the upstream request
 * head, streaming bodies both ways, the response head, the access log.
 *
 * Ownership: the downstream connection owns its current request (conn->req). The
 * request holds a reference on the config generation it started with, and at most
 * one upstream connection (req->upc, with upc->req pointing back) until the
 * response is complete or the exchange fails. */
#ifndef MG_PROXY_H
#define MG_PROXY_H

#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "arena.h"
#include "buf.h"
#include "config.h"
#include "filter.h"
#include "h1.h"
#include "http.h"
#include "luavm.h"
#include "mg.h"
#include "timer.h"

/* The connection an exchange answers on, as the exchange sees it. The connection
 * (conn.c) owns it, fills it in at accept and keeps it true; the exchange reads
 * it, sets only the two flags marked so, and acts on the connection through the
 * ops. Every op may end the connection: check `closed` afterwards. */
typedef struct {
  void (*flush)(void *conn);             /* write what is queued now */
  void (*done)(void *conn);              /* the response is queued in full: on to the next request */
  void (*close)(void *conn);             /* end now */
  void (*close_after_flush)(void *conn); /* end once what is queued is written */
  void (*reading)(void *conn);           /* up_blocked changed: reconsider reading */
  void (*tunnel)(void *conn);            /* a 101 went out: from now on the client's bytes
                                            go to mg_proxy_tunnel_in as they are */
  void (*local_addr)(void *conn);        /* fill `local` in (getsockname), once asked */
  /* the head phase waited (mg_proxy_head gave MG_PROXY_WAIT) and may go on: the
   * connection calls mg_proxy_head_resume, outside any parse */
  void (*resume)(void *conn);
  /* a hook of the head phase reads the body (req:read_body; down.body_pull is
   * set): what input is there is parsed as body now, and while the hook waits
   * the body's bytes keep going to the exchange (mg_proxy_body, then
   * mg_proxy_request_end); what follows the body waits its turn. Only while
   * the head phase runs (inside mg_proxy_head or mg_proxy_head_resume). */
  void (*pull_body)(void *conn);
} mg_down_ops_t;

/* A socket address of either family, in the room of an IPv6 one (a
 * sockaddr_storage would add 200 bytes to every connection). */
typedef union {
  struct sockaddr sa; /* sa_family AF_UNSPEC (0): not known */
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} mg_sockaddr_t;

typedef struct {
  void *conn;
  const mg_down_ops_t *ops;
  mg_outq_t *out;          /* the client's output queue: responses are appended here */
  struct mg_tp_s *tp;      /* the client's transport: a body may be spliced to it */
  const char *client;      /* "ip:port" or "[ip6]:port" of the peer */
  mg_str_t ip;             /* the peer's address alone */
  /* The same client as a socket address, and the address it connected to, for a
   * PROXY protocol header sent upstream. A PROXY header the connection began with
   * sets both (its source and destination); else peer is the socket's peer and
   * local stays unknown until the exchange asks for it (ops->local_addr): one
   * getsockname for the connections that need it, not one per accept. */
  mg_sockaddr_t peer, local;
  const char *listener;    /* the listener's name, NULL when unnamed */
  const char *hsts;        /* the listener's Strict-Transport-Security line, NULL: none */
  struct ssl_st *ssl;      /* TLS session, NULL: plain */
  int redirect_https;      /* the listener redirects every request to https on this port */
  unsigned close_after : 1; /* no more requests on the connection (the exchange may set it) */
  unsigned up_blocked : 1;  /* the upstream does not take the body now (set by the exchange) */
  unsigned in_parser : 1;   /* inside a parse: the connection flushes after it */
  unsigned closed : 1;      /* the connection is gone: stop */
  unsigned body_pull : 1;   /* the head phase reads the body (set by the exchange, which
                               clears it when the read ends) */
} mg_down_t;

enum { MG_RS_NONE, MG_RS_HEAD, MG_RS_DONE }; /* response progress toward the client */

struct mg_req_s {
  mg_down_t *down;        /* the connection it answers on */
  mg_worker_t *w;
  struct mg_wgen_s *wg;   /* the worker's generation (Lua state, balancer state); ref held */
  mg_gen_t *gen;          /* = wg->gen */
  mg_lreq_t lua;          /* its Lua side: coroutine, hook running now (luavm.h) */
  int pick;               /* server chosen by the balance hook, -1 none */
  mg_arena_t arena;
  char id[17];
  uint64_t t_start;       /* uv_hrtime() at the first byte */
  uint64_t t_up_start, t_up_end; /* the first try of a server (its t_try), the response's end */

  /* request head */
  mg_head_t head;
  int method;             /* the upstream request's (req:set_method may change it) */
  int down_method;        /* the client's: the framing of what goes back to it */
  int http_minor;         /* 0 or 1 (major is always 1) */
  mg_str_t target;        /* what goes on the upstream request line: path[?query] */
  mg_str_t path;          /* without the query */
  mg_str_t raw_target;    /* forward_path = "as_received": the target as the client sent
                             it (what goes upstream); NULL otherwise or once a hook set one */
  mg_str_t host;          /* Host header or absolute-form authority, as sent */
  mg_str_t host_name;     /* host without port and trailing dot: what routes match */
  mg_str_t client_ip;     /* the client's address: the peer's, or taken from the
                             X-Forwarded-For of a trusted proxy (trusted_proxies) */
  unsigned trusted : 1;   /* the peer is one of trusted_proxies */
  mg_str_t upgrade_proto; /* the Upgrade header's value (copied: Connection drops it) */
  mg_str_t connection;    /* Connection header value (names of extra hop-by-hop headers) */
  int body;               /* MG_BODY_* */
  uint64_t content_length;
  uint64_t body_read;     /* decoded body bytes received */
  uint64_t bytes_in;      /* raw bytes of this request */
  unsigned keepalive : 1;       /* the client allows another request after this one */
  unsigned client_close : 1;    /* the client itself asked to close after this one */
  unsigned expect_continue : 1;
  unsigned complete : 1;        /* the whole request has been read */
  unsigned discard_body : 1;    /* answered directly: read and drop the body */
  unsigned absolute_form : 1;   /* the target carried the authority (it wins over Host) */
  unsigned stale_retry : 1;
  unsigned upgrade : 1;         /* the client asks to upgrade (Upgrade + Connection: upgrade) */
  unsigned tunnel : 1;          /* a 101 came: bytes pass as they are, both ways */
  unsigned upreq_hooked : 1;    /* the upstream_request hook ran */
  int hook_wait;                /* the head phase waits in this hook (MG_HOOK_*+1; 0: none) */
  int hook_rc;                  /* how the hook that waited ended (luavm.h: 0, -1, MG_LUA_TIMEOUT) */
  unsigned wait_head : 1;       /* that wait holds the head phase (the connection parses no
                                   further): balance and upstream_request waits started there */
  unsigned logged : 1;          /* the access log line is written */
  struct mg_filter_s *body_wait; /* the body hook's filter, while a piece waits in it */
  int up_status, up_has_len;    /* the upstream response head, while the response hook waits */
  uint64_t up_len;
  mg_req_t *next_log, *prev_log; /* in the worker's list while the log hook waits (the
                                    connection went on without the request) */

  /* The body as a hook read it (req:read_body) or replaced it (req:set_body).
   * bb is malloc'd, the request's own: freed when it ends (or the read fails). */
  char *bb;
  size_t bb_len, bb_cap;
  uint64_t bb_max;              /* the read's bound: the route's buffer_body, limits.body_size */
  const char *bb_err;           /* the read failed: why (a static string), NULL: it did not */
  int bb_status;                /* and the status the request gets if its hook does not answer */
  mg_lwait_t bb_wait;           /* what the hook waits on while the body comes */
  unsigned bb_on : 1;           /* reading: body pieces go into bb, not upstream */
  unsigned bb_waiting : 1;      /* the hook waits for the read (bb_wait) */
  unsigned bb_done : 1;         /* bb holds the whole body the client sent */
  unsigned bb_set : 1;          /* bb is a hook's body: the client's is read and dropped */
  unsigned bb_primed : 1;       /* the upstream body's framing is decided (body_prime) */
  unsigned method_set : 1;      /* req:set_method changed the method */
  int up_body;                  /* MG_BODY_*: the upstream request's framing */
  uint64_t up_length;           /* its Content-Length (MG_BODY_LENGTH) */

  /* upstream */
  const mg_route_t *route;
  int upstream;           /* index in gen->upstreams, -1 when answered directly */
  int server;             /* index of the server in use */
  mg_tried_t tried;       /* servers already tried (balance.h) */
  int active_on;          /* server index + 1 whose active count this attempt holds
                             (balance.h mg_peer_begin; the balancer is the upstream's, which
                             req:set_upstream cannot change once a server is tried); 0: none */
  uint64_t t_try;         /* uv_hrtime() when this attempt's server was picked (the EWMA's sample) */
  int timed_out;          /* a connect attempt timed out (-> 504 when all fail) */
  mg_upconn_t *upc;
  mg_outq_t upq;          /* upstream head + body waiting for a connection */
  mg_fchain_t req_chain;  /* the request body's filters, ending in the upstream queue */
  mg_fchain_t resp_chain; /* the response body's filters, ending in the client's queue */
  uint64_t body_sent;     /* body bytes moved to an upstream connection */

  /* response */
  mg_head_t rhead;
  int status;
  int rstate;             /* MG_RS_* */
  unsigned rchunked : 1;  /* re-chunking the body for the client */
  unsigned rnobody : 1;
  uint64_t bytes_out;
  mg_req_t *next_spare;   /* in the worker's spare list */

  /* balance = "hash" and sticky sessions (appended: i12-hash) */
  uint64_t hash;          /* the request's key hashed (valid once hash_ok) */
  mg_str_t hkey;          /* the key a hash_key function gave (arena), when hkey_set */
  int sticky_srv;         /* the server the sticky cookie names + 1; 0: none or unknown */
  unsigned hash_ok : 1;
  unsigned hkey_set : 1;
  unsigned hkey_ran : 1;  /* the hash_key function was called (once per request) */
  unsigned sticky_seen : 1; /* the cookie was looked for */
  /* i12-retry: retries and the upstream's circuit breakers (proxy.c) */
  mg_timer_t rtimer;      /* the backoff before a retry (in_backoff), else per_try_timeout */
  int tries;              /* attempts started on servers */
  int ntried;             /* servers in `tried` */
  int backoffs;           /* backoffs waited so far: the exponent of the next */
  unsigned rq_counted : 1;  /* counted in the balancer's rq_active (request_done uncounts) */
  unsigned retry_held : 1;  /* holds one of the balancer's retries_active */
  unsigned connecting : 1;  /* counted in the balancer's pending */
  unsigned in_backoff : 1;  /* rtimer is the backoff: no connection, no attempt */
  unsigned rb_keep : 1;     /* the body, as sent upstream, is kept in rb for a resend */
  unsigned rb_over : 1;     /* it outgrew retry.buffer: rb is gone, no resend once sent */
  char *rb;                 /* malloc'd, the request's own (freed when it ends) */
  size_t rb_len, rb_cap;
  size_t upq_head;          /* upq begins with an upstream head this long, built for an
                               earlier attempt (0: none): rebuilt for the next one */
  /* i13-compress: the response's content coding (proxy.c "compression") */
  unsigned compress_off : 1; /* res:compress(false): sent as it comes */
  struct mg_encoder_s *enc;  /* malloc'd, the request's own while it encodes; freed at
                                the body's end or when the request ends */
  struct mg_decoder_s *dec;  /* decode = true: the same, while it decodes */
  /* issue 13: the cache (proxy.c "the cache"; core/cache.h) */
  struct mg_cwriter_s *cwriter; /* storing this response: committed at its end, else
                                   aborted when the request ends (req_release) */
  mg_str_t ckey;            /* the primary key (arena) */
  mg_str_t cvary, chead;    /* the object's secondary key and stored head (arena) */
  struct mg_cfill_s *cfill; /* the meta it is stored with (arena) */
  int64_t c_req_time;       /* seconds: when the lookup missed (RFC 9111 request_time) */
  int c_why;                /* why the response is not stored (MG_CP_NS_*), 0: it is */
  uint8_t c_fwd;            /* the Cache-Status fwd of the forwarded request (MG_CS_FWD_*) */
  unsigned c_on : 1;        /* the route caches and this request looked the store up */
  unsigned c_big : 1;       /* not stored: bigger than cache.max_object */
  struct mg_cobj_s *c_obj;  /* revalidating this stale object with the origin, or
                               keeping it for stale-if-error (a reference, dropped
                               in req_release) */
  unsigned c_sie : 1;       /* c_obj may answer when the origin fails (stale-if-error) */
  /* i13-api: the cache_key hook (proxy.c cache_begin) */
  mg_str_t ckey_user;       /* the key the hook gave (arena), when ckey_user_set */
  unsigned ckey_user_set : 1;
  /* issue 14: the policy that answered the request (arena; the access log's `policy`) */
  mg_str_t policy;
  /* i14-auth: the consumer an authentication policy found (arena; the access log's `consumer`) */
  mg_str_t consumer;
  /* i14-waf-core: the WAF's rule ids (arena; the access log's `waf`) */
  mg_str_t waf;
  /* i14-waf-core: the target as received when it was normalized into a copy
   * (gen->keep_target, forward_raw, absolute form); NULL when normalized in place */
  mg_str_t orig_target;
  /* i14-cors: counters in shared dictionaries this request holds (limit_conn), in
   * the arena; each is decremented once when the request ends, whatever the way
   * (answered, client gone, upstream failed): mg_req_holds_release */
  struct mg_hold_s *holds;
  /* i13-range: ranges and compression of answers from the store (proxy.c "the cache") */
  unsigned c_rfetch : 1;    /* route cache.range_fetch: Range and If-Range are not sent
                               upstream; the full 200 is stored and sliced for the client */
  unsigned c_chunked : 1;   /* a hit encoded for the client goes chunked */
  uint64_t c_from, c_to;    /* the bytes [from, to) of the stored body a hit sends */
  unsigned c_dated : 1;     /* the hit's head has its Date line (answer() adds none) */
  /* i13-collapse: request collapsing and stale-while-revalidate (proxy.c "the
   * cache", core/cflight.h) */
  struct mg_cflight_s *c_flight; /* the fetch of ckey this request leads (c_lead) or
                                    waits for (c_waiting): a reference, given back
                                    when it ends (cache_flight_end) */
  struct mg_cwaiter_s *c_node;   /* while waiting: its node in the fetch's list (arena) */
  mg_req_t *c_wnext, *c_wprev;   /* while waiting: in the worker's cache_waits */
  mg_timer_t c_timer;            /* while waiting: the route's cache_lock_ms */
  int c_outcome;                 /* how the fetch it waited for ended (MG_CFLIGHT_*) */
  int64_t c_wait_since;          /* seconds: when it began to wait (its first lookup) */
  unsigned c_lead : 1;           /* leads the fetch of its key: says how it ended */
  unsigned c_waiting : 1;        /* parked until the fetch ends or the bound passes */
  unsigned c_waited : 1;         /* waited once: looks up again, never waits again */
  unsigned c_refresh : 1;        /* a stale-while-revalidate refresh: no client */
  unsigned c_refresh_tls : 1;    /* and the client it copies came over TLS (down.ssl is NULL) */
};

/* Creates the request for a new message on conn (llhttp on_message_begin). */
mg_req_t *mg_req_new(mg_worker_t *w, mg_down_t *down);
/* Ends the request (log hook, access log) and keeps its memory for the next one. */
void mg_req_free(mg_req_t *r);
/* i14-cors: one counter a request holds in a shared dictionary (mg_req_hold in
 * api.c counts it; mg_req_holds_release gives back every one, once: the end of
 * the request, however it ends). */
struct mg_hold_s {
  struct mg_hold_s *next;
  struct mg_shdict_s *d;
  size_t klen;
  char key[];
};
void mg_req_holds_release(mg_req_t *r);
/* Drops the log hooks still waiting (worker exit). */
void mg_proxy_drop_logs(mg_worker_t *w);
/* Frees a spare request's memory (worker exit). */
void mg_req_dispose(mg_req_t *r);

/* The head is parsed: validate, route, answer or start the upstream exchange.
 * Returns 0, or an HTTP status (4xx/5xx) to answer with before closing. */
int mg_proxy_head(mg_req_t *r);
/* mg_proxy_head's answer while a hook of the head phase waits (mg.sleep): the
 * connection parses no further until down->ops->resume, then calls
 * mg_proxy_head_resume, which answers as mg_proxy_head does (and may wait again). */
#define MG_PROXY_WAIT (-1)
int mg_proxy_head_resume(mg_req_t *r);
/* A piece of decoded request body. 0, or a status as above. */
int mg_proxy_body(mg_req_t *r, const char *p, size_t len);
/* After a read: sends what the read queued for the upstream, in one write, and
 * stops reading the client if the upstream is not keeping up. */
void mg_proxy_request_flush(mg_req_t *r);
/* The request is fully read. */
void mg_proxy_request_end(mg_req_t *r);
/* While a hook reads the body (down.body_pull): the client's body stalled past
 * timeouts.client_body, or its framing is bad (status 400, `why` for the log). The read fails; the hook
 * sees it. */
void mg_proxy_body_failed(mg_req_t *r, int status, const char *why);
/* req:read_body: 0 when the whole body is in r->bb (or there is none),
 * 1 when the running hook is to wait and ask again, -1 with *why
 * when the read failed ("body too large", "timeout", ...). */
int mg_proxy_read_body(mg_req_t *r, const char **why);
/* req:set_body: the upstream gets p[0..len) (copied) with a Content-Length,
 * whatever the client sent (its body is read and dropped). 0 or MG_ENOMEM. */
int mg_proxy_set_body(mg_req_t *r, const char *p, size_t len);
/* Answers with a complete response: `head` is the status line and header lines
 * (no blank line, no Connection header). */
void mg_proxy_answer(mg_req_t *r, int status, const char *head, size_t hlen, const char *body,
                     size_t blen);
/* Answers with a short error page and marks the connection for closing if
 * `close` (always when the request was not fully read). Safe at any point before
 * the response head went out; after it, the connection is just closed. */
void mg_proxy_error(mg_req_t *r, int status, int close);
/* Abandons the exchange (client gone): closes the upstream connection if any. */
void mg_proxy_abort(mg_req_t *r);

/* A tunnel (after a 101): bytes from the client, and the client's half-close. */
void mg_proxy_tunnel_in(mg_req_t *r, const char *p, size_t len);
void mg_proxy_tunnel_eof(mg_req_t *r);
/* The client's output queue drained: resume reading the upstream. */
void mg_proxy_client_drained(mg_req_t *r);

#endif
