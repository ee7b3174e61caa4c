/* The whole request path — connection, exchange, filters, Lua hooks, upstream
 * connections and their pool — driven through the transport's in-memory network
 * (transport.h): one real worker (its Lua state loaded from a config written
 * here), no sockets and no threads. The input is a script of steps: bytes from
 * the client, bytes from an upstream, half-closes, resets, refused connects.
 * The config has a route per hook that waits (mg.sleep(0) in connect, request,
 * respond, balance, upstream_request, response, body, log) and routes whose
 * hooks read the request body (req:read_body, req:set_body, set_method, a
 * request_body filter that changes each piece); their paths are in the dict.
 *
 * Checked after every input:
 * - what the client received parses, with the same strict codec, as a sequence
 *   of HTTP/1.1 responses, one per request (HEAD ones without body), plus at
 *   most one more (the refusal of a request that could not be read); after a 101
 *   the bytes are the tunnel's;
 * - what each upstream connection received parses as a sequence of requests,
 *   and all of them together are no more than the requests the client sent: no
 *   byte of one message becomes a message of its own (smuggling), either way;
 * - every transport is closed once the client's connection is closed and the
 *   pools are emptied (no connection, timer or queue outlives its owner).
 *
 * Script: a byte op, then for ops with data a length byte and that many bytes.
 *   0 client bytes   1 upstream bytes (to the current upstream connection)
 *   2 client FIN     3 upstream FIN      4 upstream reset    5 refuse the next connect
 *   6 N: the current upstream is the N-th opened (mod count)  7 client reset
 * After each step, connects still pending complete (unless refused), and the
 * loop runs once (writes completing, closes).
 *
 * fuzz-options: -max_len=4096 -dict=spec/fuzz/http.dict */
#include <unistd.h>

#include "conn.h"
#include "fuzz.h"
#include "log.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#define MAX_TP 4096 /* more than a 4 KiB input can open */
#define OUT_MAX (1 << 20)

typedef struct {
  mg_tp_t *tp;
  int upstream;
  int connected; /* upstream: mg_tp_mem_connected was called */
  int open;
  char *out; /* what the transport wrote */
  size_t out_len;
  char *in; /* bytes for it not taken yet (it was not reading) */
  size_t in_len;
} peer_t;

static mg_worker_t W;
static mg_tp_net_t net;
static peer_t peers[MAX_TP];
static int npeers, nopen, refuse_next;

static peer_t *peer_of(mg_tp_t *tp) {
  for (int i = 0; i < npeers; i++)
    if (peers[i].open && peers[i].tp == tp) return &peers[i];
  return NULL;
}

static void net_opened(mg_tp_net_t *n, mg_tp_t *tp, int upstream) {
  (void)n;
  FUZZ_CHECK(npeers < MAX_TP);
  peers[npeers++] = (peer_t){ .tp = tp, .upstream = upstream, .open = 1 };
  nopen++;
}

static void net_output(mg_tp_net_t *n, mg_tp_t *tp, const char *p, size_t len) {
  (void)n;
  peer_t *pe = peer_of(tp);
  FUZZ_CHECK(pe != NULL);
  if (pe->out_len + len > OUT_MAX) return; /* enough to check */
  pe->out = realloc(pe->out, pe->out_len + len);
  FUZZ_CHECK(pe->out != NULL);
  memcpy(pe->out + pe->out_len, p, len);
  pe->out_len += len;
}

static void net_shutdown(mg_tp_net_t *n, mg_tp_t *tp) { (void)n, (void)tp; }

static void net_closed(mg_tp_net_t *n, mg_tp_t *tp) {
  (void)n;
  peer_t *pe = peer_of(tp);
  FUZZ_CHECK(pe != NULL);
  pe->open = 0;
  pe->tp = NULL;
  nopen--;
}

static void exited(void) {}

static const char config[] =
  "local mg = require 'moongate'\n"
  "mg.config { workers = 1, error_log = '/dev/null', log_level = 'error', access_log = false,\n"
  "  limits = { body_size = 100000 } }\n"
  "mg.listen { '127.0.0.1:18080', name = 'front' }\n"
  "local app = mg.upstream 'app' { servers = { '127.0.0.1:18081', '127.0.0.1:18082' }, keepalive = 2,\n"
  "  splice = true }\n"
  "mg.route { path = '/direct', respond = { status = 200, body = 'direct\\n' } }\n"
  "mg.route { path = '/lua', respond = function(req) return 201, req.path .. '\\n' end }\n"
  "mg.route { path = '/hook', upstream = app, on = {\n"
  "  request = function(req) req:set_header('x-hook', 'yes') end,\n"
  "  response = function(req, res) res:set_header('x-seen', '1') end,\n"
  "  body = function(req, res, chunk) return chunk:upper() end } }\n"
  "mg.route { path = '/wait', upstream = app, on = { request = function(req) mg.sleep(0) end } }\n"
  "mg.route { path = '/later', respond = function(req) mg.sleep(0) return 200, 'later' end }\n"
  /* every hook that may wait waits once (mg.sleep(0): woken by the worker's
   * timers on the next loop turn, which settle() gives) */
  "mg.on('connect', function(conn) mg.sleep(0) end)\n"
  "mg.route { path = '/w-res', upstream = app, on = {\n"
  "  response = function(req, res) mg.sleep(0) res:set_header('x-seen', '1') end } }\n"
  "mg.route { path = '/w-body', upstream = app, on = {\n"
  "  body = function(req, res, chunk) mg.sleep(0) return chunk:lower() end } }\n"
  "mg.route { path = '/w-log', upstream = app, on = { log = function(req, res) mg.sleep(0) end } }\n"
  "mg.route { path = '/w-bal', upstream = app, on = {\n"
  "  balance = function(req) mg.sleep(0) req:set_server(2) end } }\n"
  "mg.route { path = '/w-ureq', upstream = app, on = {\n"
  "  upstream_request = function(req) mg.sleep(0) req:set_header('x-u', '1') end } }\n"
  /* the body read by the hook, then replaced (Content-Length fixed by moongate);
   * a small buffer_body makes bigger bodies fail the read (413) */
  "mg.route { path = '/rbody', upstream = app, buffer_body = 64, on = { request = function(req)\n"
  "  local ok = req:read_body()\n"
  "  if ok then req:set_body('[' .. req:body() .. ']') end end } }\n"
  "mg.route { path = '/rbody-say', buffer_body = 64, respond = function(req)\n"
  "  local ok, err = req:read_body()\n"
  "  if not ok then return 413, err end\n"
  "  return 200, req:body() end }\n"
  /* set_body without a read: the client's body is read and dropped */
  "mg.route { path = '/sbody', upstream = app, on = {\n"
  "  upstream_request = function(req) mg.sleep(0) req:set_method('POST') req:set_body('replaced') end } }\n"
  /* the streaming filter changes each piece (the body goes chunked) */
  "mg.route { path = '/rfilt', upstream = app, on = { request_body = function(req, chunk, eof)\n"
  "  if eof then return '<end>' end return chunk:upper() .. '.' end } }\n"
  /* all of it on one request */
  "mg.route { path = '/w-all', upstream = app, buffer_body = 256, on = {\n"
  "  request = function(req) if req:read_body() then req:set_body(req:body() .. '!') end end,\n"
  "  request_body = function(req, chunk, eof) if not eof then return chunk .. '~' end end,\n"
  "  balance = function(req) mg.sleep(0) end,\n"
  "  upstream_request = function(req) mg.sleep(0) end,\n"
  "  response = function(req, res) mg.sleep(0) end,\n"
  "  body = function(req, res, chunk) mg.sleep(0) return chunk end,\n"
  "  log = function(req, res) mg.sleep(0) end } }\n"
  "mg.route { path = '/', upstream = app }\n";

static void setup(void) {
  char path[] = "/tmp/mg-fuzz-exchange-XXXXXX";
  int fd = mkstemp(path);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(write(fd, config, sizeof(config) - 1) == (ssize_t)(sizeof(config) - 1));
  close(fd);
  FUZZ_CHECK(mg_tls_global_init() == 0);
  mg_tls_set_hello(mg_conn_tls_hello);
  mg_tls_set_session(mg_upstream_tls_session);
  char err[1024];
  mg_gen_t *g = NULL;
  if (mg_config_load(path, &g, err, sizeof(err)) < 0) {
    fprintf(stderr, "fuzz_exchange: config: %s\n", err);
    abort();
  }
  unlink(path);
  FUZZ_CHECK(mg_log_open("/dev/null", MG_LOG_ERROR) == 0);
  int fds[8];
  for (int i = 0; i < 8; i++) fds[i] = -1;
  FUZZ_CHECK(g->nlisteners <= 8);
  if (mg_worker_make(&W, 0, g, fds, exited, err, sizeof(err)) < 0) {
    fprintf(stderr, "fuzz_exchange: worker: %s\n", err);
    abort();
  }
  net = (mg_tp_net_t){ .opened = net_opened, .output = net_output, .shutdown = net_shutdown,
                       .closed = net_closed };
  W.tp.net = &net;
  mg_current_worker = &W;
}

/* Bytes waiting for a transport that was not reading go in once it reads. */
static void push(peer_t *pe) {
  if (!pe->open || !pe->in_len) return;
  size_t took = mg_tp_mem_input(pe->tp, pe->in, pe->in_len);
  if (!pe->open) return; /* closed while reading: the rest is lost */
  memmove(pe->in, pe->in + took, pe->in_len - took);
  pe->in_len -= took;
}

static void give(peer_t *pe, const uint8_t *p, size_t n) {
  if (!pe || !pe->open) return;
  pe->in = realloc(pe->in, pe->in_len + n + 1);
  FUZZ_CHECK(pe->in != NULL);
  memcpy(pe->in + pe->in_len, p, n);
  pe->in_len += n;
  push(pe);
}

/* Connects complete, the loop turns (writes, closes), waiting bytes go in. */
static void settle(void) {
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < npeers; i++) {
      peer_t *pe = &peers[i];
      if (pe->open && pe->upstream && !pe->connected) {
        pe->connected = 1;
        mg_tp_mem_connected(pe->tp, refuse_next ? UV_ECONNREFUSED : 0);
        refuse_next = 0;
      }
    }
    uv_run(&W.loop, UV_RUN_NOWAIT);
    for (int i = 0; i < npeers; i++) push(&peers[i]);
  }
}

static peer_t *current_upstream(int pick) {
  int seen = 0;
  peer_t *last = NULL;
  for (int i = 0; i < npeers; i++) {
    if (!peers[i].upstream || !peers[i].open) continue;
    if (pick >= 0 && seen++ == pick) return &peers[i];
    last = &peers[i];
  }
  return last;
}

/* ---------------- the checks ---------------- */

static int n_heads; /* request heads the client sent in full */
static int methods[256];
static mg_head_t scratch_head;
static mg_head_t *begin(void *owner) {
  (void)owner;
  mg_head_reset(&scratch_head);
  return &scratch_head;
}

/* The request heads in a byte stream, in order (up to its first error or an
 * upgrade): their methods into methods[] when `record`; how many. *bad: the
 * stream has bytes that are not a request. */
static int requests_in(const char *p, size_t n, int record, int *upgraded, int *bad) {
  static const mg_h1_limits_t lim = { .head_max = 1 << 20, .headers_max = 10000, .uri_max = 0 };
  mg_h1_t h;
  mg_h1_init(&h, MG_H1_REQUEST, &lim, begin, NULL, NULL);
  int count = 0;
  *upgraded = 0;
  *bad = 0;
  if (n == 0) return 0;
  for (;;) {
    mg_h1_ev_t ev;
    size_t used = mg_h1_parse(&h, p, n, &ev);
    p += used;
    n -= used;
    if (ev.kind == MG_H1_HEAD) {
      if (record && count < 256) methods[count] = h.msg.method;
      count++;
      if (h.msg.upgrade) *upgraded = 1;
    } else if (ev.kind == MG_H1_UPGRADE) {
      *upgraded = 1;
      return count;
    } else if (ev.kind == MG_H1_NEED || ev.kind == MG_H1_ERROR) {
      *bad = ev.kind == MG_H1_ERROR;
      return count;
    }
  }
}

/* The client's bytes: whole responses, in order, each answering one request. */
static void check_client(const peer_t *c) {
  static const mg_h1_limits_t lim = { .head_max = 1 << 20, .headers_max = 10000, .uri_max = 0 };
  static mg_head_t rhead;
  mg_h1_t h;
  mg_h1_init(&h, MG_H1_RESPONSE, &lim, NULL, &rhead, NULL);
  mg_head_reset(&rhead);
  const char *p = c->out;
  size_t n = c->out_len;
  int finals = 0;
  if (n == 0) return;
  mg_h1_expect_no_body(&h, n_heads > 0 && methods[0] == HTTP_HEAD);
  while (n > 0) {
    mg_h1_ev_t ev;
    size_t used = mg_h1_parse(&h, p, n, &ev);
    p += used;
    n -= used;
    if (ev.kind == MG_H1_ERROR) {
      fprintf(stderr, "client got a malformed response #%d: %s\n", finals + 1, ev.why ? ev.why : "?");
      FUZZ_CHECK(!"the client's bytes are well-formed responses");
    }
    if (ev.kind == MG_H1_HEAD && h.msg.status == 101) return; /* the rest is the tunnel's */
    if (ev.kind == MG_H1_END) {
      finals++;
      /* one answer per request read, and one more at most: the refusal of a
       * request that could not be read */
      FUZZ_CHECK(finals <= n_heads + 1);
      mg_h1_expect_no_body(&h, finals < n_heads && finals < 256 && methods[finals] == HTTP_HEAD);
      mg_head_reset(&rhead);
    }
    if (ev.kind == MG_H1_NEED) break;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  static int ready;
  if (!ready) {
    setup();
    ready = 1;
  }
  npeers = 0;
  nopen = 0;
  refuse_next = 0;
  mg_conn_accept(W.listeners[0]);
  FUZZ_CHECK(npeers == 1);
  peer_t *client = &peers[0];
  char *client_in = NULL; /* everything the client sent, for the checks */
  size_t client_in_len = 0;
  int pick = -1;
  settle();
  size_t i = 0;
  while (i < n) {
    int op = p[i++] & 7;
    size_t len = 0;
    if (op <= 1) {
      if (i >= n) break;
      len = p[i++];
      if (len > n - i) len = n - i;
    }
    switch (op) {
    case 0:
      if (client->open) {
        client_in = realloc(client_in, client_in_len + len + 1);
        FUZZ_CHECK(client_in != NULL);
        memcpy(client_in + client_in_len, p + i, len);
        client_in_len += len;
      }
      give(client, p + i, len);
      break;
    case 1: give(current_upstream(pick), p + i, len); break;
    case 2:
      if (client->open && !client->in_len) mg_tp_mem_eof(client->tp);
      break;
    case 3: {
      peer_t *u = current_upstream(pick);
      if (u && u->open && !u->in_len) mg_tp_mem_eof(u->tp);
      break;
    }
    case 4: {
      peer_t *u = current_upstream(pick);
      if (u && u->open) mg_tp_mem_reset(u->tp);
      break;
    }
    case 5: refuse_next = 1; break;
    case 6:
      if (i < n) pick = p[i++] % 8;
      break;
    case 7:
      if (client->open) mg_tp_mem_reset(client->tp);
      break;
    }
    i += len;
    settle();
  }

  if (getenv("MG_FUZZ_SHOW")) /* replaying one input: what each side got */
    for (int k = 0; k < npeers; k++)
      fprintf(stderr, "--- %s %d got %zu bytes:\n%.*s\n", peers[k].upstream ? "upstream" : "client", k,
              peers[k].out_len, (int)peers[k].out_len, peers[k].out ? peers[k].out : "");
  /* the checks, on what the transports wrote */
  int upgraded = 0, bad = 0;
  n_heads = requests_in(client_in, client_in_len, 1, &upgraded, &bad);
  check_client(client);
  for (int k = 0; k < npeers; k++) {
    if (!peers[k].upstream) continue;
    int up_upgraded = 0, up_bad = 0;
    int r = requests_in(peers[k].out, peers[k].out_len, 0, &up_upgraded, &up_bad);
    if (up_bad) {
      fprintf(stderr, "upstream connection %d got bytes that are not requests\n", k);
      FUZZ_CHECK(!"what an upstream receives is well-formed requests");
    }
    /* a request is retried on a second connection when a pooled one turns out
     * closed, so the count is per connection: never more than the client sent */
    FUZZ_CHECK(r <= n_heads);
  }

  /* teardown: the client goes, the pools are emptied; everything must close */
  for (mg_conn_t *c = W.conns; c;) {
    mg_conn_t *next = c->next;
    mg_conn_close(c);
    c = next;
  }
  mg_upstream_close_pools(&W);
  for (int round = 0; round < 16 && nopen > 0; round++) uv_run(&W.loop, UV_RUN_NOWAIT);
  FUZZ_CHECK(nopen == 0);
  for (int k = 0; k < npeers; k++) {
    free(peers[k].out);
    free(peers[k].in);
    peers[k] = (peer_t){ 0 };
  }
  free(client_in);
  return 0;
}
