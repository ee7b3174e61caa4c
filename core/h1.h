/* The HTTP/1.1 codec: llhttp in strict mode over one direction of a connection
 * (requests from a client, responses from an upstream), turned into a pull
 * parser. The caller hands it bytes; it stops at every event the caller acts on
 * (a head, a piece of body, the end of a message, an error) and says how many
 * bytes it took, so nothing the caller does (hooks, routing, filters) runs
 * inside a llhttp callback. The head goes into an mg_head_t (http.h); heads and
 * trailers are checked line by line on the raw bytes first (mg_head_scan); the
 * limits are the caller's. No sockets, no Lua, no routing: testable on bytes
 * alone (core/test/test_h1.c). */
#ifndef MG_H1_H
#define MG_H1_H

#include <llhttp.h>

#include "http.h"
#include "mg.h"

enum { MG_H1_REQUEST = 0, MG_H1_RESPONSE = 1 };

/* What mg_h1_parse stopped for. */
enum {
  MG_H1_NEED = 0, /* every byte given was taken: give more */
  MG_H1_HEAD,     /* a head is complete: the head and h->msg */
  MG_H1_INTERIM,  /* responses: a 1xx head (not 101) is complete; the next call starts
                     on the next head (the head is reset then) */
  MG_H1_BODY,     /* ev.p, ev.len: decoded body bytes (no chunk framing) */
  MG_H1_END,      /* the message ended (trailers, if any, were checked and dropped) */
  MG_H1_UPGRADE,  /* requests: the message before asked to upgrade: nothing after it is HTTP */
  MG_H1_ERROR,    /* ev.status, ev.why: the message is refused; parse no further */
};

/* How a message's body is framed (the head's Content-Length / Transfer-Encoding). */
enum { MG_BODY_NONE, MG_BODY_LENGTH, MG_BODY_CHUNKED };

typedef struct {
  int kind;          /* MG_H1_* */
  const char *p;     /* BODY: the bytes (inside what was given) */
  size_t len;
  int status;        /* ERROR: requests: the status to answer (400, 413, 414, 431, 505);
                        responses: 502 */
  const char *why;   /* ERROR: the cause, for a log line */
} mg_h1_ev_t;

/* A message's first line and framing, set when its head is complete. */
typedef struct {
  int method;        /* llhttp_method_t (requests); -1 until the request line is read */
  int status;        /* responses */
  int http_minor;    /* 0 or 1 (major is 1) */
  int keepalive;     /* the sender allows another message after this one */
  int upgrade;       /* requests: Connection: upgrade with Upgrade */
  int body;          /* MG_BODY_* */
  int has_length;    /* a Content-Length came */
  uint64_t content_length;
} mg_h1_msg_t;

typedef struct {
  size_t head_max;    /* bytes of a head (and, apart, of its trailers) */
  size_t headers_max; /* header fields */
  size_t uri_max;     /* requests: bytes of the target; 0: no limit but head_max */
} mg_h1_limits_t;

typedef struct mg_h1_s mg_h1_t;
/* Requests: a message begins; returns the head to parse it into (NULL: out of
 * memory, an error). Runs inside the parser: it must not do more than that. */
typedef mg_head_t *(*mg_h1_begin_fn)(void *owner);

struct mg_h1_s {
  llhttp_t p;
  mg_head_scan_t scan;
  mg_h1_msg_t msg;
  mg_h1_limits_t lim;
  mg_head_t *head;
  mg_h1_begin_fn begin;
  void *owner;
  uint64_t trailer_bytes, chunk_ext;
  mg_h1_ev_t ev;          /* the event a callback paused for */
  int error_status;       /* the status a callback refused with */
  const char *why;
  unsigned head_done : 1;   /* later header callbacks are trailers */
  unsigned paused : 1;      /* llhttp is paused: resume before the next run */
  unsigned end_pending : 1; /* a HEAD was reported; the END it came with is next */
  unsigned interim : 1;     /* the last event was INTERIM: reset the head first */
  unsigned trailers : 1;    /* paused at the last chunk: its trailers are scanned next */
  unsigned no_body : 1;     /* responses: the request was HEAD */
  unsigned upgraded : 1;    /* requests: the last message asked to upgrade */
};

/* type: MG_H1_REQUEST (begin gives each request's head) or MG_H1_RESPONSE (head
 * is where every response head goes). */
void mg_h1_init(mg_h1_t *h, int type, const mg_h1_limits_t *lim, mg_h1_begin_fn begin, mg_head_t *head,
                void *owner);
/* Responses: the next one answers a HEAD request (no body, whatever it says). */
static inline void mg_h1_expect_no_body(mg_h1_t *h, int on) { h->no_body = on ? 1 : 0; }

/* Parses from p[0..n): returns how many bytes it took and fills ev with why it
 * stopped. Call again with the rest (or more bytes) to go on. */
size_t mg_h1_parse(mg_h1_t *h, const char *p, size_t n, mg_h1_ev_t *ev);
/* The stream ended (EOF): MG_H1_END when that ends a body framed by the close,
 * MG_H1_NEED between messages, MG_H1_ERROR in the middle of one. */
int mg_h1_finish(mg_h1_t *h, mg_h1_ev_t *ev);
/* Inside a body framed by Content-Length: the bytes of it still to come (what was
 * parsed so far is not counted); 0 otherwise. */
static inline uint64_t mg_h1_body_left(const mg_h1_t *h) {
  return h->head_done && h->msg.body == MG_BODY_LENGTH ? h->p.content_length : 0;
}
/* After MG_H1_END: whether the connection may carry another message. */
int mg_h1_keepalive(const mg_h1_t *h);

#endif
