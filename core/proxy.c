#include "proxy.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <llhttp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include <lauxlib.h>

#include "compress.h"
#include "luavm.h"
#include "uri.h"
#include "balance.h"
#include "cache.h"
#include "cflight.h"
#include "log.h"
#include "shdict.h"
#include "upstream.h"
#include "wctx.h"

static int start_upstream(mg_req_t *r, int head);
static void hook_waited(void *owner, int rc);
static void bb_cancel(mg_lwait_t *op);
static int hook_wait_in(mg_req_t *r, int hook, int head);
static void up_ready(void *owner);
static int tunnel_start(mg_req_t *r, const mg_header_t *connection);
static const mg_up_events_t up_events;
static void rb_add(mg_req_t *r, const char *p, size_t n);
static void request_done(mg_req_t *r);
static const char *peer_text(const mg_req_t *r);

#define APPEND_LIT(q, lit) mg_outq_append((q), (lit), sizeof(lit) - 1)

/* A head writer: heads are written in many small pieces (a name, ": ", a value,
 * "\r\n"...), which gather here, on the stack, and go to the output queue in one
 * append when the head is done (hw_end), or whenever the room is full. Each
 * mg_outq_append is a call with a block check and a memcpy call of its own; a
 * piece here is a bounds check and a copy, inline for literals. The bytes that
 * reach the queue are the same. */
typedef struct {
  mg_outq_t *q;
  size_t len;
  char buf[2048];
} hw_t;

static void hw_spill(hw_t *w, const char *p, size_t n) {
  if (w->len) mg_outq_append(w->q, w->buf, w->len);
  w->len = 0;
  if (n >= sizeof(w->buf)) {
    mg_outq_append(w->q, p, n);
    return;
  }
  memcpy(w->buf, p, n);
  w->len = n;
}

static inline void hw_put(hw_t *w, const char *p, size_t n) {
  if (n > sizeof(w->buf) - w->len) {
    hw_spill(w, p, n);
    return;
  }
  if (n) memcpy(w->buf + w->len, p, n); /* n may be 0 with p NULL */
  w->len += n;
}

#define HW_LIT(w, lit) hw_put((w), (lit), sizeof(lit) - 1)

/* v in decimal (no printf on the request path) */
static void hw_uint(hw_t *w, uint64_t v) {
  char d[MG_U64_DEC];
  const char *p = mg_u64_dec(d, v);
  hw_put(w, p, (size_t)(d + sizeof(d) - p));
}

static inline void hw_begin(hw_t *w, mg_outq_t *q) {
  w->q = q;
  w->len = 0;
}

/* What is gathered goes to the queue. */
static void hw_end(hw_t *w) {
  if (w->len) mg_outq_append(w->q, w->buf, w->len);
  w->len = 0;
}

static int is_idempotent(int m) {
  return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_PUT || m == HTTP_DELETE ||
         m == HTTP_OPTIONS || m == HTTP_TRACE;
}

static const char hexdig[] = "0123456789abcdef";

/* A chunk's size line for a piece of len bytes; its length. */
static size_t chunk_line(char line[20], size_t len) {
  size_t n = 0;
  for (int shift = (int)(sizeof(size_t) * 8) - 4; shift >= 0; shift -= 4) {
    unsigned d = (unsigned)(len >> shift) & 15u;
    if (d || n || shift == 0) line[n++] = hexdig[d];
  }
  line[n++] = '\r';
  line[n++] = '\n';
  return n;
}

/* Queues a piece of body, as one chunk when re-framing chunked (both directions
 * decode the peer's framing and write their own). */
static void append_body(mg_outq_t *q, const char *p, size_t len, int chunked) {
  if (chunked) {
    char line[20];
    mg_outq_append(q, line, chunk_line(line, len));
  }
  mg_outq_append(q, p, len);
  if (chunked) APPEND_LIT(q, "\r\n");
}

/* ---------------- filter chains (filter.h) ---------------- */

/* Where bytes are queued for the upstream: the live connection's queue, or the
 * one that waits for a connection. */
static mg_outq_t *body_queue(mg_req_t *r);

/* The request chain's sink: the body goes upstream, framed as the upstream head
 * said (chunked as it came, or by its Content-Length). */
static int req_sink(void *ctx, const char *p, size_t n) {
  mg_req_t *r = ctx;
  append_body(body_queue(r), p, n, r->up_body == MG_BODY_CHUNKED);
  r->body_sent += n;
  if (r->rb_keep) { /* kept as sent, framing and all, for a resend (retry.buffer) */
    if (r->up_body == MG_BODY_CHUNKED) {
      char line[20];
      rb_add(r, line, chunk_line(line, n));
      rb_add(r, p, n);
      rb_add(r, "\r\n", 2);
    } else {
      rb_add(r, p, n);
    }
  }
  return 0;
}

static int req_sink_end(void *ctx) {
  mg_req_t *r = ctx;
  if (r->up_body == MG_BODY_CHUNKED) {
    APPEND_LIT(body_queue(r), "0\r\n\r\n"); /* flushed after the read */
    if (r->rb_keep) rb_add(r, "0\r\n\r\n", 5);
  }
  return 0;
}

/* The response chain's sink: the client's queue, framed as the head sent said. */
#define WRITE_THROUGH_MIN (16 * 1024)
static int resp_sink(void *ctx, const char *p, size_t n) {
  mg_req_t *r = ctx;
  mg_outq_t *q = r->down->out;
  /* a large piece framed by length goes out now, from where it was read, behind
   * the head: no copy into the queue (what the kernel does not take is queued) */
  if (!r->rchunked && n >= WRITE_THROUGH_MIN) {
    r->bytes_out += n;
    return mg_outq_write_through(q, p, n) < 0 ? -1 : 0;
  }
  size_t before = mg_outq_size(q);
  append_body(q, p, n, r->rchunked);
  r->bytes_out += mg_outq_size(q) - before;
  return 0;
}

static int resp_sink_end(void *ctx) {
  mg_req_t *r = ctx;
  if (r->rchunked) {
    APPEND_LIT(r->down->out, "0\r\n\r\n");
    r->bytes_out += 5;
  }
  return 0;
}

/* The `body` hook as a filter: each piece goes through the route's and the
 * global hooks; what they return goes on (nothing, when they return ""). */
static int lua_body(mg_filter_t *f, const char *p, size_t n) {
  mg_req_t *r = f->ctx;
  mg_str_t chunk = { p, n };
  int rc = mg_lua_hook(&r->lua, MG_HOOK_BODY, &chunk);
  if (rc == MG_LUA_WAIT) { /* the piece waits in the hook, and the rest behind it: the
                              upstream is held (nothing more is parsed or read) */
    r->body_wait = f;
    hook_wait_in(r, MG_HOOK_BODY, 0);
    if (r->upc) mg_upstream_hold(r->upc);
    return 0;
  }
  if (rc < 0) return -1;
  return mg_filter_pass(f, chunk.p, chunk.len);
}

static const mg_filter_ops_t lua_body_filter = {
  .name = "body hook", .body = lua_body, .changes_length = 1,
};

/* The `request_body` hook as a filter of the request chain: each piece, then
 * the end as an empty piece (Lua's `eof`), through the global and the route's
 * hooks; what they return goes on. It may not wait (mg_lua_hook says so). */
static int lua_req_body(mg_filter_t *f, const char *p, size_t n) {
  mg_req_t *r = f->ctx;
  mg_str_t chunk = { p, n };
  if (mg_lua_hook(&r->lua, MG_HOOK_REQUEST_BODY, &chunk) != 0) return -1;
  return mg_filter_pass(f, chunk.p, chunk.len);
}

static int lua_req_body_end(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  mg_str_t chunk = { "", 0 };
  if (mg_lua_hook(&r->lua, MG_HOOK_REQUEST_BODY, &chunk) != 0) return -1;
  if (mg_filter_pass(f, chunk.p, chunk.len) < 0) return -1; /* what it held back */
  return mg_filter_pass_end(f);
}

static const mg_filter_ops_t lua_req_body_filter = {
  .name = "request_body hook", .body = lua_req_body, .end = lua_req_body_end, .changes_length = 1,
};

/* ---- i13-compress: the response's content coding (docs/compression.md) ----
 * A filter after the body hook (which sees the body as the upstream sent it).
 * At the head it decides, from the route's settings, the response head and the
 * client's Accept-Encoding, whether the body is encoded: if not, it leaves the
 * chain, and the body goes on as before (no copy, Content-Length kept, splice
 * allowed). If so it sets Content-Encoding, Vary and a weak ETag; the body is
 * re-framed (chunked, or by the close for HTTP/1.0) because the filter changes
 * its length. */

/* True when the comma-separated header values of `name` in h list `token` (any
 * case; a "token=..." element counts: Cache-Control's no-transform has none). */
static int head_lists(const mg_head_t *h, const char *name, size_t nlen, const char *token, size_t tlen) {
  for (size_t i = 0; i < h->n; i++) {
    const mg_header_t *hd = &h->headers[i];
    if (!mg_http_name_is(hd->name, name, nlen)) continue;
    size_t pos = 0;
    mg_str_t el;
    while (mg_http_next_token(hd->value, &pos, &el)) {
      const char *eq = memchr(el.p, '=', el.len);
      if (eq) el = mg_http_trim((mg_str_t){ el.p, (size_t)(eq - el.p) });
      if (mg_http_name_is(el, token, tlen)) return 1;
    }
  }
  return 0;
}

/* True when the response's Content-Type is one of cfg's types. */
static int compress_type_ok(const mg_compress_cfg_t *cfg, const mg_head_t *h) {
  const mg_header_t *ct = mg_head_get(h, (mg_str_t){ "content-type", 12 });
  if (!ct) return 0;
  mg_str_t t = ct->value;
  const char *semi = memchr(t.p, ';', t.len);
  if (semi) t.len = (size_t)(semi - t.p);
  t = mg_http_trim(t);
  for (int i = 0; i < cfg->ntypes; i++) {
    mg_str_t want = cfg->types[i];
    int prefix = want.p[want.len - 1] == '/'; /* a wildcard subtype: a prefix */
    if (!prefix && mg_str_caseeq(t, want)) return 1;
    /* a wildcard does not take server-sent events: an encoder holds what it is
     * given (docs/compression.md), an event stream must flow */
    if (prefix && t.len > want.len && mg_str_caseeq((mg_str_t){ t.p, want.len }, want) &&
        !MG_NAME_IS(t, "text/event-stream"))
      return 1;
  }
  return 0;
}

/* The request's Accept-Encoding: its one field's value, or every field's joined
 * with ", " (in the arena). 0 when the request has none. */
static int accept_encoding(mg_req_t *r, mg_str_t *out) {
  size_t count = 0, total = 0;
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *hd = &r->head.headers[i];
    if (!MG_NAME_IS(hd->name, "accept-encoding")) continue;
    if (count++ == 0) *out = hd->value;
    total += hd->value.len + 2;
  }
  if (count <= 1) return (int)count;
  char *p = mg_arena_alloc(&r->arena, total);
  if (!p) return 1; /* the first field alone */
  size_t len = 0;
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *hd = &r->head.headers[i];
    if (!MG_NAME_IS(hd->name, "accept-encoding")) continue;
    if (len) p[len++] = ',', p[len++] = ' ';
    memcpy(p + len, hd->value.p, hd->value.len);
    len += hd->value.len;
  }
  *out = (mg_str_t){ p, len };
  return 1;
}

/* Vary gets Accept-Encoding: merged into what is there (one field), not twice,
 * and not at all after a Vary: *. */
static int compress_vary(mg_req_t *r) {
  mg_head_t *h = &r->rhead;
  if (head_lists(h, "vary", 4, "*", 1) || head_lists(h, "vary", 4, "accept-encoding", 15)) return 0;
  size_t total = sizeof("Accept-Encoding") - 1;
  for (size_t i = 0; i < h->n; i++)
    if (MG_NAME_IS(h->headers[i].name, "vary") && h->headers[i].value.len) total += h->headers[i].value.len + 2;
  char *p = mg_arena_alloc(&r->arena, total);
  if (!p) return MG_ENOMEM;
  size_t len = 0;
  for (size_t i = 0; i < h->n; i++) {
    const mg_header_t *hd = &h->headers[i];
    if (!MG_NAME_IS(hd->name, "vary") || !hd->value.len) continue;
    memcpy(p + len, hd->value.p, hd->value.len);
    len += hd->value.len;
    p[len++] = ',', p[len++] = ' ';
  }
  memcpy(p + len, "Accept-Encoding", 15);
  len += 15;
  return mg_head_set(h, &r->arena, (mg_str_t){ "Vary", 4 }, (mg_str_t){ p, len }, 0);
}

static int compress_out(void *ctx, const char *p, size_t n);
static const char *peer_text(const mg_req_t *r);

/* A strong ETag made weak: the bytes sent differ from the ones it names. */
static int weak_etag(mg_req_t *r) {
  mg_head_t *h = &r->rhead;
  const mg_header_t *etag = mg_head_get(h, (mg_str_t){ "etag", 4 });
  if (!etag || (etag->value.len >= 2 && etag->value.p[0] == 'W' && etag->value.p[1] == '/')) return 0;
  char *w = mg_arena_alloc(&r->arena, etag->value.len + 2);
  if (!w) return MG_ENOMEM;
  w[0] = 'W', w[1] = '/';
  memcpy(w + 2, etag->value.p, etag->value.len);
  return mg_head_set(h, &r->arena, (mg_str_t){ "ETag", 4 }, (mg_str_t){ w, etag->value.len + 2 }, 0);
}

/* A response that has no body to change (or a part of one). */
static int no_body_to_change(const mg_req_t *r) {
  int status = r->status;
  return r->down_method == HTTP_HEAD || r->method == HTTP_HEAD || status == 204 || status == 304 ||
         status == 206 || r->up_status == 204 || r->up_status == 304 || status < 200;
}

/* decode = true: the first filter of the chain, before the body hook. A body in
 * one coding moongate knows (Content-Encoding: gzip, br or zstd) is decoded, and
 * the head loses its Content-Encoding (the compress filter may encode it again);
 * anything else (no coding, identity, several, one unknown) goes as it is. */
static int decode_head(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  mg_head_t *h = &r->rhead;
  if (no_body_to_change(r) || mg_head_get(h, (mg_str_t){ "content-range", 13 })) return 1;
  const mg_header_t *ce = NULL;
  for (size_t i = 0; i < h->n; i++) {
    if (!MG_NAME_IS(h->headers[i].name, "content-encoding")) continue;
    if (ce) return 1; /* several fields: several codings */
    ce = &h->headers[i];
  }
  if (!ce) return 1;
  size_t pos = 0;
  mg_str_t tok, extra;
  if (!mg_http_next_token(ce->value, &pos, &tok) || mg_http_next_token(ce->value, &pos, &extra)) return 1;
  int coding = mg_coding_parse(tok);
  if (coding <= MG_CODING_IDENTITY) return 1;
  r->dec = mg_decoder_new(coding);
  if (!r->dec) {
    MG_WARN(r->w->id, "req %s: %s decoder: out of memory: the response goes as it came", r->id,
            mg_coding_name(coding));
    return 1;
  }
  if (mg_head_set(h, &r->arena, (mg_str_t){ "content-encoding", 16 }, (mg_str_t){ NULL, 0 }, 2) < 0) return MG_ENOMEM;
  return weak_etag(r);
}

static int decode_body(mg_filter_t *f, const char *p, size_t n) {
  mg_req_t *r = f->ctx;
  int rc = mg_decoder_feed(r->dec, p, n, compress_out, f);
  if (rc == MG_ELIMIT)
    MG_WARN(r->w->id, "req %s: upstream %s: encoded response body: a piece decodes to more than %d MiB: cut short",
            r->id, peer_text(r), MG_DEC_MAX_OUT >> 20);
  else if (rc == MG_EPARSE)
    MG_WARN(r->w->id, "req %s: upstream %s: encoded response body does not decode (bad data for its "
            "Content-Encoding): cut short", r->id, peer_text(r));
  return rc < 0 ? -1 : 0;
}

static int decode_end(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  int rc = mg_decoder_finish(r->dec);
  mg_decoder_free(r->dec);
  r->dec = NULL;
  if (rc < 0) {
    MG_WARN(r->w->id, "req %s: upstream %s: encoded response body ends inside its stream: cut short", r->id,
            peer_text(r));
    return -1;
  }
  return mg_filter_pass_end(f);
}

static const mg_filter_ops_t decode_filter = {
  .name = "decode", .head = decode_head, .body = decode_body, .end = decode_end, .changes_length = 1,
};

static int compress_head(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  const mg_compress_cfg_t *cfg = r->route ? r->route->compress : NULL;
  mg_head_t *h = &r->rhead;
  /* no body, a part of one, or one that may not be changed: as it is */
  if (!cfg || r->compress_off || no_body_to_change(r)) return 1;
  if (mg_head_get(h, (mg_str_t){ "content-encoding", 16 }) || mg_head_get(h, (mg_str_t){ "content-range", 13 }) ||
      head_lists(h, "cache-control", 13, "no-transform", 12))
    return 1;
  mg_str_t ae = { "", 0 };
  int has_ae = accept_encoding(r, &ae), refused;
  int coding = mg_coding_negotiate(ae, has_ae, cfg->prefer, cfg->nprefer, &refused);
  int eligible = compress_type_ok(cfg, h) && !(r->up_has_len && r->up_len < cfg->min_length);
  if (coding == MG_CODING_IDENTITY) {
    /* identity;q=0 with nothing else: identity anyway (RFC 9110 12.1). A response
     * another Accept-Encoding would have had encoded says so (RFC 9110 12.5.5),
     * or a cache could give this one to clients that take an encoding */
    return eligible && compress_vary(r) < 0 ? MG_ENOMEM : 1;
  }
  /* the client refused identity: min_length and types do not hold it back */
  if (!refused && !eligible) return 1;
  r->enc = mg_encoder_new(coding, cfg->level[coding]);
  if (!r->enc) {
    MG_WARN(r->w->id, "req %s: %s encoder: out of memory: the response goes unencoded", r->id,
            mg_coding_name(coding));
    return 1;
  }
  if (r->up_has_len) mg_encoder_size_hint(r->enc, r->up_len); /* a body hook may still change it */
  const char *name = mg_coding_name(coding);
  if (mg_head_set(h, &r->arena, (mg_str_t){ "Content-Encoding", 16 }, (mg_str_t){ name, strlen(name) }, 0) < 0 ||
      compress_vary(r) < 0)
    return MG_ENOMEM;
  return weak_etag(r);
}

static int compress_out(void *ctx, const char *p, size_t n) { return mg_filter_pass(ctx, p, n); }

static int compress_body(mg_filter_t *f, const char *p, size_t n) {
  mg_req_t *r = f->ctx;
  int rc = mg_encoder_feed(r->enc, p, n, compress_out, f);
  if (rc < 0 && rc != -1) /* the library's failure, not the chain's */
    MG_WARN(r->w->id, "req %s: the response's encoder failed (%d): connection closed", r->id, rc);
  return rc < 0 ? -1 : 0;
}

static int compress_end(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  int rc = mg_encoder_finish(r->enc, compress_out, f);
  mg_encoder_free(r->enc);
  r->enc = NULL;
  if (rc < 0) return -1;
  return mg_filter_pass_end(f);
}

/* A streamed response (no Content-Length) whose upstream paused: what the
 * encoder holds goes out, so each piece the upstream sent reaches the client
 * (a long poll, a stream of JSON lines) instead of waiting for the encoder's
 * buffers to fill. */
static int compress_flush(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  return r->enc && mg_encoder_flush(r->enc, compress_out, f) < 0 ? -1 : 0;
}

static const mg_filter_ops_t compress_filter = {
  .name = "compress", .head = compress_head, .body = compress_body, .end = compress_end, .flush = compress_flush,
  .changes_length = 1,
};
static int cache_fill_begin(mg_req_t *r);
static void cache_invalidate(mg_req_t *r);
static int range_slice_begin(mg_req_t *r);
static void cache_flight_end(mg_req_t *r, int outcome);

/* The response chain of this exchange, from its route (once its head is known).
 * *saw_head is set when a filter saw the head (it may have changed it). */
static int response_filters(mg_req_t *r, int *saw_head) {
  if (r->route && r->route->decode) { /* i13-compress: before the body hook */
    mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
    if (!f) return MG_ENOMEM;
    f->ops = &decode_filter;
    f->ctx = r;
    mg_fchain_add(&r->resp_chain, f);
  }
  if (mg_hook_on(r->gen, r->route, MG_HOOK_BODY)) {
    mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
    if (!f) return MG_ENOMEM;
    f->ops = &lua_body_filter;
    f->ctx = r;
    mg_fchain_add(&r->resp_chain, f);
  }
  if (r->c_on && cache_fill_begin(r) < 0) return MG_ENOMEM;
  if (r->c_rfetch && range_slice_begin(r) < 0) return MG_ENOMEM; /* i13-range */
  if (r->route && r->route->cache && r->method != HTTP_GET && r->method != HTTP_HEAD) cache_invalidate(r);
  if (r->route && r->route->compress && !r->compress_off) { /* i13-compress: after the body hook */
    mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
    if (!f) return MG_ENOMEM;
    f->ops = &compress_filter;
    f->ctx = r;
    mg_fchain_add(&r->resp_chain, f);
  }
  if (!r->resp_chain.first) return 0;
  *saw_head = 1;
  return mg_fchain_head(&r->resp_chain);
}

/* ---------------- lifecycle ---------------- */

/* Finished requests wait in a per-worker list (at most REQ_SPARES) with their
 * head buffers and first arena chunk: a new request then costs no allocation. */
#ifdef __SANITIZE_ADDRESS__
#define REQ_SPARES 0 /* every request freed: AddressSanitizer sees a use after free */
#else
#define REQ_SPARES 64
#endif
#define REQ_SPARE_MAX_HEAD 8192 /* heads that grew past this are given back */

mg_req_t *mg_req_new(mg_worker_t *w, mg_down_t *down) {
  mg_req_t *r = w->spare_reqs;
  if (r) {
    w->spare_reqs = r->next_spare;
    w->nspare_reqs--;
    mg_head_t head = r->head, rhead = r->rhead;
    mg_arena_t arena = r->arena;
    memset(r, 0, sizeof(*r));
    r->head = head;
    r->rhead = rhead;
    r->arena = arena;
  } else {
    r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    mg_arena_init(&r->arena);
    mg_head_init(&r->head);
    mg_head_init(&r->rhead);
  }
  r->down = down;
  r->w = w;
  r->wg = w->wg;
  mg_wgen_ref(r->wg);
  r->gen = r->wg->gen;
  r->lua.wg = r->wg;
  r->lua.co_ref = r->lua.chunk_ref = LUA_NOREF;
  r->lua.phase = -1;
  r->lua.id = r->id;
  r->lua.owner = r;
  r->lua.waiting = 0;
  r->lua.waited = hook_waited;
  r->hook_wait = 0;
  r->bb_wait.cancel = bb_cancel;
  r->pick = -1;
  mg_outq_init(&r->upq, NULL, NULL);
  mg_fchain_init(&r->req_chain, req_sink, req_sink_end, r);
  mg_fchain_init(&r->resp_chain, resp_sink, resp_sink_end, r);
  r->upstream = -1;
  r->server = -1;
  r->method = r->down_method = -1;
  r->t_start = uv_hrtime();
  r->lua.seq = ++w->seq;
  uint64_t id = w->id_seed + r->lua.seq;
  for (int i = 14; i >= 0; i -= 2, id >>= 8) { /* two digits a step: 8 steps, not 16 */
    r->id[i] = hexdig[(id >> 4) & 15];
    r->id[i + 1] = hexdig[id & 15];
  }
  r->id[16] = '\0';
  return r;
}

static void access_log(mg_req_t *r) {
  mg_worker_t *w = r->w;
  if (mg_access_log_fd() < 0 || r->status == 0) return;
  char ts[32];
  mg_time_iso(ts, sizeof(ts));
  cJSON *o = cJSON_CreateObject();
  if (!o) return;
  char method[24];
  snprintf(method, sizeof(method), "%s", r->method >= 0 ? llhttp_method_name(r->method) : "-");
  char *path = r->path.p ? mg_arena_strdup(&r->arena, r->path.p, r->path.len) : NULL;
  char *host = r->host.p ? mg_arena_strdup(&r->arena, r->host.p, r->host.len) : NULL;
  cJSON_AddStringToObject(o, "time", ts);
  cJSON_AddStringToObject(o, "client", r->down->client);
  if (r->client_ip.len) {
    char *cip = mg_arena_strdup(&r->arena, r->client_ip.p, r->client_ip.len);
    if (cip) cJSON_AddStringToObject(o, "client_ip", cip);
  }
  cJSON_AddStringToObject(o, "method", method);
  if (path) cJSON_AddStringToObject(o, "path", path);
  else cJSON_AddNullToObject(o, "path");
  if (host) cJSON_AddStringToObject(o, "host", host);
  else cJSON_AddNullToObject(o, "host");
  cJSON_AddNumberToObject(o, "status", r->status);
  cJSON_AddNumberToObject(o, "bytes_in", (double)r->bytes_in);
  cJSON_AddNumberToObject(o, "bytes_out", (double)r->bytes_out);
  if (r->server >= 0 && r->upstream >= 0) {
    cJSON_AddStringToObject(o, "upstream", mg_upstream_server(&r->gen->upstreams[r->upstream], r->server)->text);
    uint64_t end = r->t_up_end ? r->t_up_end : uv_hrtime();
    cJSON_AddNumberToObject(o, "upstream_time", (double)(end - r->t_up_start) / 1e9);
  } else {
    cJSON_AddNullToObject(o, "upstream");
    cJSON_AddNullToObject(o, "upstream_time");
  }
  cJSON_AddNumberToObject(o, "time_total", (double)(uv_hrtime() - r->t_start) / 1e9);
  cJSON_AddStringToObject(o, "request_id", r->id);
  if (r->policy.len) cJSON_AddStringToObject(o, "policy", r->policy.p); /* issue 14 (NUL-ended) */
  if (r->consumer.len) cJSON_AddStringToObject(o, "consumer", r->consumer.p); /* i14-auth */
  if (r->waf.len) cJSON_AddStringToObject(o, "waf", r->waf.p); /* i14-waf-core */
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!s) return;
  size_t n = strlen(s);
  s[n] = '\n'; /* replaces the NUL: written with an explicit length */
  mg_alog_append(&w->alog, s, n + 1);
  free(s);
}

static void req_release(mg_req_t *r);
static void attempt_end(mg_req_t *r);

void mg_req_holds_release(mg_req_t *r) {
  struct mg_hold_s *h = r->holds;
  r->holds = NULL;
  for (; h; h = h->next) {
    double n;
    /* an entry evicted meanwhile (a dictionary too small) is not created again */
    mg_shdict_incr(h->d, h->key, h->klen, -1, 0, 0, 0, &n);
  }
}
static int log_detach(mg_req_t *r);

void mg_req_free(mg_req_t *r) {
  if (!r) return;
  mg_req_holds_release(r); /* i14-cors: limit_conn's slots, before any log hook waits */
  cache_flight_end(r, MG_CFLIGHT_FAILED); /* its waiters need not wait for a log hook */
  if (r->upc) mg_proxy_abort(r);
  if (r->status && mg_hook_on(r->gen, r->route, MG_HOOK_LOG) &&
      mg_lua_hook(&r->lua, MG_HOOK_LOG, NULL) == MG_LUA_WAIT && log_detach(r) == 0)
    return; /* the connection goes on; the request ends when its log hook does */
  req_release(r);
}

/* The connection's side of a request whose log hook waits: what the hook may
 * still read of it, copied into the request's arena (the connection goes on,
 * or away); it acts on nothing (ops that do nothing, no TLS session). */
static void orphan_nop(void *conn) { (void)conn; }
static const mg_down_ops_t orphan_ops = {
  .flush = orphan_nop, .done = orphan_nop, .close = orphan_nop, .close_after_flush = orphan_nop,
  .reading = orphan_nop, .tunnel = orphan_nop, .local_addr = orphan_nop, .resume = orphan_nop,
};

/* The log hook waits: the access log line goes now, the request leaves its
 * connection for the worker's list. 0, or -1 (no memory: the hook is dropped). */
static int log_detach(mg_req_t *r) {
  mg_worker_t *w = r->w;
  /* each waiting log hook holds its request (a pipelining client makes them
   * faster than they end): no more of them than the worker takes connections */
  uint64_t cap = r->gen->limits.connections;
  if (cap && w->nlog_waits >= cap) {
    uint64_t now = uv_now(&w->loop);
    if (!w->log_waits_warned || now - w->log_waits_warned >= 1000) { /* a line a second at most */
      w->log_waits_warned = now;
      MG_WARN(w->id, "req %s: log hook of route %d waits while %llu others do (limits.connections): dropped",
              r->id, r->lua.route, (unsigned long long)w->nlog_waits);
    }
    mg_lua_cancel(&r->lua);
    return -1;
  }
  mg_down_t *old = r->down;
  mg_down_t *d = mg_arena_alloc(&r->arena, sizeof(*d));
  char *client = mg_arena_strdup(&r->arena, old->client, strlen(old->client));
  int ip_in = old->ip.p >= old->client && old->ip.p + old->ip.len <= old->client + strlen(old->client);
  char *ip = ip_in ? NULL : mg_arena_strdup(&r->arena, old->ip.p, old->ip.len);
  if (!d || !client || (!ip_in && !ip)) {
    MG_ERR(r->w->id, "req %s: log hook waits: out of memory: dropped", r->id);
    mg_lua_cancel(&r->lua);
    return -1;
  }
  access_log(r);
  r->logged = 1;
  hook_wait_in(r, MG_HOOK_LOG, 0);
  *d = *old;
  d->conn = NULL;
  d->ops = &orphan_ops;
  d->out = NULL;
  d->tp = NULL;
  d->ssl = NULL;
  d->closed = 1;
  d->client = client;
  d->ip = ip_in ? (mg_str_t){ client + (old->ip.p - old->client), old->ip.len } : (mg_str_t){ ip, old->ip.len };
  if (r->client_ip.p == old->ip.p) r->client_ip = d->ip;
  r->down = d;
  r->prev_log = NULL;
  r->next_log = w->log_waits;
  if (w->log_waits) w->log_waits->prev_log = r;
  w->log_waits = r;
  w->nlog_waits++;
  return 0;
}

static void log_unlink(mg_req_t *r) {
  if (r->prev_log) r->prev_log->next_log = r->next_log;
  else r->w->log_waits = r->next_log;
  if (r->next_log) r->next_log->prev_log = r->prev_log;
  r->w->nlog_waits--;
}

/* The log hook that waited goes on, or was dropped (timeouts.hook, logged). */
static void log_hooked(mg_req_t *r) {
  int rc = r->hook_rc;
  if (rc != MG_LUA_TIMEOUT) rc = mg_lua_resume(&r->lua);
  if (rc == MG_LUA_WAIT) return;
  if (rc == MG_LUA_TIMEOUT)
    MG_WARN(r->w->id, "req %s: log hook of route %d took longer than timeouts.hook: dropped", r->id, r->lua.route);
  log_unlink(r);
  req_release(r);
}

void mg_proxy_drop_logs(mg_worker_t *w) {
  while (w->log_waits) {
    mg_req_t *r = w->log_waits;
    log_unlink(r);
    req_release(r); /* cancels the wait */
  }
}

/* The request's memory goes back (to the spares). */
static void req_release(mg_req_t *r) {
  mg_req_holds_release(r); /* (mg_req_free did; a request ended another way too) */
  if (r->cwriter) { /* the response did not end well (or had no body to end): not stored */
    mg_cache_abort(r->cwriter);
    r->cwriter = NULL;
  }
  mg_cobj_unref(r->c_obj);
  r->c_obj = NULL;
  cache_flight_end(r, MG_CFLIGHT_FAILED);
  attempt_end(r); /* (every path that ends an attempt did already; this one cannot miss) */
  request_done(r);
  free(r->rb);
  r->rb = NULL;
  mg_encoder_free(r->enc); /* i13-compress: a body cut short */
  r->enc = NULL;
  mg_decoder_free(r->dec);
  r->dec = NULL;
  mg_lua_req_done(&r->lua);
  free(r->bb); /* (the spare list keeps no body) */
  r->bb = NULL;
  if (!r->logged) access_log(r);
  mg_outq_dispose(&r->upq);
  mg_wgen_unref(r->wg);
  mg_worker_t *w = r->w;
  if (w->nspare_reqs < REQ_SPARES && r->head.cap <= REQ_SPARE_MAX_HEAD &&
      r->rhead.cap <= REQ_SPARE_MAX_HEAD) {
    mg_head_reset(&r->head);
    mg_head_reset(&r->rhead);
    mg_arena_reset(&r->arena);
    r->next_spare = w->spare_reqs;
    w->spare_reqs = r;
    w->nspare_reqs++;
    return;
  }
  mg_req_dispose(r);
}

void mg_req_dispose(mg_req_t *r) {
  mg_head_dispose(&r->head);
  mg_head_dispose(&r->rhead);
  mg_arena_dispose(&r->arena);
  free(r);
}

void mg_proxy_abort(mg_req_t *r) {
  cache_flight_end(r, MG_CFLIGHT_FAILED); /* a waiting request leaves the fetch's list */
  if (r->upc) {
    mg_upconn_t *u = r->upc;
    mg_upstream_release(u, 0);
  }
  attempt_end(r);
  request_done(r); /* a backoff waiting is cancelled */
}

/* ---------------- answers moongate writes itself ---------------- */

/* Every response moongate sends carries a Date (RFC 9110 6.6.1). */
static void append_date(mg_worker_t *w, hw_t *q) {
  const char *line;
  size_t n = mg_http_date_line(&w->date, &line);
  hw_put(q, line, n);
}

static int will_close(mg_req_t *r) {
  mg_down_t *c = r->down;
  return c->close_after || !r->keepalive || r->w->draining;
}

/* A listener with hsts: its Strict-Transport-Security line replaces any the head
 * carries (one header, ours), then the rest of the head as given. */
static void append_head_hsts(hw_t *q, const char *head, size_t hlen, const char *hsts) {
  static const char name[] = "strict-transport-security:";
  const size_t nlen = sizeof(name) - 1;
  for (const char *p = head, *end = head + hlen; p < end;) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *next = nl ? nl + 1 : end;
    if ((size_t)(next - p) <= nlen || strncasecmp(p, name, nlen) != 0) hw_put(q, p, (size_t)(next - p));
    p = next;
  }
  hw_put(q, hsts, strlen(hsts));
}

static void answer(mg_req_t *r, int status, const char *head, size_t hlen, const char *body, size_t blen,
                   const mg_cobj_t *obj);
static int cache_stale_if_error(mg_req_t *r, int status);
static void cache_send_body(mg_req_t *r, const mg_cobj_t *obj);

/* Queues a complete response whose head (status line + header lines, without the
 * blank line) and body are given. Decides what happens to an unread body. */
void mg_proxy_answer(mg_req_t *r, int status, const char *head, size_t hlen, const char *body,
                   size_t blen) {
  answer(r, status, head, hlen, body, blen, NULL);
}

/* mg_proxy_answer, with the body given as a stored object's chunks (obj) or as
 * (body, blen). */
static void answer(mg_req_t *r, int status, const char *head, size_t hlen, const char *body, size_t blen,
                   const mg_cobj_t *obj) {
  mg_down_t *c = r->down;
  int body_pending = !r->complete &&
                     (r->body == MG_BODY_CHUNKED || (r->body == MG_BODY_LENGTH && r->content_length > r->body_read));
  if (body_pending) {
    /* A client waiting for 100-continue will not send the body: the connection
     * cannot carry another request after this one. */
    if (r->expect_continue) c->close_after = 1;
    else r->discard_body = 1;
  }
  if (r->upc) mg_upstream_release(r->upc, 0);
  attempt_end(r);
  request_done(r);
  c->up_blocked = 0; /* no upstream takes the body any more */
  r->status = status;
  size_t before = mg_outq_size(c->out);
  hw_t hw, *q = &hw;
  hw_begin(q, c->out);
  if (c->hsts) append_head_hsts(q, head, hlen, c->hsts);
  else hw_put(q, head, hlen);
  if (!r->c_dated && !mg_http_head_has(head, hlen, MG_STR("date"))) append_date(r->w, q);
  if (will_close(r)) HW_LIT(q, "Connection: close\r\n\r\n");
  else if (r->http_minor == 0) HW_LIT(q, "Connection: keep-alive\r\n\r\n");
  else HW_LIT(q, "\r\n");
  /* HEAD, 204 and 304 carry no body, whatever the answer was given (the
   * client's HEAD: a hook may have made it another method upstream) */
  if (r->down_method != HTTP_HEAD && status != 204 && status != 304 && blen) hw_put(q, body, blen);
  hw_end(q);
  if (obj && r->down_method != HTTP_HEAD && status != 204 && status != 304) cache_send_body(r, obj);
  r->bytes_out += mg_outq_size(c->out) - before;
  r->rstate = MG_RS_DONE;
  if (!c->in_parser) c->ops->flush(c->conn); /* else the read callback flushes once */
  if (c->closed) return; /* the write failed: r is gone */
  c->ops->done(c->conn);
}

void mg_proxy_error(mg_req_t *r, int status, int close) {
  mg_down_t *c = r->down;
  if (r->rstate != MG_RS_NONE) {
    c->ops->close(c->conn);
    return;
  }
  /* no connection, a timeout, no server usable: a stale response that allows
   * it answers instead (stale-if-error) */
  if (r->c_sie && (status == 502 || status == 503 || status == 504) && !close && cache_stale_if_error(r, status))
    return;
  if (close) c->close_after = 1;
  char body[128], head[256];
  int blen = snprintf(body, sizeof(body), "%d %s\nrequest id: %s\n", status, mg_http_reason(status), r->id);
  int hlen = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      "X-Request-Id: %s\r\n",
                      status, mg_http_reason(status), blen, r->id);
  mg_proxy_answer(r, status, head, (size_t)hlen, body, (size_t)blen);
}

/* ---------------- the request head ---------------- */

/* Splits the request target into what goes upstream and the path to route on. */
static int parse_target(mg_req_t *r) {
  mg_str_t u = mg_head_url(&r->head);
  if (u.len == 0) return 400;
  if (u.p[0] == '/') {
    r->target = u;
  } else if (u.len == 1 && u.p[0] == '*' && r->method == HTTP_OPTIONS) {
    r->target = u;
    r->path = MG_STR("/");
    return 0;
  } else if (u.len > 7 && (strncasecmp(u.p, "http://", 7) == 0 || strncasecmp(u.p, "https://", 8) == 0)) {
    size_t skip = u.p[4] == ':' ? 7 : 8;
    const char *a = u.p + skip, *end = u.p + u.len, *e = a;
    while (e < end && *e != '/' && *e != '?') e++;
    if (e == a) return 400;
    r->host = (mg_str_t){ a, (size_t)(e - a) };
    r->absolute_form = 1;
    if (e == end) r->target = MG_STR("/");
    else if (*e == '?') {
      /* "http://h?q": the path is "/" */
      char *t = mg_arena_alloc(&r->arena, (size_t)(end - e) + 1);
      if (!t) return 500;
      t[0] = '/';
      memcpy(t + 1, e, (size_t)(end - e));
      r->target = (mg_str_t){ t, (size_t)(end - e) + 1 };
    } else r->target = (mg_str_t){ e, (size_t)(end - e) };
  } else {
    return 400;
  }
  /* Routes match the normalized path (escapes of unreserved characters decoded,
   * dot segments resolved, slashes merged), as nginx matches locations: /%61dmin,
   * //admin and /x/../admin are all /admin. Refused: bytes llhttp lets through but
   * no origin should see, bad escapes, an escape of '/', '\\', NUL or a control
   * byte. The target lives in the request's own head buffer (or arena), so it is
   * normalized in place unless the original must go upstream (forward_path). */
  int own = r->target.p >= r->head.buf && r->target.p < r->head.buf + r->head.len;
  char *norm = (char *)r->target.p;
  if (r->gen->forward_raw || r->gen->keep_target || !own) { /* not ours to change ("/" of "http://h") */
    norm = mg_arena_alloc(&r->arena, r->target.len + 1);
    if (!norm) return 500;
    if (r->gen->forward_raw) r->raw_target = r->target;
    r->orig_target = r->target; /* i14-waf-core: intact, normalized into a copy */
  }
  size_t nlen;
  if (mg_uri_normalize_target(r->target.p, r->target.len, norm, &nlen) < 0) {
    MG_INFO(r->w->id, "req %s: %s: refused target (a bad byte or escape, or an escape of '/', '\\' or a control byte)",
            r->id, r->down->client);
    r->target = r->raw_target = (mg_str_t){ NULL, 0 }; /* in place: half rewritten */
    return 400;
  }
  r->target = (mg_str_t){ norm, nlen };
  const char *q = memchr(r->target.p, '?', r->target.len);
  r->path = (mg_str_t){ r->target.p, q ? (size_t)(q - r->target.p) : r->target.len };
  return 0;
}

/* The address in one X-Forwarded-For entry (spaces around it allowed), checked:
 * 0 and the address in out (NUL-terminated), or -1. */
static int xff_addr(mg_str_t e, char *out, size_t cap) {
  while (e.len && (e.p[0] == ' ' || e.p[0] == '\t')) e.p++, e.len--;
  while (e.len && (e.p[e.len - 1] == ' ' || e.p[e.len - 1] == '\t')) e.len--;
  if (e.len == 0 || e.len >= cap) return -1;
  memcpy(out, e.p, e.len);
  out[e.len] = '\0';
  unsigned char bin[16];
  if (inet_pton(AF_INET, out, bin) != 1 && inet_pton(AF_INET6, out, bin) != 1) return -1;
  return 0;
}

/* Who the client is. The peer, unless the peer is a trusted proxy: then the
 * X-Forwarded-For list is read from the right, past every trusted hop, to the
 * first address that is not trusted (an entry that is not an address stops the
 * walk at the hop before it). */
static mg_str_t joined_xff(mg_req_t *r);
static void find_client(mg_req_t *r) {
  mg_str_t peer = r->down->ip;
  r->client_ip = peer;
  r->trusted = r->gen->trusted && mg_cidr_match_text(r->gen->trusted, peer);
  if (!r->trusted) return;
  mg_str_t xff = joined_xff(r);
  if (!xff.len) return;
  const char *end = xff.p + xff.len;
  while (end > xff.p) {
    const char *start = end;
    while (start > xff.p && start[-1] != ',') start--;
    char ip[INET6_ADDRSTRLEN + 1];
    if (xff_addr((mg_str_t){ start, (size_t)(end - start) }, ip, sizeof(ip)) < 0) return;
    char *keep = mg_arena_strdup(&r->arena, ip, strlen(ip));
    if (!keep) return;
    r->client_ip = (mg_str_t){ keep, strlen(ip) };
    if (!mg_cidr_match_text(r->gen->trusted, r->client_ip)) return;
    end = start > xff.p ? start - 1 : start;
  }
}

/* Headers the client listed in Connection are hop-by-hop (RFC 9110 7.6.1): they
 * are removed as the request is read, so hooks see what will be forwarded and a
 * header a hook sets is never stripped by the client's list. */
static int drop_listed_headers(mg_req_t *r) {
  size_t pos = 0;
  mg_str_t name;
  while (mg_http_next_token(r->connection, &pos, &name))
    if (mg_head_set(&r->head, &r->arena, name, name, 2) < 0) return MG_ENOMEM;
  return 0;
}

/* The header name is one of the extra hop-by-hop names listed in Connection. */
static int listed_hop(mg_str_t conn_value, mg_str_t name) {
  return conn_value.len && mg_http_token_in_list(conn_value, name);
}

static int check_headers(mg_req_t *r) {
  int hosts = 0;
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *h = &r->head.headers[i];
    if (!mg_http_is_token(h->name) || mg_http_bad_value(h->value)) return 400;
    switch (h->name.len) { /* by length first: most names need no compare */
    case 4:
      if (MG_NAME_IS(h->name, "host")) {
        if (++hosts > 1) return 400;
        if (!r->absolute_form) r->host = h->value;
        if (r->http_minor == 1 && h->value.len == 0) return 400; /* RFC 9112 3.2 */
      }
      break;
    case 10:
      if (MG_NAME_IS(h->name, "connection")) {
        if (r->connection.len) return 400; /* two Connection headers: keep it simple and strict */
        r->connection = h->value;
      }
      break;
    case 17:
      if (MG_NAME_IS(h->name, "transfer-encoding") && !MG_NAME_IS(h->value, "chunked")) return 501;
      break;
    case 6:
      if (MG_NAME_IS(h->name, "expect")) {
        if (!MG_NAME_IS(h->value, "100-continue")) return 417;
        r->expect_continue = r->http_minor == 1;
      }
      break;
    }
  }
  if (r->http_minor == 1 && hosts == 0 && !r->absolute_form) return 400;
  /* a name or address, an optional port of digits, no userinfo; routes match the
   * name without port and without a trailing dot */
  if (r->host.len) {
    int port;
    if (mg_uri_check_host(r->host, &r->host_name, &port) < 0) {
      MG_INFO(r->w->id, "req %s: %s: bad host '%.*s'", r->id, r->down->client,
              (int)(r->host.len > 200 ? 200 : r->host.len), r->host.p);
      return 400;
    }
  }
  return 0;
}

/* All X-Forwarded-For headers of the request joined in order ("a, b"), or an
 * empty slice. In the arena when there were several. */
/* A header as the client sent it (a slice of the parsed head), not one a hook set. */
static int from_client(const mg_req_t *r, const mg_header_t *h) {
  return h->name.p >= r->head.buf && h->name.p < r->head.buf + r->head.len;
}

/* The values of every `lname` header (lower case) of the request joined in order
 * ("a, b"), or an empty slice; from the client only when `all` or the peer is a
 * trusted proxy (a header a hook set always counts). In the arena when there
 * were several. */
static mg_str_t joined(mg_req_t *r, mg_str_t lname, int all) {
  mg_str_t out = { NULL, 0 };
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *h = &r->head.headers[i];
    if (!mg_str_caseeq(h->name, lname) || !h->value.len) continue;
    if (!all && !r->trusted && from_client(r, h)) continue;
    if (!out.len) {
      out = h->value;
      continue;
    }
    char *j = mg_arena_alloc(&r->arena, out.len + h->value.len + 2);
    if (!j) return out;
    memcpy(j, out.p, out.len);
    memcpy(j + out.len, ", ", 2);
    memcpy(j + out.len + 2, h->value.p, h->value.len);
    out = (mg_str_t){ j, out.len + 2 + h->value.len };
  }
  return out;
}

static mg_str_t joined_xff(mg_req_t *r) { return joined(r, MG_STR("x-forwarded-for"), 0); }

/* A client's header whose name is an identity header's with '_' for some '-'
 * (X_Forwarded_For, X-Real_IP): CGI-style origins (PHP, WSGI, Rack) read both
 * spellings as the same HTTP_X_FORWARDED_FOR variable, so it would reach them
 * as ours. Dropped from every client, as nginx and Apache drop them. */
static int identity_alias(mg_str_t n) {
  static const mg_str_t ids[] = { MG_STR("x-forwarded-for"), MG_STR("x-forwarded-proto"),
                                  MG_STR("x-forwarded-host"), MG_STR("x-real-ip"),
                                  MG_STR("x-request-id") };
  switch (n.len) { /* the names' lengths: most headers end here */
  case 9: case 12: case 15: case 16: case 17: break;
  default: return 0;
  }
  if (!memchr(n.p, '_', n.len)) return 0;
  for (size_t k = 0; k < sizeof(ids) / sizeof(ids[0]); k++) {
    if (n.len != ids[k].len) continue;
    size_t i = 0;
    for (; i < n.len; i++) {
      char ch = n.p[i] >= 'A' && n.p[i] <= 'Z' ? (char)(n.p[i] - 'A' + 'a') : n.p[i];
      if (ch != ids[k].p[i] && !(ch == '_' && ids[k].p[i] == '-')) break;
    }
    if (i == n.len) return 1;
  }
  return 0;
}


static void append_header(hw_t *q, mg_str_t name, mg_str_t value) {
  hw_put(q, name.p, name.len);
  HW_LIT(q, ": ");
  hw_put(q, value.p, value.len);
  HW_LIT(q, "\r\n");
}

static void append_revalidation(mg_req_t *r, hw_t *q);

/* Serialises the upstream request head into r->upq.
 *
 * Identity headers: from a peer that is not a trusted proxy, X-Forwarded-For,
 * X-Forwarded-Proto, X-Forwarded-Host, Forwarded, X-Real-IP and X-Request-Id are
 * dropped and ours sent instead (a client cannot claim an address or an id).
 * From a trusted proxy, X-Forwarded-For and Forwarded get the peer appended,
 * X-Forwarded-Proto/-Host and X-Request-Id are kept when present, and X-Real-IP
 * is the client found in X-Forwarded-For. Headers a hook set are kept as set.
 * Revalidating a stored response (r->c_obj), its validators replace the
 * client's If-None-Match and If-Modified-Since. */
static int build_upstream_head(mg_req_t *r) {
  hw_t hw, *q = &hw;
  hw_begin(q, &r->upq);
  mg_down_t *c = r->down;
  const mg_upstream_cfg_t *u = &r->gen->upstreams[r->upstream];
  const char *m = llhttp_method_name(r->method);
  hw_put(q, m, strlen(m));
  HW_LIT(q, " ");
  mg_str_t target = r->raw_target.p ? r->raw_target : r->target;
  hw_put(q, target.p, target.len);
  HW_LIT(q, " HTTP/1.1\r\n");
  int have_id = 0, have_host = 0, have_proto = 0, have_fhost = 0, have_real = 0;
  int seen_via = 0, seen_fwd = 0, seen_xff = 0; /* lists joined below, only when present */
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *h = &r->head.headers[i];
    mg_str_t n = h->name;
    int trusted = r->trusted || !from_client(r, h);
    if (mg_http_is_hop_by_hop(n)) continue;
    if (from_client(r, h) && identity_alias(n)) continue;
    /* revalidating: the stored response's validators go instead (the client's own
     * are answered from the store when the 304 comes) */
    if (r->c_obj && r->c_obj->meta.has_validator &&
        (MG_NAME_IS(n, "if-none-match") || MG_NAME_IS(n, "if-modified-since")))
      continue;
    /* range_fetch: the whole object is fetched (and stored), the range cut here */
    if (r->c_rfetch && (MG_NAME_IS(n, "range") || MG_NAME_IS(n, "if-range"))) continue;
    switch (n.len) {
    case 4:
      if (MG_NAME_IS(n, "host")) {
        if (r->absolute_form) continue;
        have_host = 1;
      }
      break;
    case 3:
      if (MG_NAME_IS(n, "via")) {
        seen_via = 1;
        continue; /* joined, with ours appended, below */
      }
      break;
    case 6:
      if (MG_NAME_IS(n, "expect")) continue;
      break;
    case 9:
      if (MG_NAME_IS(n, "forwarded")) {
        seen_fwd = 1;
        continue; /* joined, with ours appended, below */
      }
      if (MG_NAME_IS(n, "x-real-ip")) {
        if (from_client(r, h) || have_real) continue; /* ours, unless a hook set one */
        have_real = 1;
      }
      break;
    case 12:
      if (MG_NAME_IS(n, "x-request-id")) {
        if (!trusted || have_id) continue;
        have_id = 1;
      }
      break;
    case 14:
      if (MG_NAME_IS(n, "content-length")) continue;
      break;
    case 15:
      if (MG_NAME_IS(n, "x-forwarded-for")) {
        seen_xff = 1;
        continue; /* joined below */
      }
      break;
    case 16:
      if (MG_NAME_IS(n, "x-forwarded-host")) {
        if (!trusted || have_fhost) continue;
        have_fhost = 1;
      }
      break;
    case 17:
      if (MG_NAME_IS(n, "x-forwarded-proto")) {
        if (!trusted || have_proto) continue;
        have_proto = 1;
      }
      break;
    }
    append_header(q, n, h->value);
  }
  if (!have_host) {
    HW_LIT(q, "Host: ");
    if (r->host.len) hw_put(q, r->host.p, r->host.len);
    else {
      const char *t = mg_upstream_server(u, r->server >= 0 ? r->server : 0)->text;
      hw_put(q, t, strlen(t));
    }
    HW_LIT(q, "\r\n");
  }
  mg_str_t ip = c->ip;
  HW_LIT(q, "X-Forwarded-For: ");
  mg_str_t xff = seen_xff ? joined_xff(r) : (mg_str_t){ NULL, 0 };
  if (xff.len) {
    hw_put(q, xff.p, xff.len);
    HW_LIT(q, ", ");
  }
  hw_put(q, ip.p, ip.len);
  HW_LIT(q, "\r\n");
  if (!have_proto) {
    if (c->ssl || r->c_refresh_tls) HW_LIT(q, "X-Forwarded-Proto: https\r\n");
    else HW_LIT(q, "X-Forwarded-Proto: http\r\n");
  }
  if (r->host.len && !have_fhost) append_header(q, MG_STR("X-Forwarded-Host"), r->host);
  if (!have_real) append_header(q, MG_STR("X-Real-IP"), r->client_ip.len ? r->client_ip : ip);
  /* RFC 7239: the peer as seen here; an IPv6 address quoted in brackets */
  HW_LIT(q, "Forwarded: ");
  mg_str_t fwd = seen_fwd ? joined(r, MG_STR("forwarded"), 0) : (mg_str_t){ NULL, 0 };
  if (fwd.len) {
    hw_put(q, fwd.p, fwd.len);
    HW_LIT(q, ", ");
  }
  if (memchr(ip.p, ':', ip.len)) {
    HW_LIT(q, "for=\"[");
    hw_put(q, ip.p, ip.len);
    HW_LIT(q, "]\"");
  } else {
    HW_LIT(q, "for=");
    hw_put(q, ip.p, ip.len);
  }
  if (c->ssl || r->c_refresh_tls) HW_LIT(q, ";proto=https\r\n");
  else HW_LIT(q, ";proto=http\r\n");
  HW_LIT(q, "Via: ");
  mg_str_t via = seen_via ? joined(r, MG_STR("via"), 1) : (mg_str_t){ NULL, 0 };
  if (via.len) {
    hw_put(q, via.p, via.len);
    HW_LIT(q, ", ");
  }
  if (r->http_minor == 0) HW_LIT(q, "1.0 moongate\r\n");
  else HW_LIT(q, "1.1 moongate\r\n");
  if (r->c_obj && r->c_obj->meta.has_validator) append_revalidation(r, q);
  if (!have_id) {
    HW_LIT(q, "X-Request-Id: ");
    hw_put(q, r->id, 16);
    HW_LIT(q, "\r\n");
  }
  if (r->up_body == MG_BODY_LENGTH) {
    HW_LIT(q, "Content-Length: ");
    hw_uint(q, r->up_length);
    HW_LIT(q, "\r\n");
  } else if (r->up_body == MG_BODY_CHUNKED) {
    HW_LIT(q, "Transfer-Encoding: chunked\r\n");
  } else if (r->method_set && (r->method == HTTP_POST || r->method == HTTP_PUT || r->method == HTTP_PATCH)) {
    HW_LIT(q, "Content-Length: 0\r\n"); /* a hook made a GET a POST: say it has no body */
  }
  if (r->upgrade) {
    HW_LIT(q, "Upgrade: ");
    hw_put(q, r->upgrade_proto.p, r->upgrade_proto.len);
    HW_LIT(q, "\r\nConnection: upgrade\r\n");
  } else if (u->keepalive == 0) {
    HW_LIT(q, "Connection: close\r\n");
  }
  HW_LIT(q, "\r\n");
  hw_end(q);
  return 0;
}

/* A plain listener with redirect_https: everything goes to the same host and
 * target over https (301 for GET and HEAD, 308 keeps the method and body). */
static void redirect_https(mg_req_t *r, int port) {
  mg_str_t host = r->host;
  if (!host.len) {
    mg_proxy_error(r, 400, 0);
    return;
  }
  /* a name, an IPv4 or a bracketed IPv6 address, with an optional port: nothing
   * that could change where the Location points (no "@", "/", "\\"...) */
  for (size_t i = 0; i < host.len; i++) {
    char ch = host.p[i];
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']')) {
      mg_proxy_error(r, 400, 0);
      return;
    }
  }
  if (r->target.len == 0 || r->target.p[0] != '/') { /* OPTIONS * has no https URL */
    mg_proxy_error(r, 400, 0);
    return;
  }
  /* the host without its port ("[v6]:port" keeps its brackets) */
  size_t hl = host.len;
  for (size_t i = host.len; i > 0; i--) {
    char ch = host.p[i - 1];
    if (ch == ':') {
      hl = i - 1;
      break;
    }
    if (ch < '0' || ch > '9') break;
  }
  int status = r->method == HTTP_GET || r->method == HTTP_HEAD ? 301 : 308;
  char portbuf[8] = "";
  if (port != 443) snprintf(portbuf, sizeof(portbuf), ":%d", port);
  size_t cap = 128 + hl + r->target.len;
  char *head = mg_arena_alloc(&r->arena, cap);
  if (!head) {
    mg_proxy_error(r, 500, 0);
    return;
  }
  int n = snprintf(head, cap, "HTTP/1.1 %d %s\r\nLocation: https://%.*s%s%.*s\r\nContent-Length: 0\r\n",
                   status, mg_http_reason(status), (int)hl, host.p, portbuf, (int)r->target.len,
                   r->target.p);
  if (n < 0 || (size_t)n >= cap) {
    mg_proxy_error(r, 500, 0);
    return;
  }
  mg_proxy_answer(r, status, head, (size_t)n, NULL, 0);
}

static int request_hooked(mg_req_t *r, int rc);
static int after_request(mg_req_t *r);
static const mg_route_t *cache_purge_route(mg_req_t *r, const mg_route_t *rt);
static int cache_begin(mg_req_t *r);
static int cache_key_resumed(mg_req_t *r, int rc);

int mg_proxy_head(mg_req_t *r) {
  int status;
  /* the codec finished the head (h1.c): its slices are in place */
  if (r->method == HTTP_CONNECT) return 501;
  if ((status = parse_target(r)) != 0) return status;
  if ((status = check_headers(r)) != 0) return status;
  if (r->upgrade) {
    /* kept apart: the client's Connection lists it, so it leaves the head below */
    const mg_header_t *up = mg_head_get(&r->head, MG_STR("upgrade"));
    char *v = up && up->value.len ? mg_arena_strdup(&r->arena, up->value.p, up->value.len) : NULL;
    if (!v) r->upgrade = 0; /* llhttp saw none: not an upgrade after all */
    else r->upgrade_proto = (mg_str_t){ v, up->value.len };
  }
  if (r->connection.len && drop_listed_headers(r) < 0) return 500;
  find_client(r);
  uint64_t max = r->gen->limits.body_size;
  if (max && r->body == MG_BODY_LENGTH && r->content_length > max) return 413;

  mg_down_t *c = r->down;
  if (c->redirect_https) {
    redirect_https(r, c->redirect_https);
    return 0;
  }
  const mg_route_t *rt = mg_route_match(r->gen, c->listener, r->method, r->host_name, r->path);
  if (r->method == HTTP_PURGE) rt = cache_purge_route(r, rt); /* i13-api */
  r->route = rt;
  r->lua.route = rt ? (int)(rt - r->gen->routes) + 1 : 0;
  r->lua.budget_ms = rt ? rt->hook_ms : 0; /* the route's timeouts.hook, else the global one */
  if (mg_hook_on(r->gen, rt, MG_HOOK_REQUEST)) {
    int rc = mg_lua_hook(&r->lua, MG_HOOK_REQUEST, NULL);
    if (rc == MG_LUA_WAIT) return hook_wait_in(r, MG_HOOK_REQUEST, 1);
    return request_hooked(r, rc);
  }
  return after_request(r);
}

/* The request hook ended (at once, or after waiting): 0, -1, MG_LUA_TIMEOUT. */
static int request_hooked(mg_req_t *r, int rc) {
  if (rc < 0) {
    if (r->rstate == MG_RS_NONE) mg_proxy_error(r, rc == MG_LUA_TIMEOUT ? 504 : 500, 0); /* else keep the answer */
    return 0;
  }
  if (r->rstate != MG_RS_NONE) return 0; /* the hook answered */
  return after_request(r);
}

/* A route's respond function ended. */
static int responded(mg_req_t *r, int rc) {
  if (rc < 0) {
    if (r->rstate == MG_RS_NONE) mg_proxy_error(r, rc == MG_LUA_TIMEOUT ? 504 : 500, 0); /* else keep the answer */
  } else if (r->rstate == MG_RS_NONE && r->bb_err) {
    mg_proxy_error(r, r->bb_status, 1); /* its req:read_body failed and it did not answer */
  } else if (r->rstate == MG_RS_NONE) {
    MG_ERR(r->w->id, "req %s: the route's respond function gave no answer", r->id);
    mg_proxy_error(r, 500, 0);
  }
  return 0;
}

/* i12-split: the upstream of a route that splits its traffic (docs/config.md
 * "Traffic split"): the header rule first, then the next of the route's weighted
 * sequence (one for the process); -1: the route's own upstream. Once per request,
 * before the upstream_request and balance hooks, which see the choice. */
static int split_pick(mg_req_t *r, const mg_split_t *sp) {
  if (sp->header.len) {
    const mg_header_t *h = mg_head_get(&r->head, sp->header);
    if (h) {
      for (int i = 0; i < sp->nvalues; i++)
        if (mg_str_eq(h->value, sp->values[i])) return sp->value_ups[i];
      if (sp->present >= 0) return sp->present;
    }
  }
  int k = sp->bal ? mg_balance_pick(sp->bal, NULL, &r->w->rng) : -1;
  return k >= 0 ? sp->ups[k] : -1;
}

/* After the request hooks: an answer of the route's, or the upstream. */
static int after_request(mg_req_t *r) {
  mg_down_t *c = r->down;
  const mg_route_t *rt = r->route;
  if (r->bb_err && !r->bb_set) { /* a hook's req:read_body failed and it did not answer */
    mg_proxy_error(r, r->bb_status, 1);
    return 0;
  }
  if (r->upstream < 0 && rt && rt->split) r->upstream = split_pick(r, rt->split); /* i12-split */
  if (r->upstream < 0 && rt) r->upstream = rt->upstream; /* req:set_upstream wins */
  if (r->upstream < 0) {
    if (!rt) {
      mg_proxy_error(r, 404, 0);
    } else if (rt->hooks & (1u << MG_HOOK_RESPOND)) {
      int rc = mg_lua_hook(&r->lua, MG_HOOK_RESPOND, NULL);
      if (rc == MG_LUA_WAIT) return hook_wait_in(r, MG_HOOK_RESPOND, 1);
      return responded(r, rc);
    } else {
      mg_proxy_answer(r, rt->status, rt->resp_head, rt->resp_head_len, rt->resp_body, rt->resp_body_len);
    }
    return 0;
  }
  int has_body = r->body == MG_BODY_CHUNKED || (r->body == MG_BODY_LENGTH && r->content_length > 0);
  /* (before 100-continue: a PURGE is answered without its body; a lookup has none) */
  if (rt && rt->cache && ((!has_body && !r->bb_set && !r->upgrade) || r->method == HTTP_PURGE)) {
    int rc = cache_begin(r); /* 1 answered, 0 upstream, MG_PROXY_WAIT: its cache_key hook waits */
    if (rc) return rc == 1 ? 0 : rc;
  }
  if (r->expect_continue && has_body && !r->bb_set) {
    APPEND_LIT(c->out, "HTTP/1.1 100 Continue\r\n\r\n");
  }
  if ((has_body || r->bb_set) && mg_hook_on(r->gen, rt, MG_HOOK_REQUEST_BODY)) {
    mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
    if (!f) return 500;
    f->ops = &lua_req_body_filter;
    f->ctx = r;
    mg_fchain_add(&r->req_chain, f);
  }
  return start_upstream(r, 1);
}

static const char *const hook_names[MG_HOOK_MAX] = { MG_HOOK_NAMES };

/* A hook of r waits (its run said MG_LUA_WAIT): the phase is noted. With `head`,
 * the connection holds the head phase (mg_proxy_head's answer). */
static int hook_wait_in(mg_req_t *r, int hook, int head) {
  r->hook_wait = hook + 1;
  r->wait_head = (unsigned)head;
  return MG_PROXY_WAIT;
}

/* The hook that waited goes on (or was dropped by timeouts.hook: logged with the
 * hook and the route). Its end (0, -1, MG_LUA_TIMEOUT), or MG_LUA_WAIT. */
static int hook_resume(mg_req_t *r, int hook, const char *then) {
  int rc = r->hook_rc;
  r->hook_wait = 0;
  r->wait_head = 0;
  if (rc != MG_LUA_TIMEOUT) rc = mg_lua_resume(&r->lua); /* the hook goes on, here */
  if (rc == MG_LUA_TIMEOUT)
    MG_WARN(r->w->id, "req %s: %s hook of route %d took longer than timeouts.hook: %s", r->id, hook_names[hook],
            r->lua.route, then);
  return rc;
}

static int pick_server(mg_req_t *r, int balanced, int head);

/* upstream_request or balance ended (at once or after a wait). */
static int upstream_hooked(mg_req_t *r, int hook, int rc, int head) {
  if (rc < 0) {
    mg_proxy_error(r, rc == MG_LUA_TIMEOUT ? 504 : 500, 0);
    return 0;
  }
  return pick_server(r, hook == MG_HOOK_BALANCE, head);
}

static int cache_resumed(mg_req_t *r);
#define HOOK_CACHE_WAIT (MG_HOOK_MAX + 1) /* not a hook: a miss waits for a fetch of its key */

int mg_proxy_head_resume(mg_req_t *r) {
  int hook = r->hook_wait - 1;
  if (hook == HOOK_CACHE_WAIT) return cache_resumed(r);
  int rc = hook_resume(r, hook, hook == MG_HOOK_CACHE_KEY ? "the default key is used" : "504");
  if (rc == MG_LUA_WAIT) return hook_wait_in(r, hook, 1);
  if (hook == MG_HOOK_REQUEST) return request_hooked(r, rc);
  if (hook == MG_HOOK_RESPOND) return responded(r, rc);
  if (hook == MG_HOOK_CACHE_KEY) return cache_key_resumed(r, rc);
  return upstream_hooked(r, hook, rc, 1);
}

static void response_hooked(mg_req_t *r);
static void body_hooked(mg_req_t *r);

/* luavm: the wait is over (or the hook was dropped). A wait of the head phase:
 * the connection resumes it, outside any parse, and mg_proxy_head_resume runs the
 * hook on. The others go on here (a timer callback: no parse runs). */
static void hook_waited(void *owner, int rc) {
  mg_req_t *r = owner;
  r->hook_rc = rc;
  int hook = r->hook_wait - 1;
  if (r->wait_head || hook == MG_HOOK_REQUEST || hook == MG_HOOK_RESPOND) {
    r->down->ops->resume(r->down->conn);
    return;
  }
  switch (hook) {
  case MG_HOOK_UPSTREAM_REQUEST:
  case MG_HOOK_BALANCE:
    rc = hook_resume(r, hook, "504");
    if (rc == MG_LUA_WAIT) {
      hook_wait_in(r, hook, 0);
      return;
    }
    upstream_hooked(r, hook, rc, 0);
    return;
  case MG_HOOK_RESPONSE:
    response_hooked(r);
    return;
  case MG_HOOK_BODY:
    body_hooked(r);
    return;
  case MG_HOOK_LOG:
    r->hook_wait = 0;
    log_hooked(r);
    return;
  }
}

/* Where request body bytes go: the live upstream queue, or the waiting one. */
static mg_outq_t *body_queue(mg_req_t *r) {
  if (r->upc && r->upc->state == MG_UP_ACTIVE) return &r->upc->tp.out;
  return &r->upq;
}

static int bb_append(mg_req_t *r, const char *p, size_t len);

int mg_proxy_body(mg_req_t *r, const char *p, size_t len) {
  r->body_read += len;
  if (r->bb_on) return bb_append(r, p, len); /* a hook reads it (its bound covers body_size) */
  uint64_t max = r->gen->limits.body_size;
  if (max && r->body_read > max) return 413;
  if (r->discard_body || r->upstream < 0 || r->rstate == MG_RS_DONE) return 0;
  return mg_fchain_body(&r->req_chain, p, len) < 0 ? 500 : 0;
}

void mg_proxy_request_flush(mg_req_t *r) {
  mg_down_t *c = r->down;
  if (r->upstream < 0 || r->rstate == MG_RS_DONE) return;
  if (r->upc && r->upc->state == MG_UP_ACTIVE) {
    if (mg_upstream_flush(r->upc) < 0) return; /* r may be gone */
    if (r->upc && mg_outq_full(&r->upc->tp.out)) c->up_blocked = 1;
  } else if (mg_outq_full(&r->upq)) {
    c->up_blocked = 1;
  }
}

static void bb_end(mg_req_t *r);

static void per_try_arm(mg_req_t *r);

void mg_proxy_request_end(mg_req_t *r) {
  if (r->upc) mg_upstream_request_complete(r->upc);
  if (r->active_on) per_try_arm(r); /* the request is all in: its attempt is judged now */
  if (r->bb_on) { /* a hook's read is complete: the body goes upstream with the head */
    r->bb_done = 1;
    bb_end(r);
    return;
  }
  if (r->upstream < 0 || r->discard_body || r->rstate == MG_RS_DONE) return;
  if (mg_fchain_end(&r->req_chain) < 0) { /* a request_body hook failed at the end */
    if (r->rstate == MG_RS_NONE) mg_proxy_error(r, 500, 1);
    else r->down->ops->close(r->down->conn);
  }
}

/* ---------------- request bodies a hook reads or replaces ---------------- */

#define REQ_OF_BB(op) ((mg_req_t *)((char *)(op) - offsetof(mg_req_t, bb_wait)))

/* The read is over (complete or failed): the connection parses no more body for
 * it, and a hook waiting for it goes on (on the next loop turn). */
static void bb_end(mg_req_t *r) {
  r->bb_on = 0;
  r->down->body_pull = 0;
  if (r->bb_waiting) {
    r->bb_waiting = 0;
    mg_lua_wake(&r->lua, &r->bb_wait);
  }
}

/* The read fails: the hook gets nil, why; a request whose hook then does not
 * answer gets `status` (and the connection closes: its body is half read). */
static void bb_fail(mg_req_t *r, int status, const char *why) {
  const mg_route_t *rt = r->route;
  MG_INFO(r->w->id, "req %s: req:read_body: %s (%llu bytes read, route %d buffer_body %llu, limits.body_size %llu)",
          r->id, why, (unsigned long long)r->body_read, r->lua.route,
          (unsigned long long)(rt ? rt->buffer_body : MG_BUFFER_BODY), (unsigned long long)r->gen->limits.body_size);
  r->bb_err = why;
  r->bb_status = status;
  free(r->bb);
  r->bb = NULL;
  r->bb_len = r->bb_cap = 0;
  bb_end(r);
}

/* luavm: the hook waiting for the body went away (its request ended, or
 * timeouts.hook dropped it): nobody reads the body into bb any more. */
static void bb_cancel(mg_lwait_t *op) {
  mg_req_t *r = REQ_OF_BB(op);
  r->bb_waiting = 0;
  if (r->bb_on) {
    r->bb_on = 0;
    r->down->body_pull = 0;
  }
}

void mg_proxy_body_failed(mg_req_t *r, int status, const char *why) {
  if (r->bb_on) bb_fail(r, status, why);
}

/* A piece of the body a hook reads: kept, within bb_max. Always 0: a failure
 * is the read's, which the hook sees. */
static int bb_append(mg_req_t *r, const char *p, size_t len) {
  if (len > r->bb_max - r->bb_len) {
    bb_fail(r, 413, "body too large");
    return 0;
  }
  if (len > r->bb_cap - r->bb_len) { /* chunked: doubles, up to the bound */
    size_t cap = r->bb_cap ? r->bb_cap : 16384;
    while (cap < r->bb_len + len) cap *= 2;
    if (cap > r->bb_max) cap = (size_t)r->bb_max;
    char *nb = realloc(r->bb, cap);
    if (!nb) {
      bb_fail(r, 500, "out of memory");
      return 0;
    }
    r->bb = nb;
    r->bb_cap = cap;
  }
  memcpy(r->bb + r->bb_len, p, len);
  r->bb_len += len;
  return 0;
}

int mg_proxy_read_body(mg_req_t *r, const char **why) {
  if (r->bb_err) {
    *why = r->bb_err;
    return -1;
  }
  if (r->bb_done || r->bb_set) return 0;
  mg_down_t *c = r->down;
  if (!r->bb_on) {
    if (r->body == MG_BODY_NONE || (r->body == MG_BODY_LENGTH && r->content_length == 0)) {
      r->bb_done = 1; /* nothing to read: an empty body */
      return 0;
    }
    uint64_t max = r->route ? r->route->buffer_body : MG_BUFFER_BODY;
    uint64_t limit = r->gen->limits.body_size;
    if (limit && limit < max) max = limit;
    r->bb_max = max;
    if (r->body == MG_BODY_LENGTH && r->content_length > max) {
      bb_fail(r, 413, "body too large");
      *why = r->bb_err;
      return -1;
    }
    if (r->body == MG_BODY_LENGTH) { /* its size is known: one allocation */
      r->bb = malloc((size_t)r->content_length);
      if (!r->bb) {
        bb_fail(r, 500, "out of memory");
        *why = r->bb_err;
        return -1;
      }
      r->bb_cap = (size_t)r->content_length;
    }
    r->bb_on = 1;
    if (r->expect_continue) { /* the client waits for this before it sends the body */
      APPEND_LIT(c->out, "HTTP/1.1 100 Continue\r\n\r\n");
      r->expect_continue = 0;
    }
    c->body_pull = 1;
    c->ops->pull_body(c->conn); /* what came with the head: maybe all of it */
    if (r->bb_err) {
      *why = r->bb_err;
      return -1;
    }
    if (r->bb_done) return 0;
  }
  /* the rest is to come: the hook waits, the connection reads on (bb_end wakes it) */
  mg_lreq_t *run = mg_lua_running(r->w);
  if (run != &r->lua || mg_lua_wait_io(run, &r->bb_wait) < 0) {
    *why = "this hook cannot wait";
    return -1;
  }
  r->bb_waiting = 1;
  return 1;
}

int mg_proxy_set_body(mg_req_t *r, const char *p, size_t len) {
  char *nb = NULL;
  if (len) {
    nb = malloc(len);
    if (!nb) return MG_ENOMEM;
    memcpy(nb, p, len);
  }
  free(r->bb);
  r->bb = nb;
  r->bb_len = r->bb_cap = len;
  r->bb_set = 1;
  r->bb_err = NULL; /* a failed read no longer matters: this body goes */
  int pending = !r->complete && (r->body == MG_BODY_CHUNKED ||
                                 (r->body == MG_BODY_LENGTH && r->content_length > r->body_read));
  if (pending) { /* the client's body is read and dropped, or never asked for */
    if (r->expect_continue) r->down->close_after = 1;
    else r->discard_body = 1;
  }
  return 0;
}

/* Collects what the request chain makes from a body known whole. */
typedef struct {
  char *p;
  size_t len, cap;
} collect_t;

static int collect_sink(void *ctx, const char *p, size_t n) {
  collect_t *b = ctx;
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + n) cap *= 2;
    char *nb = realloc(b->p, cap);
    if (!nb) return -1;
    b->p = nb;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* Before the upstream head is first written: how the body goes. A body known
 * whole (a hook read it, or set one) goes after the head with a Content-Length,
 * the request_body filters having run over it first; a body that streams keeps
 * the client's framing, or is chunked when a filter may change its length.
 * 0, or -1 (a filter failed, out of memory). */
static int body_prime(mg_req_t *r) {
  r->bb_primed = 1;
  r->up_body = r->body;
  r->up_length = r->content_length;
  if (!r->bb_set && !r->bb_done) {
    if (r->body != MG_BODY_NONE && mg_fchain_changes_length(&r->req_chain)) r->up_body = MG_BODY_CHUNKED;
    return 0;
  }
  mg_fchain_t *ch = &r->req_chain;
  if (ch->first) {
    collect_t out = { NULL, 0, 0 };
    int (*sink)(void *, const char *, size_t) = ch->sink;
    int (*sink_end)(void *) = ch->sink_end;
    void *sink_ctx = ch->sink_ctx;
    ch->sink = collect_sink;
    ch->sink_end = NULL;
    ch->sink_ctx = &out;
    int rc = mg_fchain_body(ch, r->bb, r->bb_len);
    if (rc == 0) rc = mg_fchain_end(ch);
    ch->sink = sink;
    ch->sink_end = sink_end;
    ch->sink_ctx = sink_ctx;
    ch->first = NULL; /* the filters are done with this body */
    if (rc < 0) {
      free(out.p);
      return -1;
    }
    free(r->bb);
    r->bb = out.p;
    r->bb_len = out.len;
    r->bb_cap = out.cap;
  }
  if (r->bb_set || r->body != MG_BODY_NONE || r->bb_len) {
    r->up_body = MG_BODY_LENGTH;
    r->up_length = r->bb_len;
  }
  return 0;
}

/* The upstream request goes into r->upq: its head, and a body known whole. */
static int queue_request(mg_req_t *r) {
  if (!r->bb_primed && body_prime(r) < 0) return -1;
  if (build_upstream_head(r) < 0) return -1;
  r->upq_head = mg_outq_size(&r->upq);
  if (r->bb_set || r->bb_done) {
    if (r->bb_len) append_body(&r->upq, r->bb, r->bb_len, 0);
    r->body_sent = r->bb_len;
  }
  return 0;
}

/* ---------------- the upstream exchange ---------------- */

static int queue_request(mg_req_t *r);

/* A hook of the upstream's start waits outside the head phase (a retry after a
 * failed connect): when the upstream head is not queued yet, the client's body
 * must not get ahead of it, so reading it stops until a connection takes it. */
static int upstream_wait(mg_req_t *r, int hook, int head) {
  if (!head && r->upq.pending == 0 && !r->complete) {
    r->down->up_blocked = 1;
    r->down->ops->reading(r->down->conn);
  }
  return hook_wait_in(r, hook, head);
}

/* The upstream exchange starts (or starts again after a failed attempt): the
 * upstream_request hook once, then a server (the balance hook's choice). 0, or
 * MG_PROXY_WAIT when a hook waits (`head`: the head phase holds for it). */
static int start_upstream(mg_req_t *r, int head) {
  if (!r->upreq_hooked && mg_hook_on(r->gen, r->route, MG_HOOK_UPSTREAM_REQUEST)) {
    r->upreq_hooked = 1;
    int rc = mg_lua_hook(&r->lua, MG_HOOK_UPSTREAM_REQUEST, NULL);
    if (rc == MG_LUA_WAIT) return upstream_wait(r, MG_HOOK_UPSTREAM_REQUEST, head);
    if (rc < 0) {
      mg_proxy_error(r, 500, 0);
      return 0;
    }
  }
  return pick_server(r, 0, head);
}

/* ---- the attempt's share of the servers' state (balance.h) ---- */

/* The balancer of the request's upstream (set before any attempt, fixed after). */
static mg_balancer_t *req_bal(const mg_req_t *r) { return r->gen->upstreams[r->upstream].bal; }

/* An attempt on server s starts: counted active until attempt_end (and as a
 * connection in use of the upstream: max_connections). */
static void attempt_begin(mg_req_t *r, int s) {
  mg_balancer_t *b = req_bal(r);
  mg_peer_begin(b, s);
  atomic_fetch_add_explicit(&b->conns, 1, memory_order_relaxed);
  r->active_on = s + 1;
}

/* The attempt ends, whichever way (idempotent: only the first call counts). */
static void attempt_end(mg_req_t *r) {
  if (!r->active_on) return;
  mg_balancer_t *b = req_bal(r);
  mg_peer_end(b, r->active_on - 1);
  atomic_fetch_sub_explicit(&b->conns, 1, memory_order_relaxed);
  if (r->connecting) {
    atomic_fetch_sub_explicit(&b->pending, 1, memory_order_relaxed);
    r->connecting = 0;
  }
  if (!r->in_backoff && mg_timer_active(&r->rtimer))
    mg_timer_stop(&r->w->timers, &r->rtimer); /* its per_try_timeout */
  r->active_on = 0;
}

static void attempt_failed(mg_req_t *r) {
  if (r->active_on) mg_peer_failed(req_bal(r), r->active_on - 1);
  attempt_end(r);
}

/* Marks server s tried. Up to id 63 a word does; past it a bitmap in the
 * request's arena, made at the first such mark and grown (copied) when servers
 * added at run time bring bigger ids. -1: out of memory. */
static int tried_mark(mg_req_t *r, int s, int nservers) {
  if (!mg_tried_fits(&r->tried, s)) {
    uint32_t words = (uint32_t)(((nservers > s ? nservers : s + 1) + 63) / 64);
    uint64_t *map = mg_arena_alloc(&r->arena, words * sizeof(uint64_t));
    if (!map) return -1;
    memset(map, 0, words * sizeof(uint64_t));
    if (r->tried.map) {
      memcpy(map, r->tried.map, r->tried.words * sizeof(uint64_t));
    } else { /* the bits and the few become the map */
      map[0] = r->tried.bits;
      for (uint32_t k = 0; k < r->tried.nfew; k++) {
        int f = r->tried.few[k];
        if ((uint32_t)(f >> 6) < words) map[f >> 6] |= (uint64_t)1 << (f & 63);
      }
      r->tried.nfew = 0;
    }
    r->tried.map = map;
    r->tried.words = words;
  }
  if (!mg_tried_has(&r->tried, s)) r->ntried++;
  mg_tried_set(&r->tried, s);
  return 0;
}

/* The servers this request tried that are members still (neither drained nor
 * removed since): O(ids / 64), on the retry path only. */
static int tried_members(const mg_req_t *r, mg_balancer_t *b) {
  const uint64_t *w = r->tried.map ? r->tried.map : &r->tried.bits;
  uint32_t nw = r->tried.map ? r->tried.words : 1;
  int n = 0;
  if (!r->tried.map)
    for (uint32_t k = 0; k < r->tried.nfew; k++)
      n += !(atomic_load_explicit(&mg_balance_peer(b, r->tried.few[k])->flags, memory_order_relaxed) &
             (MG_PEER_DRAINING | MG_PEER_REMOVED));
  for (uint32_t k = 0; k < nw; k++)
    for (uint64_t x = w[k]; x; x &= x - 1) {
      int id = (int)(k * 64 + (uint32_t)__builtin_ctzll(x));
      if (!(atomic_load_explicit(&mg_balance_peer(b, id)->flags, memory_order_relaxed) &
            (MG_PEER_DRAINING | MG_PEER_REMOVED)))
        n++;
    }
  return n;
}

/* ---- balance = "hash" and sticky sessions ---- */

/* mg_hash_input_t's header callback: the idx-th request header called `name`. */
static int hash_header(void *ud, mg_str_t name, size_t idx, mg_str_t *val) {
  const mg_head_t *h = ud;
  for (size_t i = 0; i < h->n; i++) {
    const mg_header_t *hd = &h->headers[i];
    if (hd->name.len == name.len && strncasecmp(hd->name.p, name.p, name.len) == 0 && idx-- == 0) {
      *val = hd->value;
      return 1;
    }
  }
  return 0;
}

/* The request's hash for balance = "hash", computed at its first pick and kept for
 * its retries (which then walk on from the same slot). */
static uint64_t req_hash(mg_req_t *r, const mg_upstream_cfg_t *u) {
  if (r->hash_ok) return r->hash;
  mg_str_t key;
  if (r->hkey_set && r->hkey.len) key = r->hkey; /* an empty key: as an empty header */
  else {
    const char *q = r->target.p ? memchr(r->target.p, '?', r->target.len) : NULL;
    mg_hash_input_t in = {
      .ip = r->client_ip, .header = hash_header, .ud = &r->head,
      .query = q ? (mg_str_t){ q + 1, r->target.len - (size_t)(q + 1 - r->target.p) } : (mg_str_t){ "", 0 },
    };
    mg_hash_key_extract(&u->hash_key, &in, &key);
  }
  r->hash = mg_maglev_hash(key.p, key.len);
  r->hash_ok = 1;
  return r->hash;
}

/* The value of cookie `name` in the request's Cookie headers (first occurrence). */
static int req_cookie(const mg_req_t *r, const char *name, mg_str_t *val) {
  static const mg_hash_key_t none = { MG_HASH_KEY_COOKIE, { NULL, 0 } };
  mg_hash_key_t k = none;
  k.name = (mg_str_t){ name, strlen(name) };
  mg_hash_input_t in = { .ip = { "", 0 }, .header = hash_header, .ud = (void *)&r->head, .query = { "", 0 } };
  return mg_hash_key_extract(&k, &in, val) == 1;
}

/* The server the sticky cookie names (+1), 0 when none: a token is 16 hex digits. */
static int sticky_lookup(mg_req_t *r, const mg_upstream_cfg_t *u) {
  if (r->sticky_seen) return r->sticky_srv;
  r->sticky_seen = 1;
  mg_str_t v;
  if (!req_cookie(r, u->sticky_cookie, &v) || v.len != 16) return 0;
  uint64_t tok = 0;
  for (size_t i = 0; i < 16; i++) {
    int d = mg_hexval((unsigned char)v.p[i]);
    if (d < 0) return 0;
    tok = tok << 4 | (uint64_t)d;
  }
  int s = mg_balance_sticky_find(u->bal, tok);
  r->sticky_srv = s + 1;
  return r->sticky_srv;
}

/* The Set-Cookie line naming the server used, when the client's cookie named
 * another one (or none). */
static void append_sticky(mg_req_t *r, hw_t *q) {
  const mg_upstream_cfg_t *u = &r->gen->upstreams[r->upstream];
  if (r->sticky_srv == r->server + 1) return;
  char tok[16];
  uint64_t t = mg_balance_peer(u->bal, r->server)->tok;
  for (int i = 15; i >= 0; i--, t >>= 4) tok[i] = hexdig[t & 15];
  HW_LIT(q, "Set-Cookie: ");
  hw_put(q, u->sticky_cookie, strlen(u->sticky_cookie));
  HW_LIT(q, "=");
  hw_put(q, tok, sizeof(tok));
  hw_put(q, u->sticky_attrs, strlen(u->sticky_attrs));
  HW_LIT(q, "\r\n");
}

/* The upstream's policy picks a server not tried yet (-1: none usable is left). */
static int policy_pick(mg_req_t *r, const mg_upstream_cfg_t *u) {
  if (u->bal->policy == MG_BALANCE_HASH) return mg_balance_pick_hash(u->bal, &r->tried, req_hash(r, u));
  return mg_balance_pick(u->bal, &r->tried, &r->w->rng);
}

/* i12-health: no usable server is left to try. Panic: the least bad of all;
 * else a first attempt answers 503 at once (-2) and a retry ends as before (-1:
 * every usable server was tried). One log line a second per upstream. */
static int no_server_usable(mg_req_t *r, const mg_upstream_cfg_t *u) {
  mg_balancer_t *b = u->bal;
  int s = b->panic ? mg_balance_pick_any(b, &r->tried, &r->w->rng) : -1;
  if (!b->panic && mg_tried_any(&r->tried)) return -1;
  uint64_t now = mg_balance_now_ms(), last = atomic_load_explicit(&b->panic_log_ms, memory_order_relaxed);
  if (now >= last + 1000 && atomic_compare_exchange_strong_explicit(&b->panic_log_ms, &last, now,
                                                                    memory_order_relaxed, memory_order_relaxed)) {
    if (!b->panic) MG_WARN(r->w->id, "upstream %s: no server available: 503", u->name);
    else if (s >= 0) MG_WARN(r->w->id, "upstream %s: no server available, panic: trying %s anyway", u->name,
                             mg_upstream_server(u, s)->text);
  }
  if (b->panic) return s;
  mg_proxy_error(r, 503, 0);
  return -2;
}

/* ---- retries and circuit breakers (i12-retry; docs/config.md) ---- */

static const mg_upstream_cfg_t *req_up(const mg_req_t *r) { return &r->gen->upstreams[r->upstream]; }

/* The request leaves its upstream (answered, ended, aborted): a backoff is
 * cancelled, its retry and its place among the requests in flight given back.
 * Idempotent. */
static void request_done(mg_req_t *r) {
  if (mg_timer_active(&r->rtimer)) mg_timer_stop(&r->w->timers, &r->rtimer);
  r->in_backoff = 0;
  if (!r->rq_counted && !r->retry_held) return;
  mg_balancer_t *b = req_bal(r);
  if (r->retry_held) atomic_fetch_sub_explicit(&b->retries_active, 1, memory_order_relaxed);
  if (r->rq_counted) atomic_fetch_sub_explicit(&b->rq_active, 1, memory_order_relaxed);
  r->retry_held = r->rq_counted = 0;
}

/* A circuit breaker of the upstream is open: 503 at once (the caller counted it). */
static int breaker_open(mg_req_t *r, const char *which, int limit) {
  MG_WARN(r->w->id, "req %s: upstream %s: circuit breaker %s (%d) open: 503", r->id, req_up(r)->name, which, limit);
  mg_proxy_error(r, 503, 0);
  return 0;
}

/* Keeps n more bytes of the body as sent; past retry.buffer nothing is kept. */
static void rb_add(mg_req_t *r, const char *p, size_t n) {
  if (!r->rb_keep) return; /* (it may have outgrown the buffer a moment ago) */
  uint64_t max = req_up(r)->retry_buffer;
  if (n > max - r->rb_len) goto over;
  if (n > r->rb_cap - r->rb_len) {
    size_t cap = r->rb_cap ? r->rb_cap : 4096;
    while (cap < r->rb_len + n) cap *= 2;
    if (cap > max) cap = (size_t)max;
    char *nb = realloc(r->rb, cap);
    if (!nb) goto over;
    r->rb = nb;
    r->rb_cap = cap;
  }
  memcpy(r->rb + r->rb_len, p, n);
  r->rb_len += n;
  return;
over:
  free(r->rb);
  r->rb = NULL;
  r->rb_len = r->rb_cap = 0;
  r->rb_keep = 0;
  r->rb_over = 1;
}

/* The request may go again after some of it went out: its method says so (or
 * the route's idempotent), and the body sent so far can be sent again. */
static int resendable(const mg_req_t *r) {
  if (!is_idempotent(r->method) && !(r->route && r->route->idempotent)) return 0;
  if (r->bb_set || r->bb_done) return r->bb_len <= req_up(r)->retry_buffer;
  if (r->up_body == MG_BODY_NONE || (r->up_body == MG_BODY_LENGTH && r->up_length == 0)) return 1;
  return r->rb_keep && !r->rb_over;
}

/* After the first upstream head is queued: whether the body that streams is
 * kept for a resend (only when something but a failed connect may be retried). */
static void rb_decide(mg_req_t *r) {
  const mg_upstream_cfg_t *u = req_up(r);
  if (r->bb_set || r->bb_done || r->up_body == MG_BODY_NONE) return;
  if (!(u->retry_on & ~(unsigned)MG_RETRY_CONNECT) && !u->nretry_status) return;
  if (!is_idempotent(r->method) && !(r->route && r->route->idempotent)) return;
  if (r->up_body == MG_BODY_LENGTH && r->up_length > u->retry_buffer) r->rb_over = 1;
  else r->rb_keep = u->retry_buffer > 0;
}

/* Takes a place among the upstream's retries in flight (the one this request
 * held for its previous retry is given back first): at most retry.budget x the
 * requests in flight, and never fewer than MG_RETRY_MIN_CONCURRENCY. */
static int budget_take(mg_req_t *r) {
  const mg_upstream_cfg_t *u = req_up(r);
  mg_balancer_t *b = u->bal;
  if (r->retry_held) {
    atomic_fetch_sub_explicit(&b->retries_active, 1, memory_order_relaxed);
    r->retry_held = 0;
  }
  int active = atomic_load_explicit(&b->rq_active, memory_order_relaxed);
  int limit = (int)(u->retry_budget * active);
  if (limit < MG_RETRY_MIN_CONCURRENCY) limit = MG_RETRY_MIN_CONCURRENCY;
  int n = atomic_fetch_add_explicit(&b->retries_active, 1, memory_order_relaxed) + 1;
  if (n > limit) {
    atomic_fetch_sub_explicit(&b->retries_active, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->retries_budget_exceeded, 1, memory_order_relaxed);
    MG_WARN(r->w->id, "req %s: upstream %s: retry budget exhausted (%d retries in flight, %d requests): not retried",
            r->id, u->name, n - 1, active);
    return 0;
  }
  r->retry_held = 1;
  atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
  return 1;
}

/* May the request go again after this failure? `cond` is an MG_RETRY_* (a
 * failed connect: nothing was sent), or 0 with the status of a response head. */
static int retry_next(mg_req_t *r, int cond, int status) {
  const mg_upstream_cfg_t *u = req_up(r);
  if (r->rstate != MG_RS_NONE) return 0;
  if (status) {
    int i = 0;
    while (i < u->nretry_status && u->retry_status[i] != status) i++;
    if (i == u->nretry_status) return 0;
  } else if (!(u->retry_on & (unsigned)cond)) {
    return 0;
  }
  if (cond != MG_RETRY_CONNECT && !resendable(r)) {
    MG_DEBUG(r->w->id, "req %s: not retried: %s", r->id,
             r->rb_over ? "its body outgrew retry.buffer" : "not idempotent (route idempotent = true allows it)");
    return 0;
  }
  /* without `tries`: each server once, counting only the tried servers still
   * members (one removed or drained during its attempt leaves the others' turn) */
  if (u->retry_tries ? r->tries >= u->retry_tries : tried_members(r, u->bal) >= mg_balance_members(u->bal))
    return 0;
  if (cond == MG_RETRY_CONNECT) { /* a connect that failed cost no server any work: no
                                     budget (one server down must not turn a third of the
                                     requests into retries past it, and so into errors) */
    atomic_fetch_add_explicit(&u->bal->retries, 1, memory_order_relaxed);
    return 1;
  }
  return budget_take(r);
}

/* The upstream request goes into r->upq again for a resend: its head, and the
 * body as far as it was sent (what follows is queued behind it as it comes). */
static int requeue(mg_req_t *r) {
  mg_outq_dispose(&r->upq);
  r->upq_head = 0;
  if (build_upstream_head(r) < 0) return -1;
  r->upq_head = mg_outq_size(&r->upq);
  int rc = 0;
  if (r->bb_set || r->bb_done) {
    if (r->bb_len) append_body(&r->upq, r->bb, r->bb_len, 0);
  } else if (r->rb_len) {
    rc = mg_outq_append(&r->upq, r->rb, r->rb_len);
  }
  return rc < 0 ? -1 : 0;
}

/* The head waiting in r->upq is built again, in front of the body queued behind
 * it: what a balance hook changed for this attempt, and a Host that names the
 * server (a client without one), go with it. */
static int rehead(mg_req_t *r) {
  mg_outq_t body;
  mg_outq_init(&body, NULL, NULL);
  mg_outq_move(&body, &r->upq);
  mg_outq_drop(&body, r->upq_head);
  r->upq_head = 0;
  int rc = build_upstream_head(r);
  if (rc == 0) r->upq_head = mg_outq_size(&r->upq);
  mg_outq_move(&r->upq, &body);
  return rc < 0 ? -1 : 0;
}

static void rtimer_fired(mg_timer_t *t);

/* The retry goes on the next loop turn, to a server not tried yet when there is
 * one; when every server was tried a new round starts after a jittered
 * exponential backoff (retry.backoff: cap = min(max, base x 2^n) for the n-th
 * wait, the wait random between cap/2 and cap, so it never shrinks to nothing
 * and no two requests keep in step). Meanwhile the request holds no
 * connection and no attempt, only the timer. */
static void tried_reset(mg_req_t *r) {
  mg_tried_reset(&r->tried);
  r->ntried = 0;
}

/* A new round starts: every server may be tried again (the n-th one waits
 * backoff_delay ms first: 0 when waiting is off). */
static uint64_t new_round(mg_req_t *r) {
  const mg_upstream_cfg_t *u = req_up(r);
  tried_reset(r);
  if (!u->backoff_base_ms) return 0;
  uint64_t cap = u->backoff_base_ms << (r->backoffs < 20 ? r->backoffs : 20);
  if (cap > u->backoff_max_ms) cap = u->backoff_max_ms;
  r->backoffs++;
  return cap - (mg_rand(&r->w->rng) >> 11) % (cap / 2 + 1); /* in [cap/2, cap] */
}

static void backoff_start(mg_req_t *r, uint64_t delay) {
  r->in_backoff = 1;
  mg_timer_start(&r->w->timers, &r->rtimer, delay, rtimer_fired);
}

static void retry_start(mg_req_t *r) {
  /* (servers removed since they were tried do not count: dyn_attack_spec) */
  mg_balancer_t *b = req_up(r)->bal;
  backoff_start(r, tried_members(r, b) >= mg_balance_members(b) ? new_round(r) : 0);
}

/* retry.per_try_timeout runs from the attempt's start (or the request's end,
 * if later) to its response head. */
static void per_try_arm(mg_req_t *r) {
  if (r->upstream < 0 || r->in_backoff || r->status || r->rstate != MG_RS_NONE) return;
  uint64_t ms = req_up(r)->per_try_ms;
  if (ms && !mg_timer_active(&r->rtimer)) mg_timer_start(&r->w->timers, &r->rtimer, ms, rtimer_fired);
}

static void per_try_expired(mg_req_t *r) {
  int connecting = r->connecting;
  MG_WARN(r->w->id, "req %s: upstream %s: no response head within retry.per_try_timeout (%.3g s)", r->id,
          peer_text(r), (double)req_up(r)->per_try_ms / 1000.0);
  if (r->upc) mg_upstream_release(r->upc, 0);
  attempt_failed(r);
  r->timed_out = 1;
  /* still connecting: nothing went out, the queued request is still in r->upq */
  if (connecting ? retry_next(r, MG_RETRY_CONNECT, 0)
                 : retry_next(r, MG_RETRY_TIMEOUT, 0) && requeue(r) == 0) {
    retry_start(r);
    return;
  }
  mg_proxy_error(r, 504, 0);
}

#define REQ_OF_RTIMER(t) ((mg_req_t *)((char *)(t) - offsetof(mg_req_t, rtimer)))

static void rtimer_fired(mg_timer_t *t) {
  mg_req_t *r = REQ_OF_RTIMER(t);
  if (!r->in_backoff) {
    per_try_expired(r);
    return;
  }
  r->in_backoff = 0;
  start_upstream(r, 0);
}

/* A response head with a status retry.on lists: discarded (nothing went to the
 * client; the connection is closed) and the request sent again. 1 when so. */
static int retry_on_status(mg_req_t *r, int status) {
  if (!req_up(r)->nretry_status || !retry_next(r, 0, status) || requeue(r) < 0) return 0;
  MG_INFO(r->w->id, "req %s: upstream %s answered %d: sent again (retry.on)", r->id, peer_text(r), status);
  if (r->upc) mg_upstream_release(r->upc, 0);
  attempt_end(r);
  retry_start(r);
  return 1;
}

/* route > upstream > global */
static uint64_t pick_ms(uint64_t route, uint64_t up, uint64_t global) { return route ? route : up ? up : global; }

/* `balanced`: the balance hook already ran for this attempt (it waited). */
static int pick_server(mg_req_t *r, int balanced, int head) {
  const mg_upstream_cfg_t *u = &r->gen->upstreams[r->upstream];
  mg_balancer_t *b = u->bal;
  if (!r->rq_counted) { /* the first attempt: the request is in flight on the upstream */
    r->rq_counted = 1;
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
    int n = atomic_fetch_add_explicit(&b->rq_active, 1, memory_order_relaxed) + 1;
    if (u->max_requests && n > u->max_requests) {
      atomic_fetch_add_explicit(&b->overflow_requests, 1, memory_order_relaxed);
      return breaker_open(r, "max_requests", u->max_requests);
    }
  }
  const mg_route_t *rt = r->route;
  for (;;) {
    int s = -1;
    /* (balanced: the balance phase waited, in a hook or in a hash_key function,
     * and what it chose counts) */
    if (balanced || mg_hook_on(r->gen, r->route, MG_HOOK_BALANCE) || (u->hash_fn && !r->hkey_ran)) {
      if (!balanced) {
        r->pick = -1;
        int rc = mg_lua_hook(&r->lua, MG_HOOK_BALANCE, NULL);
        if (rc == MG_LUA_WAIT) return upstream_wait(r, MG_HOOK_BALANCE, head);
        if (rc < 0) {
          mg_proxy_error(r, 500, 0);
          return 0;
        }
      }
      balanced = 0;
      /* (a server down or ejected is used when the hook says so; one drained or
       * removed is not: the policy picks instead) */
      if (r->pick >= 0 && !mg_tried_has(&r->tried, r->pick) &&
          !(atomic_load_explicit(&mg_balance_peer(u->bal, r->pick)->flags, memory_order_relaxed) &
            (MG_PEER_DRAINING | MG_PEER_REMOVED)))
        s = r->pick;
    }
    if (s < 0 && u->sticky_cookie) {
      int k = sticky_lookup(r, u) - 1;
      if (k >= 0 && !mg_tried_has(&r->tried, k) && mg_balance_usable(u->bal, k)) s = k;
    }
    if (s < 0) s = policy_pick(r, u);
    if (s < 0 && r->ntried && r->ntried < mg_balance_members(u->bal) && r->tries < u->retry_tries) {
      /* those not tried may not be picked (down, ejected): a new round among the
       * rest, after its backoff as any new round (the balance hook runs again) */
      uint64_t delay = new_round(r);
      if (delay) {
        backoff_start(r, delay);
        return 0;
      }
      s = policy_pick(r, u);
    }
    if (s < 0 && (s = no_server_usable(r, u)) == -2) return 0; /* i12-health */
    if (s < 0) {
      mg_proxy_error(r, r->timed_out ? 504 : 502, 0);
      return 0;
    }
    if (tried_mark(r, s, mg_upstream_nservers(u)) < 0) {
      mg_proxy_error(r, 500, 0);
      return 0;
    }
    r->server = s;
    r->t_try = uv_hrtime(); /* the EWMA's sample starts; the first also upstream_time's */
    if (!r->t_up_start) r->t_up_start = r->t_try;
    if (r->upq_head && rehead(r) < 0) { /* (a retry: the head was queued before its
                                               balance hook ran and its server was known) */
      mg_proxy_error(r, 500, 1);
      return 0;
    }
    if (r->upq.pending == 0 && queue_request(r) < 0) {
      mg_proxy_error(r, 500, 1);
      return 0;
    }
    if (r->tries++ == 0) rb_decide(r);
    mg_up_link_t link = {
      .owner = r, .ev = &up_events, .slot = &r->upc, .id = r->id, .rhead = &r->rhead,
      .is_head = r->method == HTTP_HEAD, .sent_all = r->complete, .upgrade = r->upgrade,
      .may_splice = u->splice && !u->tls && !r->down->ssl && r->down->tp && r->method != HTTP_HEAD && !r->upgrade &&
                    !mg_hook_on(r->gen, r->route, MG_HOOK_BODY),
      .tunnel_ms = r->gen->timeouts.tunnel,
      .connect_ms = pick_ms(rt ? rt->connect_ms : 0, u->connect_ms, r->gen->timeouts.upstream_connect),
      .read_ms = pick_ms(rt ? rt->read_ms : 0, u->read_ms, r->gen->timeouts.upstream_read),
      .write_ms = pick_ms(rt ? rt->write_ms : 0, u->write_ms, r->gen->timeouts.upstream_write),
      .paused_ms = r->gen->timeouts.upstream_paused,
    };
    if (u->proxy_protocol) { /* the header names the client as this exchange sees it */
      mg_down_t *d = r->down;
      if (d->local.sa.sa_family == AF_UNSPEC) d->ops->local_addr(d->conn);
      link.pp_src = &d->peer.sa;
      link.pp_dst = &d->local.sa;
    }
    attempt_end(r); /* (an attempt before this one ended already: a no-op) */
    if (u->max_connections &&
        atomic_load_explicit(&b->conns, memory_order_relaxed) >= u->max_connections) {
      atomic_fetch_add_explicit(&b->overflow_connections, 1, memory_order_relaxed);
      return breaker_open(r, "max_connections", u->max_connections);
    }
    attempt_begin(r, s);
    int rc = mg_upstream_get(r->w, &link, u, mg_upstream_server(u, s));
    if (rc >= 0 && r->complete) per_try_arm(r);
    if (rc == 1) {
      up_ready(r);
      return 0;
    }
    if (rc == 0) { /* connecting: max_pending */
      r->connecting = 1;
      int n = atomic_fetch_add_explicit(&b->pending, 1, memory_order_relaxed) + 1;
      if (u->max_pending && n > u->max_pending) {
        atomic_fetch_add_explicit(&b->overflow_pending, 1, memory_order_relaxed);
        if (r->upc) mg_upstream_release(r->upc, 0);
        attempt_end(r);
        return breaker_open(r, "max_pending", u->max_pending);
      }
      return 0;
    }
    attempt_failed(r);
    MG_WARN(r->w->id, "req %s: upstream %s: %s", r->id, mg_upstream_server(u, s)->text, uv_strerror(rc));
    /* nothing went out: a failed connect (the queued request waits in r->upq) */
    if (!retry_next(r, MG_RETRY_CONNECT, 0)) {
      mg_proxy_error(r, r->timed_out ? 504 : 502, 0);
      return 0;
    }
    retry_start(r);
    return 0;
  }
}

static void up_ready(void *owner) {
  mg_req_t *r = owner;
  mg_upconn_t *u = r->upc;
  if (r->connecting) { /* no longer pending (max_pending) */
    atomic_fetch_sub_explicit(&req_bal(r)->pending, 1, memory_order_relaxed);
    r->connecting = 0;
  }
  mg_outq_move(&u->tp.out, &r->upq);
  r->upq_head = 0;
  if (mg_upstream_flush(u) < 0) return; /* failed: the exchange moved on, r may be gone */
  mg_down_t *c = r->down;
  if (c->up_blocked && !mg_outq_full(&u->tp.out)) {
    c->up_blocked = 0;
    c->ops->reading(c->conn);
  }
}

static void up_failed(void *owner, int connect, int timeout, int stale) {
  mg_req_t *r = owner;
  const mg_upstream_cfg_t *u = &r->gen->upstreams[r->upstream];
  const char *peer = mg_upstream_server(u, r->server)->text;
  if (r->upc) mg_upstream_release(r->upc, 0);
  if (stale && !connect) attempt_end(r); /* a pooled connection the server had closed:
                                            not the server's failure */
  else attempt_failed(r);
  if (r->rstate != MG_RS_NONE) {
    MG_WARN(r->w->id, "req %s: upstream %s failed mid-response", r->id, peer);
    r->down->ops->close(r->down->conn);
    return;
  }
  if (connect) {
    MG_WARN(r->w->id, "req %s: upstream %s: connect %s", r->id, peer, timeout ? "timed out" : "failed");
    if (timeout) r->timed_out = 1;
    /* nothing went out (the queued request waits in r->upq): any method may go again */
    if (retry_next(r, MG_RETRY_CONNECT, 0)) {
      retry_start(r);
      return;
    }
    mg_proxy_error(r, r->timed_out ? 504 : 502, 0);
    return;
  }
  /* A pooled connection the server had closed: the request never got an answer;
   * send it again once on a fresh connection when that is safe. */
  if (stale && !timeout && !r->stale_retry && r->body_sent == 0 && r->body != MG_BODY_CHUNKED &&
      is_idempotent(r->method)) {
    r->stale_retry = 1;
    if (mg_tried_has(&r->tried, r->server)) r->ntried--;
    mg_tried_clear(&r->tried, r->server);
    r->tries--; /* not the server's failure: no try spent */
    mg_outq_dispose(&r->upq);
    r->upq_head = 0;
    start_upstream(r, 0);
    return;
  }
  MG_WARN(r->w->id, "req %s: upstream %s: %s before a response", r->id, peer,
          timeout ? "timed out" : "closed or reset");
  if (timeout) r->timed_out = 1;
  if (retry_next(r, timeout ? MG_RETRY_TIMEOUT : MG_RETRY_RESET, 0) && requeue(r) == 0) {
    retry_start(r);
    return;
  }
  mg_proxy_error(r, timeout ? 504 : 502, 0);
}

/* A response header that does not go to the client: hop-by-hop, Server,
 * X-Powered-By, Content-Length (moongate frames the body itself), one the
 * Connection header lists, and Strict-Transport-Security when the listener sends
 * its own (skip_sts). By length first: most names need no compare. */
static int resp_header_skipped(mg_str_t n, mg_str_t conn_value, int skip_sts) {
  switch (n.len) {
  case 6:
    if (MG_NAME_IS(n, "server")) return 1;
    break;
  case 12:
    if (MG_NAME_IS(n, "x-powered-by")) return 1;
    break;
  case 14:
    if (MG_NAME_IS(n, "content-length")) return 1;
    break;
  case 25:
    if (skip_sts && MG_NAME_IS(n, "strict-transport-security")) return 1;
    break;
  default:
    if (mg_http_is_hop_by_hop(n)) return 1;
    break;
  }
  return listed_hop(conn_value, n);
}

/* The first Transfer-Encoding, Date and Connection headers of a response head
 * (what mg_head_get finds), noted in a pass that visits every header anyway. */
typedef struct {
  const mg_header_t *te, *date, *connection;
} resp_seen_t;

static void note_header(resp_seen_t *s, const mg_header_t *hd) {
  switch (hd->name.len) {
  case 4:
    if (!s->date && MG_NAME_IS(hd->name, "date")) s->date = hd;
    break;
  case 10:
    if (!s->connection && MG_NAME_IS(hd->name, "connection")) s->connection = hd;
    break;
  case 17:
    if (!s->te && MG_NAME_IS(hd->name, "transfer-encoding")) s->te = hd;
    break;
  }
}

static void resp_seen(const mg_head_t *h, resp_seen_t *s) {
  *s = (resp_seen_t){ NULL, NULL, NULL };
  for (size_t i = 0; i < h->n; i++) note_header(s, &h->headers[i]);
}

/* Every response header must be a token and a value without NUL, CR or LF:
 * anything else is refused (502), never passed on. Notes what `seen` holds. */
static int check_response_headers(mg_req_t *r, const mg_head_t *h, const char *peer, resp_seen_t *seen) {
  *seen = (resp_seen_t){ NULL, NULL, NULL };
  for (size_t i = 0; i < h->n; i++) {
    const mg_header_t *hd = &h->headers[i];
    if (!mg_http_is_token(hd->name)) {
      MG_WARN(r->w->id, "req %s: upstream %s: bad response: header name '%.*s' is not a token", r->id,
              peer, (int)(hd->name.len > 64 ? 64 : hd->name.len), hd->name.p);
      return -1;
    }
    if (mg_http_bad_value(hd->value)) {
      MG_WARN(r->w->id, "req %s: upstream %s: bad response: NUL, CR or LF in the value of '%.*s'",
              r->id, peer, (int)(hd->name.len > 64 ? 64 : hd->name.len), hd->name.p);
      return -1;
    }
    note_header(seen, hd);
  }
  return 0;
}

static const char *peer_text(const mg_req_t *r) {
  if (r->upstream < 0 || r->server < 0) return "-";
  return mg_upstream_server(&r->gen->upstreams[r->upstream], r->server)->text;
}

/* Header lines of a response head as they go to the client (resp_header_skipped
 * says which are left out); `connection` is the head's Connection header. */
static void append_response_headers(hw_t *q, const mg_head_t *h, int skip_sts, const mg_header_t *connection) {
  mg_str_t conn_value = connection ? connection->value : (mg_str_t){ NULL, 0 };
  for (size_t i = 0; i < h->n; i++) {
    const mg_header_t *hd = &h->headers[i];
    if (resp_header_skipped(hd->name, conn_value, skip_sts)) continue;
    hw_put(q, hd->name.p, hd->name.len);
    HW_LIT(q, ": ");
    hw_put(q, hd->value.p, hd->value.len);
    HW_LIT(q, "\r\n");
  }
}

static void append_status_line(hw_t *q, int status) {
  HW_LIT(q, "HTTP/1.1 ");
  hw_uint(q, (uint64_t)status);
  HW_LIT(q, " ");
  const char *reason = mg_http_reason(status);
  hw_put(q, reason, strlen(reason));
  HW_LIT(q, "\r\n");
}

static void up_interim(void *owner, int status) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  /* HTTP/1.0 clients know no 1xx; after the final head it is too late */
  if (r->http_minor == 0 || r->rstate != MG_RS_NONE) return;
  resp_seen_t seen;
  if (check_response_headers(r, &r->rhead, peer_text(r), &seen) < 0) return; /* dropped: only a hint */
  size_t before = mg_outq_size(c->out);
  hw_t hw, *q = &hw;
  hw_begin(q, c->out);
  append_status_line(q, status);
  append_response_headers(q, &r->rhead, 0, seen.connection);
  HW_LIT(q, "\r\n");
  hw_end(q);
  r->bytes_out += mg_outq_size(c->out) - before;
}

static int head_out(mg_req_t *r, int rehead, resp_seen_t *seen_in);
static void append_cache_status_fwd(mg_req_t *r, hw_t *q);
static int cache_revalidated(mg_req_t *r);
static int cache_stale_if_error(mg_req_t *r, int status);

static int up_head(void *owner, int up_status, int up_has_length, uint64_t up_length) {
  mg_req_t *r = owner;
  if (!r->in_backoff) mg_timer_stop(&r->w->timers, &r->rtimer); /* per_try_timeout: a head came */
  if (r->active_on)
    mg_peer_answered(req_bal(r), r->active_on - 1, (uv_hrtime() - r->t_try) / 1000);
  if (r->active_on && req_bal(r)->eject_consecutive) /* i12-health: ejection counts 5xx */
    mg_peer_status(req_bal(r), r->active_on - 1, up_status);
  if (retry_on_status(r, up_status)) return -1; /* discarded: the request goes again */
  resp_seen_t seen;
  if (check_response_headers(r, &r->rhead, peer_text(r), &seen) < 0) return -1;
  /* codings other than chunked would be lost when the body is re-framed */
  const mg_header_t *te = seen.te;
  if (te && !MG_NAME_IS(te->value, "chunked")) {
    MG_WARN(r->w->id, "req %s: upstream response with Transfer-Encoding '%.*s' refused", r->id,
            (int)te->value.len, te->value.p);
    return -1;
  }
  r->status = up_status;
  if (up_status == 101) return tunnel_start(r, seen.connection);
  if (r->c_obj && up_status == 304 && r->c_obj->meta.has_validator && cache_revalidated(r))
    return -1; /* answered from the store */
  if (r->c_sie && up_status >= 500 && cache_stale_if_error(r, up_status)) return -1;
  r->up_status = up_status;
  r->up_has_len = up_has_length;
  r->up_len = up_length;
  if (mg_hook_on(r->gen, r->route, MG_HOOK_RESPONSE)) {
    int rc = mg_lua_hook(&r->lua, MG_HOOK_RESPONSE, NULL);
    if (rc == MG_LUA_WAIT) { /* nothing more is read from the upstream, nothing goes to
                                the client, until it is done (response_hooked) */
      hook_wait_in(r, MG_HOOK_RESPONSE, 0);
      mg_upstream_hold(r->upc);
      return 0;
    }
    if (rc < 0) {
      mg_proxy_error(r, 500, 0); /* releases the upstream connection */
      return -1;
    }
    return head_out(r, 1, &seen);
  }
  return head_out(r, 0, &seen);
}

/* The response hook that waited goes on; then the head goes out and the
 * upstream is read again. */
static void response_hooked(mg_req_t *r) {
  int rc = hook_resume(r, MG_HOOK_RESPONSE, "504");
  if (rc == MG_LUA_WAIT) {
    hook_wait_in(r, MG_HOOK_RESPONSE, 0);
    return;
  }
  if (rc < 0) {
    mg_proxy_error(r, rc == MG_LUA_TIMEOUT ? 504 : 500, 0); /* releases the upstream connection */
    return;
  }
  resp_seen_t seen;
  if (head_out(r, 1, &seen) < 0) return; /* answered (500): the upstream connection went */
  if (r->upc) mg_upstream_unhold(r->upc); /* what it held is parsed, then it is read again */
}

/* The response head goes to the client (after the response hook, if any);
 * `rehead`: a hook saw the head, *seen is found again. */
static int head_out(mg_req_t *r, int rehead, resp_seen_t *seen_in) {
  mg_down_t *c = r->down;
  resp_seen_t seen = *seen_in;
  if (response_filters(r, &rehead) < 0) {
    mg_proxy_error(r, 500, 0);
    return -1;
  }
  /* after the filters' heads: a range_fetch slice sends its part's length */
  int up_status = r->up_status, up_has_length = r->up_has_len;
  uint64_t up_length = r->up_len;
  if (rehead) resp_seen(&r->rhead, &seen);
  *seen_in = seen;
  int body_hook = mg_fchain_changes_length(&r->resp_chain);
  int status = r->status;
  r->rstate = MG_RS_HEAD;
  /* Framing follows the status actually sent and the method the client sent: a
   * response hook may have made a 204/304 (which came without a body) a 200, or
   * the reverse; req:set_method may have made a HEAD another method upstream,
   * or the reverse. */
  r->rnobody = r->down_method == HTTP_HEAD || status == 204 || status == 304;
  /* a body is due, and none will come */
  int empty = (up_status == 204 || up_status == 304 || r->method == HTTP_HEAD) && !r->rnobody;
  /* a body hook may change the length: re-frame */
  int has_len = up_has_length && !body_hook && !empty;
  if (!r->rnobody && !has_len && !empty) {
    if (r->http_minor == 1) r->rchunked = 1;
    else c->close_after = 1; /* framed by the close */
  }
  size_t before = mg_outq_size(c->out);
  hw_t hw, *q = &hw;
  hw_begin(q, c->out);
  append_status_line(q, status);
  append_response_headers(q, &r->rhead, c->hsts != NULL, seen.connection);
  if (c->hsts) hw_put(q, c->hsts, strlen(c->hsts));
  if (r->c_on) append_cache_status_fwd(r, q);
  if (r->server >= 0 && r->gen->upstreams[r->upstream].sticky_cookie) append_sticky(r, q);
  if (!seen.date) append_date(r->w, q);
  if (empty) {
    HW_LIT(q, "Content-Length: 0\r\n");
  } else if (has_len && status != 204 && !(status == 304 && up_length == 0)) {
    HW_LIT(q, "Content-Length: ");
    hw_uint(q, up_length);
    HW_LIT(q, "\r\n");
  }
  else if (r->rchunked) HW_LIT(q, "Transfer-Encoding: chunked\r\n");
  if (will_close(r)) HW_LIT(q, "Connection: close\r\n\r\n");
  else if (r->http_minor == 0) HW_LIT(q, "Connection: keep-alive\r\n\r\n");
  else HW_LIT(q, "\r\n");
  hw_end(q);
  r->bytes_out += mg_outq_size(c->out) - before;
  /* nothing needs to see the body, which goes as it comes: the kernel may move
   * it from socket to socket (the upstream connection decides at the end of the
   * read, from what is left of it) */
  if (r->upc && c->tp && !c->ssl && !r->resp_chain.first && has_len && !r->rchunked && !r->rnobody &&
      up_length >= MG_SPLICE_MIN)
    mg_upstream_splice(r->upc, c->tp);
  return 0; /* flushed by mg_proxy_response_flush after the read */
}

static void up_body(void *owner, const char *p, size_t len) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  if (r->tunnel) {
    mg_outq_append(c->out, p, len);
    r->bytes_out += len;
    return;
  }
  if (r->rnobody) return; /* e.g. the response hook made it a 204 */
  if (mg_fchain_body(&r->resp_chain, p, len) < 0)
    c->ops->close_after_flush(c->conn); /* the head is out: cut the body short */
}

/* Body bytes went to the client by splicing; some may wait in its queue. */
static void up_spliced(void *owner, size_t n) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  r->bytes_out += n;
  c->ops->flush(c->conn); /* may close c and free r */
  if (c->closed || !r->upc) return;
  if (mg_outq_full(c->out)) mg_upstream_pause(r->upc, 1);
}

static void up_flush(void *owner) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  mg_upconn_t *u = r->upc;
  /* a streamed body (no length): the filters pass on what they hold (an
   * encoder's pending bytes), so the client sees what the upstream sent so far */
  if (r->resp_chain.first && !r->up_has_len && !r->rnobody && r->rstate == MG_RS_HEAD &&
      mg_fchain_flush(&r->resp_chain) < 0) {
    c->ops->close_after_flush(c->conn); /* a filter failed: cut short */
    return;
  }
  c->ops->flush(c->conn); /* may close c and free r */
  if (c->closed || !u || u->owner != r) return;
  /* a tunnel's first client bytes (sent before the 101) wait in u's queue */
  if (r->tunnel && mg_upstream_flush(u) < 0) return;
  if (!r->upc) return;
  if (mg_outq_full(c->out)) mg_upstream_pause(u, 1);
}

static void up_end(void *owner) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  if (!r->rnobody && mg_fchain_end(&r->resp_chain) < 0) {
    c->ops->close_after_flush(c->conn); /* a filter failed at the end: cut short */
    return;
  }
  r->t_up_end = uv_hrtime();
  r->rstate = MG_RS_DONE;
  attempt_end(r);
  request_done(r);
  c->up_blocked = 0; /* the upstream is done with the body, whatever was left */
  c->ops->flush(c->conn);
  if (c->closed) return;
  c->ops->done(c->conn);
}

/* The body hook that waited on a piece goes on: what it gave goes down the chain,
 * then the upstream is read again (the pieces behind it come in order). Dropped
 * (timeouts.hook) or failed: the head is out, the connection ends after what was
 * sent. */
static void body_hooked(mg_req_t *r) {
  int rc = r->hook_rc;
  r->hook_wait = 0;
  mg_str_t chunk = { NULL, 0 };
  if (rc != MG_LUA_TIMEOUT) rc = mg_lua_resume_chunk(&r->lua, &chunk);
  if (rc == MG_LUA_WAIT) {
    hook_wait_in(r, MG_HOOK_BODY, 0);
    return;
  }
  mg_down_t *c = r->down;
  mg_filter_t *f = r->body_wait;
  r->body_wait = NULL;
  if (rc == MG_LUA_TIMEOUT)
    MG_WARN(r->w->id, "req %s: body hook of route %d took longer than timeouts.hook: connection closed", r->id,
            r->lua.route);
  if (rc < 0 || (chunk.p && mg_filter_pass(f, chunk.p, chunk.len) < 0)) {
    c->ops->close_after_flush(c->conn); /* the head is out: cut the body short */
    return;
  }
  if (r->upc) mg_upstream_unhold(r->upc);
  else c->ops->flush(c->conn);
}

void mg_proxy_client_drained(mg_req_t *r) {
  if (r->upc && r->upc->paused) mg_upstream_pause(r->upc, 0);
}

static void up_drained(void *owner) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  if (c->up_blocked) {
    c->up_blocked = 0;
    c->ops->reading(c->conn);
  }
}

/* ---------------- tunnels (Upgrade, WebSocket) ---------------- */

/* A 101 to an upgrade request: the head goes to the client with the upstream's
 * Upgrade, and both connections become a tunnel. The response and body hooks
 * do not run: what follows is not HTTP. */
static int tunnel_start(mg_req_t *r, const mg_header_t *connection) {
  mg_down_t *c = r->down;
  const mg_header_t *up = mg_head_get(&r->rhead, MG_STR("upgrade"));
  if (!up || !up->value.len) {
    MG_WARN(r->w->id, "req %s: upstream %s: bad response: 101 without Upgrade", r->id, peer_text(r));
    return -1;
  }
  size_t before = mg_outq_size(c->out);
  hw_t hw, *q = &hw;
  hw_begin(q, c->out);
  append_status_line(q, 101);
  append_response_headers(q, &r->rhead, 0, connection);
  /* a client that only opens WebSockets is pinned too (RFC 6455 4.1: the client
   * processes the 101's cookies) */
  if (r->server >= 0 && r->gen->upstreams[r->upstream].sticky_cookie) append_sticky(r, q);
  HW_LIT(q, "Upgrade: ");
  hw_put(q, up->value.p, up->value.len);
  HW_LIT(q, "\r\nConnection: upgrade\r\n\r\n");
  hw_end(q);
  r->bytes_out += mg_outq_size(c->out) - before;
  r->tunnel = 1;
  r->rstate = MG_RS_HEAD;
  c->close_after = 1; /* no HTTP after a tunnel */
  c->ops->tunnel(c->conn);
  return 0;
}

void mg_proxy_tunnel_in(mg_req_t *r, const char *p, size_t len) {
  r->bytes_in += len;
  if (r->upc) mg_outq_append(&r->upc->tp.out, p, len); /* flushed after the read */
}

void mg_proxy_tunnel_eof(mg_req_t *r) {
  if (r->upc) mg_upstream_shutdown(r->upc); /* the upstream's close ends the tunnel */
}

static void up_tunnel_end(void *owner, const char *why) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  if (why) MG_INFO(r->w->id, "req %s: tunnel to upstream %s ended: %s", r->id, peer_text(r), why);
  r->t_up_end = uv_hrtime();
  r->rstate = MG_RS_DONE;
  attempt_end(r);
  request_done(r);
  c->up_blocked = 0;
  c->ops->close_after_flush(c->conn); /* what came before the close still goes out */
}

/* timeouts.upstream_paused: the client has not taken the response for that long
 * (upstream.c closed the upstream connection): the exchange ends both ways. */
static void up_slow_client(void *owner) {
  mg_req_t *r = owner;
  mg_down_t *c = r->down;
  MG_INFO(r->w->id, "req %s: client %s did not take the response for %.3g s (timeouts.upstream_paused): "
          "closing it and upstream %s", r->id, c->client, (double)r->gen->timeouts.upstream_paused / 1000.0,
          peer_text(r));
  c->ops->close(c->conn);
}

static const mg_up_events_t up_events = {
  .ready = up_ready, .failed = up_failed, .interim = up_interim, .head = up_head, .body = up_body,
  .end = up_end, .flush = up_flush, .drained = up_drained, .slow_client = up_slow_client,
  .tunnel_end = up_tunnel_end, .spliced = up_spliced,
};

/* ---------------- the cache (issue 13, docs/cache.md) ----------------
 *
 * On a route with `cache`, a GET or HEAD without a body is looked up after the
 * request hooks and before balancing (cache_lookup): a fresh object (or a stale
 * one the request's max-stale accepts) answers at once, with Age and
 * Cache-Status, a 304 or 412 when the client's conditionals say so, the head
 * alone for a HEAD. Otherwise the request goes upstream; when the response
 * head is known, cachepol decides whether it may be stored (cache_fill_begin)
 * and a filter at the end of the response chain copies the body into a writer,
 * committed when the body ends. Concurrent misses of a key collapse into one
 * fetch, and stale-while-revalidate refreshes in the background (both at the
 * end of this section). What is not done yet: docs/notes-i13-cache.md. */

/* Stored header lines parsed on the stack; a head with more (the origin may send
 * up to 200, hooks add more) is parsed into the request's arena: stored_hdrs. */
#define STORED_MAX 128
/* A secondary key longer than this is not stored (nor matched). */
#define VARY_KEY_MAX 2048

struct mg_cfill_s {
  mg_cp_meta_t meta;
};

static mg_cp_hdrs_t req_hdrs(const mg_req_t *r) { return (mg_cp_hdrs_t){ r->head.headers, r->head.n }; }

/* The stored head's "name: value\r\n" lines as headers (slices into it), only
 * those named `only` when it is not empty: how many. *more (may be NULL) is set
 * when out filled before the head ended. */
static size_t stored_headers(mg_str_t head, mg_str_t only, mg_header_t *out, size_t cap, int *more) {
  size_t n = 0;
  const char *p = head.p, *end = head.p + head.len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon && (!only.len || mg_http_name_is((mg_str_t){ p, (size_t)(colon - p) }, only.p, only.len))) {
      if (n == cap) break;
      const char *v = colon + 1, *ve = le;
      while (v < ve && *v == ' ') v++;
      if (ve > v && ve[-1] == '\r') ve--;
      out[n++] = (mg_header_t){ { p, (size_t)(colon - p) }, { v, (size_t)(ve - v) } };
    }
    p = nl ? nl + 1 : end;
  }
  if (more) *more = p < end;
  return n;
}

/* Every header of a stored head: into stack (STORED_MAX entries) when they fit,
 * else into r's arena. h NULL when out of memory. */
static mg_cp_hdrs_t stored_hdrs(mg_req_t *r, mg_str_t head, mg_header_t *stack) {
  int more;
  size_t n = stored_headers(head, (mg_str_t){ NULL, 0 }, stack, STORED_MAX, &more);
  if (!more) return (mg_cp_hdrs_t){ stack, n };
  size_t lines = 1;
  for (const char *p = head.p, *end = head.p + head.len; (p = memchr(p, '\n', (size_t)(end - p))); p++) lines++;
  mg_header_t *all = mg_arena_alloc(&r->arena, lines * sizeof(*all));
  if (!all) return (mg_cp_hdrs_t){ NULL, 0 };
  return (mg_cp_hdrs_t){ all, stored_headers(head, (mg_str_t){ NULL, 0 }, all, lines, NULL) };
}

/* Under the shard's lock (cache.h): the variant whose secondary key is the
 * request's. No allocation, no call into the store. */
static int vary_match(const mg_cobj_t *o, void *ctx) {
  if (o->vary.len == 0) return 1; /* stored without Vary: for every request */
  mg_req_t *r = ctx;
  mg_header_t hs[STORED_MAX]; /* its Vary lines alone: wherever they are in the head */
  int more;
  mg_cp_hdrs_t res = { hs, stored_headers(o->head, MG_STR("vary"), hs, STORED_MAX, &more) }, rq = req_hdrs(r);
  char buf[VARY_KEY_MAX];
  size_t len;
  if (more || mg_cp_vary_key(&res, &rq, buf, sizeof(buf), &len) != 0) return 0;
  return len == o->vary.len && memcmp(buf, o->vary.p, len) == 0;
}

static void put_lit(char *b, size_t *at, const char *s, size_t n) {
  memcpy(b + *at, s, n);
  *at += n;
}

/* v in decimal (no printf on a hit's path) */
static void put_u64(char *b, size_t *at, uint64_t v) {
  char d[MG_U64_DEC];
  const char *p = mg_u64_dec(d, v);
  put_lit(b, at, p, (size_t)(d + sizeof(d) - p));
}

/* ---- i13-range: ranges from the store (RFC 9110 14), compression of hits ---- */

/* A Range header's bytes range set, as parsed: how many range-specs (2 means
 * "several") and the first one. */
typedef struct {
  int n;
  int suffix;         /* "-N": the last N bytes (N in last) */
  int has_last;
  uint64_t first, last;
} range_set_t;

enum { RANGE_NONE, RANGE_ONE, RANGE_UNSAT };

/* Digits at *p (at least one), saturating far above any stored length. */
static int range_digits(const char **p, const char *end, uint64_t *v) {
  const char *s = *p;
  uint64_t x = 0;
  while (*p < end && **p >= '0' && **p <= '9') {
    if (x < (UINT64_C(1) << 60)) x = x * 10 + (uint64_t)(**p - '0');
    (*p)++;
  }
  *v = x;
  return *p > s;
}

/* RFC 9110 14.1.2: "bytes=" 1#( first "-" [ last ] / "-" suffix ), empty list
 * elements and OWS around commas allowed. 0, or -1 when it is not that (another
 * unit, bad syntax, last < first): such a Range is ignored. */
static int range_syntax(mg_str_t v, range_set_t *rs) {
  const char *p = v.p, *end = v.p + v.len;
  memset(rs, 0, sizeof(*rs));
  if (v.len < 6 || strncasecmp(p, "bytes=", 6) != 0) return -1;
  p += 6;
  for (;;) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p < end && *p == ',') {
      p++;
      continue;
    }
    if (p == end) break;
    range_set_t one = { 0 };
    if (*p == '-') {
      p++;
      one.suffix = 1;
      if (!range_digits(&p, end, &one.last)) return -1;
    } else {
      if (!range_digits(&p, end, &one.first) || p == end || *p++ != '-') return -1;
      one.has_last = range_digits(&p, end, &one.last);
      if (one.has_last && one.last < one.first) return -1;
    }
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    if (p < end && *p != ',') return -1;
    if (rs->n == 0) *rs = one;
    rs->n = rs->n < 2 ? rs->n + 1 : 2;
  }
  return rs->n ? 0 : -1;
}

/* The request's one Range field with a valid bytes range set: 1, else 0 (none,
 * several fields, invalid: ignored). */
static int range_of(const mg_cp_hdrs_t *rq, range_set_t *rs) {
  const mg_header_t *h = NULL;
  for (size_t i = 0; i < rq->n; i++) {
    if (!MG_NAME_IS(rq->h[i].name, "range")) continue;
    if (h) return 0;
    h = &rq->h[i];
  }
  return h && range_syntax(h->value, rs) == 0;
}

/* The part of a representation of `len` bytes one range set selects: RANGE_ONE
 * with [*from, *to); RANGE_UNSAT (RFC 9110 14.1.1: a first past the end, a
 * suffix of 0); RANGE_NONE for several ranges (the whole 200: multipart/byteranges
 * is not made) or a suffix of an empty representation (nothing to select). */
static int range_resolve(const range_set_t *rs, uint64_t len, uint64_t *from, uint64_t *to) {
  if (rs->n != 1) return RANGE_NONE;
  if (rs->suffix) {
    if (rs->last == 0) return RANGE_UNSAT;
    if (len == 0) return RANGE_NONE;
    *from = rs->last >= len ? 0 : len - rs->last;
    *to = len;
    return RANGE_ONE;
  }
  if (rs->first >= len) return RANGE_UNSAT;
  *from = rs->first;
  *to = rs->has_last && rs->last < len ? rs->last + 1 : len;
  return RANGE_ONE;
}

/* RFC 9110 13.1.5: the request's If-Range (when it has one) against a response's
 * headers: a strong entity tag equal to its strong ETag, or a date equal byte for
 * byte to its Last-Modified. 1 when the range applies. */
static int if_range_ok(const mg_cp_hdrs_t *rq, const mg_cp_hdrs_t *res) {
  const mg_header_t *ir = mg_cp_get(rq, MG_STR("if-range"));
  if (!ir) return 1;
  mg_str_t v = ir->value;
  if (v.len && (v.p[0] == '"' || v.p[0] == 'W')) {
    const mg_header_t *et = mg_cp_get(res, MG_STR("etag"));
    return v.p[0] == '"' && et && et->value.len && et->value.p[0] == '"' && mg_str_eq(v, et->value);
  }
  const mg_header_t *lm = mg_cp_get(res, MG_STR("last-modified"));
  return lm && v.len && mg_str_eq(v, lm->value);
}

/* The range a GET asks of a full 200 (rq its headers, res the response's, len
 * its body's length): RANGE_* and [*from, *to). A response whose origin said
 * Accept-Ranges: none is not cut. */
static int range_for(const mg_cp_hdrs_t *rq, const mg_cp_hdrs_t *res, uint64_t len, uint64_t *from, uint64_t *to) {
  range_set_t rs;
  if (!range_of(rq, &rs) || !if_range_ok(rq, res)) return RANGE_NONE;
  const mg_header_t *ar = mg_cp_get(res, MG_STR("accept-ranges"));
  if (ar && MG_NAME_IS(ar->value, "none")) return RANGE_NONE;
  return range_resolve(&rs, len, from, to);
}

/* A 416 for a range past the stored body's end: Content-Range says its length.
 * Nothing else of the stored head (its Cache-Control would let a cache downstream
 * keep the 416 for the URL). */
static void cache_answer_416(mg_req_t *r, uint64_t len, const char *cs, size_t cslen) {
  char h[320];
  int n = snprintf(h, sizeof(h),
                   "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%llu\r\nContent-Length: 0\r\n"
                   "Cache-Status: %.*s\r\n",
                   (unsigned long long)len, (int)cslen, cs);
  answer(r, 416, h, (size_t)n, NULL, 0, NULL);
}

/* The route's compression applied to a hit as compress_head applies it to a
 * miss: the stored headers st (status, body length len) become *out (malloc'd:
 * the caller frees it), with Content-Encoding, Vary and a weak ETag when the
 * client gets an encoding (r->enc is then set), or Vary alone when another
 * Accept-Encoding would have had one. compress_head works on r->rhead, which may
 * hold the upstream's head of a revalidation (read by the log hook later): it is
 * set aside for the call. 0, or MG_ENOMEM. */
static int cache_compress(mg_req_t *r, const mg_cp_hdrs_t *st, int status, uint64_t len, mg_head_t *out) {
  mg_head_t saved = r->rhead;
  int saved_status = r->status, saved_has_len = r->up_has_len;
  uint64_t saved_len = r->up_len;
  memset(out, 0, sizeof(*out));
  out->hcap = st->n + 8;
  out->headers = malloc(out->hcap * sizeof(*out->headers));
  if (!out->headers) return MG_ENOMEM;
  if (st->n) memcpy(out->headers, st->h, st->n * sizeof(*out->headers));
  out->n = st->n;
  out->finished = 1;
  r->rhead = *out;
  r->status = status;
  r->up_has_len = 1;
  r->up_len = len;
  mg_filter_t f = { .ops = &compress_filter, .ctx = r };
  int rc = compress_head(&f);
  *out = r->rhead; /* mg_head_set may have moved its headers */
  r->rhead = saved;
  r->status = saved_status;
  r->up_has_len = saved_has_len;
  r->up_len = saved_len;
  return rc < 0 ? rc : 0;
}

/* What an encoded hit's encoder makes: a chunk of the client's body. */
static int hit_encoded_out(void *ctx, const char *p, size_t n) {
  mg_req_t *r = ctx;
  mg_outq_t *q = r->down->out;
  if (r->c_chunked) {
    char line[20];
    if (mg_outq_append(q, line, chunk_line(line, n)) < 0) return MG_ENOMEM;
  }
  if (mg_outq_append(q, p, n) < 0) return MG_ENOMEM;
  return r->c_chunked ? mg_outq_append(q, "\r\n", 2) : 0;
}

/* A piece of a stored body at least this long is queued by reference, not
 * copied: below it, a copy into the block the head is in costs less than a
 * block of its own and a reference. */
#define CACHE_REF_MIN 2048

static void cobj_release(void *o) { mg_cobj_unref(o); }

/* answer()'s body from a stored object: its bytes [c_from, c_to), through the
 * encoder when the hit is encoded. Not encoded, the chunks are queued by
 * reference (the object is immutable; each piece holds a reference to it,
 * dropped when the piece is written or the queue goes), so a large hit costs
 * the client's queue no copy however slow the client. A failing encoder cuts
 * the body short and the connection closes after what was queued. */
static void cache_send_body(mg_req_t *r, const mg_cobj_t *o) {
  mg_outq_t *q = r->down->out;
  mg_cobj_t *owner = (mg_cobj_t *)o; /* only its reference count changes */
  uint64_t pos = 0;
  int rc = 0;
  for (const mg_cchunk_t *ch = o->body; ch && pos < r->c_to && rc == 0; pos += ch->len, ch = ch->next) {
    if (pos + ch->len <= r->c_from) continue;
    size_t a = r->c_from > pos ? (size_t)(r->c_from - pos) : 0;
    size_t b = r->c_to < pos + ch->len ? (size_t)(r->c_to - pos) : ch->len;
    if (r->enc) {
      rc = mg_encoder_feed(r->enc, ch->data + a, b - a, hit_encoded_out, r);
      continue;
    }
    if (b - a >= CACHE_REF_MIN) {
      mg_cobj_ref(owner);
      if (mg_outq_append_ref(q, ch->data + a, b - a, cobj_release, owner) == 0) continue;
      mg_cobj_unref(owner); /* no room for the piece: copied */
    }
    mg_outq_append(q, ch->data + a, b - a);
  }
  if (!r->enc) return;
  if (rc == 0) rc = mg_encoder_finish(r->enc, hit_encoded_out, r);
  mg_encoder_free(r->enc);
  r->enc = NULL;
  if (rc == 0 && r->c_chunked) rc = mg_outq_append(q, "0\r\n\r\n", 5);
  if (rc < 0) {
    MG_WARN(r->w->id, "req %s: the stored response's encoder failed (%d): connection closed", r->id, rc);
    r->down->close_after = 1;
  }
}

/* Answers r from o: the status line, the stored headers (those a 304 keeps, for
 * a 304), Age, Cache-Status, the length, then the body unless HEAD / 304. The
 * client's conditionals first (304, 412), then its Range (206, 416; a GET of a
 * stored 200 only), then the route's compression (not for a 206: a part of the
 * identity body, as a 206 of the origin's is not encoded either). */
static void cache_answer_with(mg_req_t *r, mg_str_t head, const mg_cp_meta_t *meta, const mg_cobj_t *o,
                              int64_t age, const mg_cp_status_t *cst) {
  mg_header_t hs[STORED_MAX];
  mg_cp_hdrs_t st = stored_hdrs(r, head, hs), rq = req_hdrs(r);
  if (!st.h) {
    mg_proxy_error(r, 500, 0);
    return;
  }
  mg_str_t method = r->down_method == HTTP_HEAD ? MG_STR("HEAD") : MG_STR("GET");
  int cond = mg_cp_client_cond(method, &rq, &st, meta);
  if (cond == 412) {
    mg_proxy_error(r, 412, 0);
    return;
  }
  int status = cond == 304 ? 304 : meta->status;
  char cs[160];
  size_t cslen = mg_cp_status_format(cs, sizeof(cs), MG_STR("moongate"), cst);
  r->c_from = 0;
  r->c_to = o->body_len;
  int rng = status == 200 && r->down_method == HTTP_GET ? range_for(&rq, &st, o->body_len, &r->c_from, &r->c_to)
                                                         : RANGE_NONE;
  if (rng == RANGE_UNSAT) {
    cache_answer_416(r, o->body_len, cs, cslen);
    return;
  }
  if (rng == RANGE_ONE) status = 206;
  mg_head_t coded = { 0 };
  if (status != 206 && r->route && r->route->compress && !r->compress_off &&
      cache_compress(r, &st, meta->status, o->body_len, &coded) < 0) {
    free(coded.headers);
    mg_encoder_free(r->enc);
    r->enc = NULL;
    mg_proxy_error(r, 500, 0);
    return;
  }
  if (r->enc && (status == 304 || r->down_method == HTTP_HEAD)) { /* the headers of the 200, no body */
    mg_encoder_free(r->enc);
    r->enc = NULL;
  }
  const mg_header_t *out = coded.headers ? coded.headers : st.h;
  size_t nout = coded.headers ? coded.n : st.n, hbytes = 0;
  for (size_t i = 0; i < nout; i++) hbytes += out[i].name.len + out[i].value.len + 4;
  const char *reason = mg_http_reason(status);
  size_t cap = hbytes + cslen + strlen(reason) + 240;
  char *h = mg_arena_alloc(&r->arena, cap);
  if (!h) {
    free(coded.headers);
    mg_encoder_free(r->enc);
    r->enc = NULL;
    mg_proxy_error(r, 500, 0);
    return;
  }
  size_t n = 0;
  put_lit(h, &n, "HTTP/1.1 ", 9);
  put_u64(h, &n, (uint64_t)status);
  put_lit(h, &n, " ", 1);
  put_lit(h, &n, reason, strlen(reason));
  put_lit(h, &n, "\r\n", 2);
  for (size_t i = 0; i < nout; i++) {
    if (status == 304 && !mg_cp_304_keeps(out[i].name)) continue;
    if (out[i].name.len == 4 && MG_NAME_IS(out[i].name, "date")) r->c_dated = 1;
    put_lit(h, &n, out[i].name.p, out[i].name.len);
    put_lit(h, &n, ": ", 2);
    put_lit(h, &n, out[i].value.p, out[i].value.len);
    put_lit(h, &n, "\r\n", 2);
  }
  free(coded.headers);
  put_lit(h, &n, "Age: ", 5);
  put_u64(h, &n, age > 0 ? (uint64_t)age : 0);
  put_lit(h, &n, "\r\n", 2);
  if (cslen) {
    put_lit(h, &n, "Cache-Status: ", 14);
    put_lit(h, &n, cs, cslen);
    put_lit(h, &n, "\r\n", 2);
  }
  if (status == 206)
    n += (size_t)snprintf(h + n, cap - n, "Content-Range: bytes %llu-%llu/%llu\r\n", (unsigned long long)r->c_from,
                          (unsigned long long)(r->c_to - 1), (unsigned long long)o->body_len);
  if (r->enc) { /* the encoded length is not known before it is made */
    if (r->http_minor == 1) {
      r->c_chunked = 1;
      put_lit(h, &n, "Transfer-Encoding: chunked\r\n", 28);
    } else {
      r->down->close_after = 1; /* HTTP/1.0: framed by the close */
    }
  } else if (status != 304 && status != 204) {
    put_lit(h, &n, "Content-Length: ", 16);
    put_u64(h, &n, r->c_to - r->c_from);
    put_lit(h, &n, "\r\n", 2);
  }
  answer(r, status, h, n, NULL, 0, o);
}

static void cache_answer(mg_req_t *r, const mg_cobj_t *o, const mg_cp_decision_t *d) {
  cache_answer_with(r, o->head, &o->meta, o, d->age, &d->cs);
}

/* The target the upstream gets, as path and query: the key names what the
 * origin is asked for (with forward_path = "as_received", "//a" and "/x/../a"
 * are other targets than "/a" for the origin, though they route alike). */
static void upstream_target(const mg_req_t *r, mg_str_t *path, mg_str_t *query) {
  mg_str_t t = r->raw_target.p ? r->raw_target : r->target;
  const char *qm = memchr(t.p, '?', t.len);
  *path = (mg_str_t){ t.p, qm ? (size_t)(qm - t.p) : t.len };
  *query = qm ? (mg_str_t){ qm + 1, (size_t)(t.p + t.len - qm - 1) } : (mg_str_t){ NULL, 0 };
}

/* The host the upstream is sent: the Host header a request hook left (it may
 * have set one: the key must name what the origin is asked for, or a hook that
 * picks the Host from an unkeyed header would mix its answers), the target's
 * for an absolute-form request (its Host goes), else the client's. 0, or -1
 * for a hook's Host that is no host ("a/b" would make keys ambiguous). */
static int upstream_host(const mg_req_t *r, mg_str_t *host) {
  const mg_header_t *h = r->absolute_form ? NULL : mg_head_get(&r->head, MG_STR("host"));
  *host = h ? h->value : r->host;
  if (!h || !h->value.len || mg_str_eq(h->value, r->host)) return 0; /* the client's: checked when parsed */
  return mg_uri_check_host(h->value, NULL, NULL) < 0 ? -1 : 0;
}

/* r->ckey: the cache_key hook's key when it gave one (i13-api: taken as it is),
 * else the default: the URL the upstream is asked for (mg_cp_key: "GET
 * scheme://host/path?query"), a space and the name of the upstream the request
 * goes to. The same URL sent to two upstreams (routes bound to other listeners,
 * a split by header, req:set_upstream) is two objects: one origin's answer is
 * never served for another's (nginx's default key has $proxy_host for the same
 * reason). 0, or -1 (no memory, a key that does not fit, a hook's Host that is
 * no host: not cached). */
static int cache_key_of(mg_req_t *r) {
  if (r->ckey_user_set) {
    r->ckey = r->ckey_user;
    return 0;
  }
  mg_str_t path, query, host;
  if (upstream_host(r, &host) < 0 || r->upstream < 0) return -1;
  upstream_target(r, &path, &query);
  const char *name = r->gen->upstreams[r->upstream].name;
  size_t nl = strlen(name);
  size_t cap = host.len + path.len + query.len + 32 + 1 + nl;
  char *k = mg_arena_alloc(&r->arena, cap);
  if (!k) return -1;
  mg_str_t scheme = r->down->ssl ? MG_STR("https") : MG_STR("http");
  size_t klen = mg_cp_key(k, cap - 1 - nl, MG_STR("GET"), scheme, host, path, query);
  if (!klen) return -1;
  k[klen] = ' ';
  memcpy(k + klen + 1, name, nl);
  r->ckey = (mg_str_t){ k, klen + 1 + nl };
  return 0;
}

/* Route cache.range_fetch: a GET with a valid bytes Range that goes upstream
 * asks for the whole object (Range and If-Range are not forwarded:
 * build_upstream_head), so that it can be stored; the client's range is cut from
 * the full 200 as it passes (range_slice_begin). */
static void range_fetch_check(mg_req_t *r) {
  range_set_t rs;
  mg_cp_hdrs_t rq = req_hdrs(r);
  if (r->route->cache_range_fetch && r->down_method == HTTP_GET && range_of(&rq, &rs)) r->c_rfetch = 1;
}

/* The slice filter (range_fetch): after the cache's store filter (which keeps the
 * whole body), before compression (which leaves a 206 alone). */
typedef struct {
  mg_req_t *r;
  uint64_t pos, from, to; /* body bytes seen; the part [from, to) goes on */
} range_slice_t;

/* The full response's head: a 200 of known length that nothing before has
 * re-framed is cut to the client's range (206, or 416 when it is past the end);
 * anything else goes whole (the client asked for a range, a 200 is an answer). */
static int slice_head(mg_filter_t *f) {
  range_slice_t *sl = f->ctx;
  mg_req_t *r = sl->r;
  if (r->status != 200 || !r->up_has_len) return 1;
  for (const mg_filter_t *g = r->resp_chain.first; g && g != f; g = g->next)
    if (g->ops->changes_length) return 1; /* a decoded or hooked body: its length is not known */
  mg_cp_hdrs_t rq = req_hdrs(r), rs = { r->rhead.headers, r->rhead.n };
  int rng = range_for(&rq, &rs, r->up_len, &sl->from, &sl->to);
  if (rng == RANGE_NONE) return 1;
  char cr[80];
  int n;
  if (rng == RANGE_UNSAT) {
    /* as cache_answer_416: nothing of the 200's head but what the 416 needs */
    n = snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)r->up_len);
    r->rhead.n = 0;
    r->status = 416;
    sl->from = sl->to = 0;
  } else {
    n = snprintf(cr, sizeof(cr), "bytes %llu-%llu/%llu", (unsigned long long)sl->from,
                 (unsigned long long)(sl->to - 1), (unsigned long long)r->up_len);
    r->status = 206;
  }
  r->up_len = sl->to - sl->from; /* head_out sends it as Content-Length */
  return mg_head_set(&r->rhead, &r->arena, MG_STR("Content-Range"), (mg_str_t){ cr, (size_t)n }, 0) < 0 ? MG_ENOMEM
                                                                                                        : 0;
}

static int slice_body(mg_filter_t *f, const char *p, size_t n) {
  range_slice_t *sl = f->ctx;
  uint64_t pos = sl->pos;
  sl->pos += n;
  if (pos + n <= sl->from || pos >= sl->to) return 0;
  size_t a = sl->from > pos ? (size_t)(sl->from - pos) : 0;
  size_t b = sl->to < pos + n ? (size_t)(sl->to - pos) : n;
  return mg_filter_pass(f, p + a, b - a);
}

static const mg_filter_ops_t range_slice_filter = {
  .name = "range slice", .head = slice_head, .body = slice_body,
};

/* response_filters: the slice filter of a range_fetch request. 0 or MG_ENOMEM. */
static int range_slice_begin(mg_req_t *r) {
  if (!r->c_rfetch) return 0;
  mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
  range_slice_t *sl = mg_arena_alloc(&r->arena, sizeof(*sl));
  if (!f || !sl) return MG_ENOMEM;
  *sl = (range_slice_t){ .r = r };
  f->ops = &range_slice_filter;
  f->ctx = sl;
  mg_fchain_add(&r->resp_chain, f);
  return 0;
}

static void cache_collapsed_status(mg_req_t *r, mg_cp_decision_t *d);
static void cache_swr(mg_req_t *r, mg_cobj_t *o, mg_cp_decision_t *d);
static int cache_collapsed_reuse(const mg_req_t *r, const mg_cobj_t *o, const mg_cp_decision_t *d);
static int cache_collapse(mg_req_t *r, const mg_cp_decision_t *d);

/* The lookup of a caching route's GET/HEAD: 1 when answered from the store (or
 * refused: only-if-cached), 0 to go upstream (r->c_on says it looked),
 * MG_PROXY_WAIT when it waits for a fetch of its key (cache_collapse). */
static int cache_lookup(mg_req_t *r) {
  mg_cache_t *c = mg_cache_global();
  if (!c) return 0;
  if (r->down_method != HTTP_GET && r->down_method != HTTP_HEAD) return 0;
  if (r->method != r->down_method) return 0; /* a hook made it another method upstream */
  if (cache_key_of(r) < 0) return 0;
  r->c_on = 1;
  int64_t now = (int64_t)time(NULL);
  r->c_req_time = now;
  mg_cp_hdrs_t rq = req_hdrs(r);
  mg_cc_t rcc;
  mg_cc_parse(&rcc, &rq, 1);
  int nv = 0;
  mg_cobj_t *o = mg_cache_lookup(c, r->ckey, vary_match, r, &nv);
  mg_cp_decision_t d;
  mg_cp_decide(o ? &o->meta : NULL, &rcc, now, &d);
  if (o && (d.verdict == MG_CP_HIT || d.verdict == MG_CP_STALE_SERVE || cache_collapsed_reuse(r, o, &d))) {
    if (d.reason == MG_CP_R_SWR) cache_swr(r, o, &d); /* answers stale, refreshes once */
    cache_collapsed_status(r, &d);
    cache_answer(r, o, &d);
    mg_cobj_unref(o);
    return 1;
  }
  if (o && d.verdict != MG_CP_MISS && (o->meta.has_validator || d.stale_if_error_ok)) {
    r->c_obj = o; /* a 304 (conditional request) or a failure (stale-if-error) answers from it */
    r->c_sie = d.stale_if_error_ok;
  } else {
    mg_cobj_unref(o);
  }
  if (d.reason == MG_CP_R_ONLY_IF_CACHED) {
    mg_proxy_error(r, 504, 0);
    return 1;
  }
  r->c_fwd = d.cs.fwd ? d.cs.fwd : MG_CS_FWD_STALE;
  if (!o && nv > 0) r->c_fwd = MG_CS_FWD_VARY_MISS;
  range_fetch_check(r);
  return cache_collapse(r, &d);
}

/* The stored head: the response's headers as the client gets them, less what
 * is never stored (cachepol), Age (ours is computed) and Content-Length (the
 * stored body's is sent). "name: value\r\n" each, in the arena. */
static mg_str_t stored_head(mg_req_t *r, const mg_cp_hdrs_t *rs, const mg_cc_t *rcc) {
  const mg_header_t *conn = mg_cp_get(rs, MG_STR("connection"));
  mg_str_t conn_value = conn ? conn->value : (mg_str_t){ NULL, 0 };
  /* an origin without a clock sent no Date: the one moongate sends is stored
   * (RFC 9110 6.6.1), so a hit carries the response's Date, not the hit's */
  const char *date = NULL;
  size_t dlen = mg_cp_get(rs, MG_STR("date")) ? 0 : mg_http_date_line(&r->w->date, &date);
  size_t cap = 1 + dlen;
  for (size_t i = 0; i < rs->n; i++) cap += rs->h[i].name.len + rs->h[i].value.len + 4;
  char *b = mg_arena_alloc(&r->arena, cap);
  if (!b) return (mg_str_t){ NULL, 0 };
  size_t n = 0;
  if (dlen) put_lit(b, &n, date, dlen);
  for (size_t i = 0; i < rs->n; i++) {
    const mg_header_t *hd = &rs->h[i];
    if (resp_header_skipped(hd->name, conn_value, 0) || MG_NAME_IS(hd->name, "age") ||
        !mg_cp_header_stored(hd->name, rcc, rs))
      continue;
    put_lit(b, &n, hd->name.p, hd->name.len);
    put_lit(b, &n, ": ", 2);
    put_lit(b, &n, hd->value.p, hd->value.len);
    put_lit(b, &n, "\r\n", 2);
  }
  return (mg_str_t){ b, n };
}

/* The rules' options for a response of `status` on r's route: the config's, and
 * the route's cache.ttl for that status when it has one (i13-api). */
static mg_cp_opts_t cache_opts(const mg_req_t *r, int status) {
  mg_cp_opts_t o = { .allow_set_cookie = r->gen->cache_allow_set_cookie,
                     .heuristic_max = r->gen->cache_heuristic_max, .heuristic_pct = 10 };
  const mg_route_t *rt = r->route;
  for (int i = 0; rt && i < rt->cache_nttl; i++) {
    if (rt->cache_ttl[i].status != status) continue;
    o.status_ttl_set = 1;
    o.status_ttl = rt->cache_ttl[i].seconds;
    break;
  }
  return o;
}

/* The stored head is taken when the filter's turn comes among the heads: after
 * the decode filter's (a decoded body is stored without its Content-Encoding),
 * before compression's (the identity body is stored, and each hit is encoded as
 * its client asks: cache_compress) and a range_fetch slice's (the whole 200). */
static int cache_head(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  mg_cp_hdrs_t rs = { r->rhead.headers, r->rhead.n };
  mg_cc_t rcc;
  mg_cc_parse(&rcc, &rs, 0);
  r->chead = stored_head(r, &rs, &rcc);
  return r->chead.p ? 0 : MG_ENOMEM;
}

static int cache_body(mg_filter_t *f, const char *p, size_t n) {
  mg_req_t *r = f->ctx;
  if (r->cwriter && mg_cache_write(r->cwriter, p, n) < 0) { /* over max_object: streamed only */
    mg_cache_abort(r->cwriter);
    r->cwriter = NULL;
    r->c_big = 1;
    cache_flight_end(r, MG_CFLIGHT_FAILED);
  }
  return mg_filter_pass(f, p, n);
}

static int cache_end(mg_filter_t *f) {
  mg_req_t *r = f->ctx;
  if (r->cwriter) {
    int rc = mg_cache_commit(r->cwriter, r->cvary, r->chead, &r->cfill->meta);
    r->cwriter = NULL;
    if (rc == MG_ENOMEM) MG_WARN(r->w->id, "req %s: cache: out of memory: response not stored", r->id);
    cache_flight_end(r, rc == 0 ? MG_CFLIGHT_STORED : MG_CFLIGHT_FAILED);
  }
  return mg_filter_pass_end(f);
}

static const mg_filter_ops_t cache_filter = {
  .name = "cache store", .head = cache_head, .body = cache_body, .end = cache_end,
};

static int cache_fill_try(mg_req_t *r);

/* The response head is known (after the response hook): may it be stored? If
 * so, a writer and the filter that feeds it; if not, the requests waiting for
 * this one's fetch go on their own now. 0, or MG_ENOMEM. */
static int cache_fill_begin(mg_req_t *r) {
  if (r->c_refresh && r->status >= 500) { /* a refresh that failed keeps the stale object */
    cache_flight_end(r, MG_CFLIGHT_FAILED);
    return 0;
  }
  int rc = cache_fill_try(r);
  if (!r->cwriter) cache_flight_end(r, MG_CFLIGHT_FAILED);
  return rc;
}

static int cache_fill_try(mg_req_t *r) {
  mg_cache_t *c = mg_cache_global();
  if (!c || r->down_method != HTTP_GET) return 0;
  mg_cp_hdrs_t rq = req_hdrs(r), rs = { r->rhead.headers, r->rhead.n };
  /* a partial answer or a 304 to the client's own conditional is not the object;
   * a 204's (bodiless) end does not pass through the filters: not stored yet */
  if (r->status == 206 || r->status == 304 || r->status == 204) {
    r->c_why = MG_CP_NS_STATUS;
    return 0;
  }
  mg_cp_opts_t opts = cache_opts(r, r->status);
  struct mg_cfill_s *cf = mg_arena_alloc(&r->arena, sizeof(*cf));
  if (!cf) return MG_ENOMEM;
  int why = mg_cp_meta_init(&cf->meta, MG_STR("GET"), &rq, r->status, &rs, r->c_req_time, (int64_t)time(NULL), &opts);
  if (why) {
    r->c_why = why;
    return 0;
  }
  if (r->up_has_len && r->up_len > mg_cache_max_object(c)) {
    r->c_big = 1;
    return 0;
  }
  char *vb = mg_arena_alloc(&r->arena, VARY_KEY_MAX);
  size_t vlen = 0;
  if (!vb) return MG_ENOMEM;
  int vrc = mg_cp_vary_key(&rs, &rq, vb, VARY_KEY_MAX, &vlen);
  if (vrc != 0) {
    r->c_why = MG_CP_NS_VARY_STAR; /* or a key too long to keep */
    return 0;
  }
  mg_filter_t *f = mg_arena_alloc(&r->arena, sizeof(*f));
  if (!f) return MG_ENOMEM;
  r->cwriter = mg_cache_begin(c, r->ckey);
  if (!r->cwriter) return 0; /* out of memory: the response goes on, unstored */
  r->cfill = cf;
  r->cvary = (mg_str_t){ vb, vlen };
  f->ops = &cache_filter;
  f->ctx = r;
  mg_fchain_add(&r->resp_chain, f);
  return 0;
}

/* Cache-Status of a forwarded response: "moongate; fwd=uri-miss; stored", or
 * with the reason it is not stored as detail. */
static void append_cache_status_fwd(mg_req_t *r, hw_t *q) {
  mg_cp_status_t s = { 0 };
  s.fwd = r->c_fwd;
  s.stored = r->cwriter != NULL;
  if (r->c_big) s.detail = "too-big";
  else if (r->c_why) s.detail = mg_cp_ns_reason(r->c_why);
  char cs[160];
  size_t n = mg_cp_status_format(cs, sizeof(cs), MG_STR("moongate"), &s);
  if (!n) return;
  HW_LIT(q, "Cache-Status: ");
  hw_put(q, cs, n);
  HW_LIT(q, "\r\n");
}

/* RFC 9111 4.4: an unsafe method answered 2xx/3xx by the origin removes what is
 * stored for its target, and for Location and Content-Location on the same
 * origin (every variant of each). */
static void cache_invalidate(mg_req_t *r) {
  mg_cache_t *c = mg_cache_global();
  if (!c) return;
  mg_str_t path, query, host;
  if (upstream_host(r, &host) < 0) return;
  upstream_target(r, &path, &query);
  mg_str_t scheme = r->down->ssl ? MG_STR("https") : MG_STR("http");
  mg_cp_hdrs_t rs = { r->rhead.headers, r->rhead.n };
  const char *m = llhttp_method_name((llhttp_method_t)r->method);
  size_t cap = 3 * (host.len + path.len + query.len + 32) + 2048;
  char *buf = mg_arena_alloc(&r->arena, cap);
  mg_str_t keys[3];
  if (!buf) return;
  int n = mg_cp_invalidate((mg_str_t){ m, strlen(m) }, r->up_status, scheme, host, path, query, &rs, buf, cap,
                           keys);
  /* the URL is invalid whichever upstream its GETs go to (a route of their own):
   * each key with each upstream's name (cache_key_of), made in one buffer */
  size_t longest = 0, name_max = 0;
  for (int i = 0; i < n; i++)
    if (keys[i].len > longest) longest = keys[i].len;
  for (int u = 0; u < r->gen->nupstreams; u++)
    if (strlen(r->gen->upstreams[u].name) > name_max) name_max = strlen(r->gen->upstreams[u].name);
  char *k = n > 0 ? mg_arena_alloc(&r->arena, longest + 1 + name_max) : NULL;
  if (!k) return;
  for (int i = 0; i < n; i++) {
    memcpy(k, keys[i].p, keys[i].len);
    k[keys[i].len] = ' ';
    for (int u = 0; u < r->gen->nupstreams; u++) {
      const char *name = r->gen->upstreams[u].name;
      size_t nl = strlen(name);
      memcpy(k + keys[i].len + 1, name, nl);
      mg_cache_remove(c, (mg_str_t){ k, keys[i].len + 1 + nl });
    }
  }
}

/* The revalidation's conditionals (RFC 9111 4.3.1): If-None-Match from the stored
 * ETag, If-Modified-Since from its Last-Modified. */
static void append_revalidation(mg_req_t *r, hw_t *q) {
  mg_header_t hs[STORED_MAX], out[2];
  mg_cp_hdrs_t st = stored_hdrs(r, r->c_obj->head, hs);
  size_t n = st.h ? mg_cp_conditional(&st, out) : 0; /* (no memory: a full response comes) */
  for (size_t i = 0; i < n; i++) append_header(q, out[i].name, out[i].value);
}

/* A 304 to a revalidation (RFC 9111 4.3.3, 4.3.4): when it selects the stored
 * response, the stored headers are updated with the 304's (3.2), the client is
 * answered from the store, and the updated response is stored again (same body,
 * a new object: objects are immutable). When it does not, the stored one is
 * removed and the request goes again without our validators. 1 when handled;
 * 0 when the 304 goes on as it came (out of memory). */
static int cache_revalidated(mg_req_t *r) {
  mg_cache_t *c = mg_cache_global();
  const mg_cobj_t *o = r->c_obj;
  mg_header_t hs[STORED_MAX];
  mg_cp_hdrs_t st = stored_hdrs(r, o->head, hs), rs = { r->rhead.headers, r->rhead.n };
  if (!st.h) {
    mg_proxy_error(r, 500, 0);
    return 1;
  }
  if (!mg_cp_304_selects(&st, &rs)) {
    /* the 304 is about validators of ours that name nothing the origin has any
     * more (RFC 9111 4.3.4): the stored response goes, and the request is sent
     * again as the client sent it (its own conditionals, if any), once. Passed
     * on, this 304 would reach a client that asked for no conditional. */
    mg_cache_remove(c, r->ckey);
    mg_cobj_unref(r->c_obj);
    r->c_obj = NULL;
    r->c_sie = 0;
    if (requeue(r) < 0) return 0;
    MG_INFO(r->w->id, "req %s: upstream %s: a 304 that does not match the stored response: sent again "
            "without its validators", r->id, peer_text(r));
    if (r->upc) mg_upstream_release(r->upc, 0);
    attempt_end(r);
    r->status = 0;
    tried_reset(r);
    backoff_start(r, 0); /* the next loop turn */
    return 1;
  }
  /* a 304 without Date gets moongate's (RFC 9110 6.6.1), which then replaces
   * the stored Date as the 304's headers do (the response is that recent now) */
  if (!mg_cp_get(&rs, MG_STR("date"))) {
    mg_header_t *with = mg_arena_alloc(&r->arena, (rs.n + 1) * sizeof(*with));
    const char *line;
    size_t ll = mg_http_date_line(&r->w->date, &line); /* "Date: ...\r\n" */
    if (with && ll > 8) {
      if (rs.n) memcpy(with, rs.h, rs.n * sizeof(*with));
      with[rs.n] = (mg_header_t){ { line, 4 }, { line + 6, ll - 8 } };
      rs = (mg_cp_hdrs_t){ with, rs.n + 1 };
    }
  }
  mg_cc_t cc304;
  mg_cc_parse(&cc304, &rs, 0);
  size_t cap = st.n + rs.n;
  mg_header_t *merged = mg_arena_alloc(&r->arena, (cap ? cap : 1) * sizeof(*merged));
  int nm = merged ? mg_cp_merge_304(&st, &rs, &cc304, merged, cap) : MG_ENOMEM;
  if (nm < 0) {
    mg_proxy_error(r, 500, 0);
    return 1;
  }
  mg_cp_hdrs_t mh = { merged, (size_t)nm }, rq = req_hdrs(r);
  mg_cc_t mcc;
  mg_cc_parse(&mcc, &mh, 0);
  mg_str_t head = stored_head(r, &mh, &mcc); /* slices into o and rhead: copy now */
  if (!head.p) {
    mg_proxy_error(r, 500, 0);
    return 1;
  }
  int64_t now = (int64_t)time(NULL);
  mg_cp_opts_t opts = cache_opts(r, o->meta.status);
  mg_cp_meta_t m;
  int why = mg_cp_meta_init(&m, MG_STR("GET"), &rq, o->meta.status, &mh, r->c_req_time, now, &opts);
  mg_cp_status_t cs = { 0 };
  cs.fwd = r->c_fwd;
  cs.fwd_status = 304;
  if (why == MG_CP_OK) {
    mg_cwriter_t *w = mg_cache_begin(c, r->ckey);
    int rc = w ? 0 : MG_ENOMEM;
    for (const mg_cchunk_t *ch = o->body; ch && rc == 0; ch = ch->next) rc = mg_cache_write(w, ch->data, ch->len);
    if (rc == 0) rc = mg_cache_commit(w, o->vary, head, &m);
    else if (w) mg_cache_abort(w);
    cs.stored = rc == 0;
  } else {
    mg_cache_remove(c, r->ckey); /* the 304 made it unstorable (no-store, ...) */
    cs.detail = mg_cp_ns_reason(why);
  }
  cache_flight_end(r, cs.stored ? MG_CFLIGHT_STORED : MG_CFLIGHT_FAILED);
  int64_t age = mg_cp_age(&m, now);
  cs.has_ttl = 1;
  cs.ttl = m.lifetime - age;
  cache_answer_with(r, head, &m, o, age, &cs);
  return 1;
}

/* The origin failed (a 5xx of its own, or moongate's 502/503/504) and the stale
 * object allows it (RFC 5861 stale-if-error, without must-revalidate and the
 * like): the client gets the stale object. 1 when answered. */
static int cache_stale_if_error(mg_req_t *r, int status) {
  mg_cobj_t *o = r->c_obj;
  r->c_sie = 0; /* once */
  if (!o) return 0;
  int64_t now = (int64_t)time(NULL);
  int64_t age = mg_cp_age(&o->meta, now);
  mg_cp_status_t cs = { 0 };
  cs.hit = 1;
  cs.fwd = r->c_fwd;
  cs.fwd_status = status;
  cs.has_ttl = 1;
  cs.ttl = o->meta.lifetime - age;
  cache_answer_with(r, o->head, &o->meta, o, age, &cs);
  return 1;
}

/* ---- i13-api: PURGE and the cache_key hook ----
 *
 * A caching route's GET, HEAD (looked up) and PURGE (its key removed) run the
 * cache_key hook first when the route or mg.on has one: its string is the primary
 * key (mg_req_set_cache_key); nil, another type, an error or timeouts.hook leave
 * the default key (the failure is logged). A route without the hook pays one bit
 * test. The hook may wait: it then resumes in the head phase (mg_proxy_head_resume
 * -> cache_key_resumed), and after the lookup the request goes upstream as
 * after_request would (a looked-up request has no body: start_upstream alone). */

/* PURGE targets what a GET of its URL is stored under: when the route PURGE
 * matches does not cache (a route for GET and HEAD only, say), the route a GET
 * would match, if that one caches. */
static const mg_route_t *cache_purge_route(mg_req_t *r, const mg_route_t *rt) {
  if (rt && rt->cache) return rt;
  const mg_route_t *g = mg_route_match(r->gen, r->down->listener, HTTP_GET, r->host_name, r->path);
  return g && g->cache ? g : rt;
}

static int is_purge(const mg_req_t *r) {
  return r->method == HTTP_PURGE && r->down_method == HTTP_PURGE; /* (a hook may make it another) */
}

/* PURGE, once the key is known: every variant of it removed; 200 when something
 * was, 404 when nothing was stored under it. Never forwarded. */
static void cache_purge(mg_req_t *r) {
  mg_cache_t *c = mg_cache_global();
  if (!c || cache_key_of(r) < 0) {
    mg_proxy_error(r, c ? 500 : 404, 0);
    return;
  }
  int n = mg_cache_remove(c, r->ckey);
  MG_INFO(r->w->id, "req %s: PURGE by %s: %d stored response(s) of key \"%.*s\" removed", r->id, r->down->client, n,
          (int)(r->ckey.len > 200 ? 200 : r->ckey.len), r->ckey.p);
  if (n == 0) {
    mg_proxy_error(r, 404, 0);
    return;
  }
  char body[160], head[256];
  int blen = snprintf(body, sizeof(body), "200 OK\npurged: %d\nrequest id: %s\n", n, r->id);
  int hlen = snprintf(head, sizeof(head),
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n",
                      blen, r->id);
  mg_proxy_answer(r, 200, head, (size_t)hlen, body, (size_t)blen);
}

/* The key is settled (the hook ended with rc, or there is none): PURGE or the
 * lookup. 1 answered, 0 upstream. */
static int cache_keyed(mg_req_t *r, int rc) {
  if (rc < 0) {
    r->ckey_user_set = 0;
    if (rc != MG_LUA_TIMEOUT) /* (a timeout was logged where it was noticed, with this outcome) */
      MG_WARN(r->w->id, "req %s: cache_key hook of route %d failed: the default key is used", r->id, r->lua.route);
  }
  if (r->rstate != MG_RS_NONE) return 1;
  if (is_purge(r)) {
    cache_purge(r);
    return 1;
  }
  return cache_lookup(r);
}

/* After the request hooks, on a caching route: 1 answered, 0 upstream,
 * MG_PROXY_WAIT (the cache_key hook waits). */
static int cache_begin(mg_req_t *r) {
  if (r->method == HTTP_PURGE) {
    if (!is_purge(r)) return 0;
    if (!r->trusted) { /* only trusted_proxies may purge (docs/cache.md) */
      MG_INFO(r->w->id, "req %s: PURGE from %s refused: the peer is not in trusted_proxies", r->id, r->down->client);
      mg_proxy_error(r, 403, 0);
      return 1;
    }
  } else if (r->down_method != HTTP_GET && r->down_method != HTTP_HEAD) {
    return 0;
  }
  if (!mg_cache_global() || !mg_hook_on(r->gen, r->route, MG_HOOK_CACHE_KEY)) return cache_keyed(r, 0);
  int rc = mg_lua_hook(&r->lua, MG_HOOK_CACHE_KEY, NULL);
  if (rc == MG_LUA_WAIT) return hook_wait_in(r, MG_HOOK_CACHE_KEY, 1);
  return cache_keyed(r, rc);
}

/* The cache_key hook that waited ended: what after_request does after the lookup. */
static int cache_key_resumed(mg_req_t *r, int rc) {
  int cl = cache_keyed(r, rc); /* 1 answered, MG_PROXY_WAIT: waits for a fetch of its key */
  if (cl) return cl == MG_PROXY_WAIT ? cl : 0;
  return start_upstream(r, 1);
}

/* ---- request collapsing (docs/cache.md "Request collapsing") ----
 *
 * A miss (or a stale object's revalidation) of a route with cache_lock_ms joins
 * the fetch of its key in flight (core/cflight.h): the first leads and goes
 * upstream; the others park in the head phase (as a waiting hook does) on their
 * own worker, in its cache_waits, with a timer of cache_lock_ms. The leader
 * says how its fetch ended: stored (cache_end, cache_revalidated), or not
 * (not storable, too big, failed, its client gone: cache_fill_begin,
 * cache_body, req_release). Its thread signals each waiter's worker (`wake`);
 * each worker then resumes its own waiters (cache_woken): a waiter looks the
 * store up again, and answers from it (Cache-Status "collapsed") or goes
 * upstream on its own, never waiting twice. A waiter whose client leaves gives
 * its place up (mg_proxy_abort). */

static void wake_worker(void *arg) { uv_async_send(&((mg_worker_t *)arg)->wake); }

/* The request stops leading (saying `outcome`) or waiting; nothing otherwise. */
static void cache_flight_end(mg_req_t *r, int outcome) {
  if (r->c_waiting) {
    mg_worker_t *w = r->w;
    r->c_waiting = 0;
    mg_timer_stop(&w->timers, &r->c_timer);
    if (r->c_wprev) r->c_wprev->c_wnext = r->c_wnext;
    else w->cache_waits = r->c_wnext;
    if (r->c_wnext) r->c_wnext->c_wprev = r->c_wprev;
    r->c_wnext = r->c_wprev = NULL;
    r->c_outcome = mg_cflight_state(r->c_flight);
    mg_cflight_leave(r->c_flight, r->c_node);
    r->c_flight = NULL;
  } else if (r->c_lead) {
    r->c_lead = 0;
    mg_cflight_done(r->c_flight, outcome);
    r->c_flight = NULL;
  }
}

/* The wait is over (the fetch ended, or the bound passed): the head phase goes
 * on through the connection (mg_proxy_head_resume -> cache_resumed). */
static void cache_wait_over(mg_req_t *r) {
  cache_flight_end(r, 0);
  r->c_waited = 1;
  r->down->ops->resume(r->down->conn);
}

static void cache_wait_expired(mg_timer_t *t) {
  mg_req_t *r = (mg_req_t *)((char *)t - offsetof(mg_req_t, c_timer));
  MG_DEBUG(r->w->id, "req %s: cache: waited cache_lock_ms for a fetch of its key: goes alone", r->id);
  cache_wait_over(r);
}

/* The worker was woken (any fetch that one of its requests waits for ended):
 * each such request goes on. One at a time, from the list's head: a request
 * that goes on may end others' connections' turns, never unlink another. */
static void cache_woken(mg_worker_t *w) {
  for (;;) {
    mg_req_t *r = w->cache_waits;
    while (r && mg_cflight_state(r->c_flight) == MG_CFLIGHT_PENDING) r = r->c_wnext;
    if (!r) return;
    cache_wait_over(r);
  }
}

/* Leads the fetch of r's key, waits for the one in flight (MG_PROXY_WAIT), or
 * goes alone (0): the end of a lookup that goes upstream. What the client's own
 * directives send to the origin (no-cache, max-age, min-fresh) is not
 * collapsed, nor a request that waited once; a HEAD waits but does not lead
 * (its response is not stored). */
static int cache_collapse(mg_req_t *r, const mg_cp_decision_t *d) {
  uint64_t ms = r->route->cache_lock_ms;
  if (!ms || r->c_waited) return 0;
  int stale = d->verdict == MG_CP_REVALIDATE && (d->reason == MG_CP_R_STALE || d->reason == MG_CP_R_RES_NO_CACHE);
  if (d->verdict != MG_CP_MISS && !stale) return 0;
  mg_cwaiter_t *node = mg_arena_alloc(&r->arena, sizeof(*node));
  if (!node) return 0;
  *node = (mg_cwaiter_t){ .wake = wake_worker, .arg = r->w };
  int lead = 0;
  mg_cflight_t *f = mg_cflight_join(r->ckey, node, r->down_method == HTTP_GET, &lead);
  if (!f) return 0;
  r->c_flight = f;
  if (lead) {
    r->c_lead = 1;
    return 0;
  }
  mg_worker_t *w = r->w;
  r->c_node = node;
  r->c_waiting = 1;
  r->c_wprev = NULL;
  r->c_wnext = w->cache_waits;
  if (w->cache_waits) w->cache_waits->c_wprev = r;
  w->cache_waits = r;
  w->woken = cache_woken;
  r->c_wait_since = r->c_req_time;
  mg_cobj_unref(r->c_obj); /* looked up again when the wait is over */
  r->c_obj = NULL;
  r->c_sie = 0;
  mg_timer_start(&w->timers, &r->c_timer, ms, cache_wait_expired);
  return hook_wait_in(r, HOOK_CACHE_WAIT, 1);
}

/* A waiter whose fetch stored a response that wants revalidation already
 * (stale at once: max-age=0, a whole-second clock; or no-cache) takes it
 * anyway when it came after the waiter asked: that fetch was made for it too
 * (RFC 9111 4: collapsed requests share the response); the client's own
 * directives still decide (no-cache, max-age, min-fresh). */
static int cache_collapsed_reuse(const mg_req_t *r, const mg_cobj_t *o, const mg_cp_decision_t *d) {
  if (!r->c_waited || r->c_outcome != MG_CFLIGHT_STORED || d->verdict != MG_CP_REVALIDATE) return 0;
  if (d->reason != MG_CP_R_STALE && d->reason != MG_CP_R_RES_NO_CACHE) return 0;
  return o->meta.response_time >= r->c_wait_since;
}

/* A waiter answered from what its fetch stored: RFC 9211 "collapsed" (its
 * request went forward with another), with the fwd that sent it there. */
static void cache_collapsed_status(mg_req_t *r, mg_cp_decision_t *d) {
  if (!r->c_waited || r->c_outcome != MG_CFLIGHT_STORED) return;
  d->cs.hit = 0;
  d->cs.fwd = r->c_fwd;
  d->cs.collapsed = 1;
}

/* The head phase after a wait: the store again (a hit now, most often), else
 * upstream alone. */
static int cache_resumed(mg_req_t *r) {
  r->hook_wait = 0;
  r->wait_head = 0;
  int cl = cache_lookup(r);
  if (cl) return cl == MG_PROXY_WAIT ? cl : 0;
  return start_upstream(r, 1);
}

/* ---- stale-while-revalidate (RFC 5861; docs/cache.md "stale-while-revalidate") ----
 *
 * A stale response within its stale-while-revalidate window answers at once
 * (Cache-Status: hit, a negative ttl, detail=stale-while-revalidate), and one
 * refresh of the key starts in the background unless a fetch of it is under
 * way (the fetches-in-flight table is the "once": the refresh leads it, so
 * misses past the window wait for it as for any fetch). The refresh is a
 * request of its own with no client: a copy of the client's GET (its
 * conditionals left out, the stored validators put in by
 * build_upstream_head, as for any revalidation), run from the upstream phase on
 * (upstream_request and balance hooks, retries, the log hook and line) over a
 * connection stand-in whose output is dropped. Its 304 is merged and its full
 * response stored by the same paths as a client's revalidation
 * (cache_revalidated, cache_fill_begin); a failure leaves the stale object as
 * it is. The worker counts it as a connection (w->nconns) while it runs; a
 * drain drops it (it has no client to finish for, and the stale object stays):
 * a watch timer looks every REFRESH_WATCH_MS. */

#define REFRESH_WATCH_MS 250

typedef struct {
  mg_down_t down;    /* the exchange's "connection" */
  mg_outq_t out;     /* what the exchange writes to its client: dropped at each flush */
  mg_timer_t gone;   /* frees this on the next loop turn, once the request ended */
  mg_timer_t watch;  /* while the request runs: drops it when the worker drains */
  mg_worker_t *w;
  mg_req_t *req;     /* NULL once it ended */
} refresh_t;

static void refresh_freed(mg_timer_t *t) {
  refresh_t *rf = (refresh_t *)((char *)t - offsetof(refresh_t, gone));
  mg_worker_t *w = rf->w;
  mg_outq_dispose(&rf->out);
  free(rf);
  w->conn_closed(w); /* may finish a draining worker */
}

/* The request ends (its answer is complete, or it was cut short): the stand-in
 * stays until the next loop turn, since the exchange may look at down.closed
 * after the op that ended it. */
static void refresh_end(refresh_t *rf, int abort) {
  mg_req_t *r = rf->req;
  if (!r) return;
  rf->req = NULL;
  mg_timer_stop(&rf->w->timers, &rf->watch);
  if (abort) mg_proxy_abort(r);
  mg_req_free(r);
  mg_timer_start(&rf->w->timers, &rf->gone, 0, refresh_freed);
}

static void refresh_flush(void *conn) {
  refresh_t *rf = conn;
  mg_outq_drop(&rf->out, rf->out.pending);
}
static void refresh_done(void *conn) { refresh_end(conn, 0); }
static void refresh_close(void *conn) {
  refresh_t *rf = conn;
  rf->down.closed = 1;
  refresh_end(rf, 1);
}
static void refresh_nop(void *conn) { (void)conn; }

static void refresh_watch(mg_timer_t *t) {
  refresh_t *rf = (refresh_t *)((char *)t - offsetof(refresh_t, watch));
  if (!rf->req) return;
  if (!rf->w->draining) {
    mg_timer_start(&rf->w->timers, &rf->watch, REFRESH_WATCH_MS, refresh_watch);
    return;
  }
  MG_INFO(rf->w->id, "req %s: cache: the worker drains: background refresh dropped", rf->req->id);
  refresh_close(rf);
}

static const mg_down_ops_t refresh_ops = {
  .flush = refresh_flush, .done = refresh_done, .close = refresh_close, .close_after_flush = refresh_close,
  .reading = refresh_nop, .tunnel = refresh_nop, .local_addr = refresh_nop, .resume = refresh_nop,
  .pull_body = refresh_nop,
};

static int refresh_str(mg_req_t *n, mg_str_t *s) {
  if (!s->len) return 0;
  char *p = mg_arena_strdup(&n->arena, s->p, s->len);
  if (!p) return MG_ENOMEM;
  *s = (mg_str_t){ p, s->len };
  return 0;
}

/* The client's request head, less its conditionals and ranges (the refresh is
 * a plain GET of the whole object, or the store's own revalidation). */
static int refresh_head(mg_req_t *n, const mg_req_t *r) {
  static const char *const dropped[] = { "if-none-match", "if-modified-since", "if-match", "if-unmodified-since",
                                         "if-range", "range" };
  mg_head_t *h = &n->head;
  mg_str_t url = mg_head_url(&r->head);
  if (mg_head_append(h, MG_HEAD_URL, url.p, url.len, SIZE_MAX, SIZE_MAX) < 0) return MG_ENOMEM;
  for (size_t i = 0; i < r->head.n; i++) {
    const mg_header_t *hd = &r->head.headers[i];
    int skip = 0;
    for (size_t k = 0; k < sizeof(dropped) / sizeof(dropped[0]) && !skip; k++)
      skip = hd->name.len == strlen(dropped[k]) && strncasecmp(hd->name.p, dropped[k], hd->name.len) == 0;
    if (skip) continue;
    if (mg_head_append(h, MG_HEAD_FIELD, hd->name.p, hd->name.len, SIZE_MAX, SIZE_MAX) < 0 ||
        mg_head_append(h, MG_HEAD_VALUE, hd->value.p, hd->value.len, SIZE_MAX, SIZE_MAX) < 0)
      return MG_ENOMEM;
  }
  return mg_head_finish(h);
}

/* A request like r's, with no client, that refreshes o (stored under r->ckey)
 * and leads the flight f. 0, or MG_ENOMEM (nothing started). */
static int refresh_start(mg_req_t *r, mg_cobj_t *o, mg_cflight_t *f) {
  mg_worker_t *w = r->w;
  refresh_t *rf = calloc(1, sizeof(*rf));
  if (!rf) return MG_ENOMEM;
  rf->w = w;
  mg_outq_init(&rf->out, NULL, NULL);
  mg_down_t *d = &rf->down;
  *d = (mg_down_t){ .conn = rf, .ops = &refresh_ops, .out = &rf->out, .peer = r->down->peer,
                    .local = r->down->local, .listener = r->down->listener };
  mg_req_t *n = mg_req_new(w, d);
  if (!n) {
    free(rf);
    return MG_ENOMEM;
  }
  rf->req = n;
  w->nconns++; /* from here on, refresh_end and refresh_freed undo it */
  if (n->wg != r->wg) { /* the client's generation: its route and upstream */
    mg_wgen_unref(n->wg);
    n->wg = r->wg;
    mg_wgen_ref(n->wg);
    n->gen = r->gen;
    n->lua.wg = r->wg;
  }
  const char *client = r->down->client ? r->down->client : "-";
  char *cl = mg_arena_strdup(&n->arena, client, strlen(client));
  int ip_in = cl && r->down->ip.p >= client && r->down->ip.p + r->down->ip.len <= client + strlen(client);
  d->client = cl;
  d->ip = ip_in ? (mg_str_t){ cl + (r->down->ip.p - client), r->down->ip.len } : (mg_str_t){ "-", 1 };
  n->method = n->down_method = HTTP_GET;
  n->http_minor = 1;
  n->target = r->target;
  n->path = r->path;
  n->host = r->host;
  n->host_name = r->host_name;
  n->client_ip = r->client_ip;
  n->connection = r->connection;
  n->ckey = r->ckey;
  n->trusted = r->trusted;
  n->keepalive = 1;
  n->complete = 1;
  n->route = r->route;
  n->upstream = r->upstream;
  n->lua.route = r->lua.route;
  n->lua.budget_ms = r->lua.budget_ms;
  n->c_on = 1;
  n->c_fwd = MG_CS_FWD_STALE;
  n->c_req_time = (int64_t)time(NULL);
  n->c_refresh = 1;
  n->c_refresh_tls = r->down->ssl != NULL;
  if (!cl || refresh_head(n, r) < 0 || refresh_str(n, &n->target) < 0 || refresh_str(n, &n->path) < 0 ||
      refresh_str(n, &n->host) < 0 || refresh_str(n, &n->host_name) < 0 || refresh_str(n, &n->client_ip) < 0 ||
      refresh_str(n, &n->connection) < 0 || refresh_str(n, &n->ckey) < 0) {
    refresh_end(rf, 0);
    return MG_ENOMEM;
  }
  if (o->meta.has_validator) {
    mg_cobj_ref(o);
    n->c_obj = o;
  }
  n->c_flight = f; /* from here on the request says how the refresh ended */
  n->c_lead = 1;
  mg_timer_start(&w->timers, &rf->watch, REFRESH_WATCH_MS, refresh_watch);
  MG_DEBUG(w->id, "req %s: cache: stale-while-revalidate: refresh %s", r->id, n->id);
  start_upstream(n, 0); /* answers (to nobody) on failure; a hook that waits goes on by itself */
  return 0;
}

/* r answers from o, stale within stale-while-revalidate: one refresh of the
 * key, unless a fetch of it is under way. */
static void cache_swr(mg_req_t *r, mg_cobj_t *o, mg_cp_decision_t *d) {
  d->cs.detail = "stale-while-revalidate";
  if (!r->route || r->upstream < 0 || r->w->draining) return;
  int lead = 0;
  mg_cflight_t *f = mg_cflight_join(r->ckey, NULL, 1, &lead);
  if (!f) return; /* someone fetches it already */
  if (refresh_start(r, o, f) < 0) {
    MG_WARN(r->w->id, "req %s: cache: out of memory: no stale-while-revalidate refresh", r->id);
    mg_cflight_done(f, MG_CFLIGHT_FAILED);
  }
}
