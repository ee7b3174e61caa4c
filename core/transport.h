/* The transport: a byte stream, client side or upstream side, over TCP with
 * optional TLS. It owns the socket, the TLS session and the output queue. Its
 * owner reads plaintext through callbacks, writes plaintext into the queue, and
 * starts and stops reading, half-closes and closes it the same way on both
 * sides. TLS lives here once: the handshake, records read into plaintext,
 * records made from the queue when it is flushed, close_notify, tickets. It
 * knows no HTTP.
 *
 * Two kinds of I/O sit under the same calls: sockets (libuv TCP), and an
 * in-memory network (mg_tp_net_t) for the fuzz targets and tests that drive the
 * connection and exchange code without a kernel: bytes go in with
 * mg_tp_mem_input, come out through the network's `output` callback, and
 * writes complete the way libuv's do (at once while the queue is short, later
 * through a callback once it went over the high-water mark). */
#ifndef MG_TRANSPORT_H
#define MG_TRANSPORT_H

#include <openssl/ssl.h>
#include <uv.h>

#include "buf.h"
#include "mg.h"

typedef struct mg_tp_s mg_tp_t;

/* An in-memory network: set in mg_tp_ctx_t, every transport made with that
 * context is in memory. The fuzz target (core/fuzz) is its only user. */
typedef struct mg_tp_net_s {
  /* a transport was made: accepted (a client) or connecting (an upstream; it
   * waits for mg_tp_mem_connected) */
  void (*opened)(struct mg_tp_net_s *net, mg_tp_t *tp, int upstream);
  /* bytes the transport wrote */
  void (*output)(struct mg_tp_net_s *net, mg_tp_t *tp, const char *p, size_t n);
  /* a half-close (FIN after the output) */
  void (*shutdown)(struct mg_tp_net_s *net, mg_tp_t *tp);
  /* the transport is closed (its memory goes right after this call) */
  void (*closed)(struct mg_tp_net_s *net, mg_tp_t *tp);
  void *data;
} mg_tp_net_t;

/* What the transports of one thread share: its loop, its read buffers, and the
 * in-memory network when there is one (NULL: sockets). */
typedef struct {
  uv_loop_t *loop;
  char *rbuf, *tbuf; /* socket reads; decrypted records */
  size_t rcap, tcap;
  mg_tp_net_t *net;
  int pipe[2];       /* splicing: the thread's pipe (read, write end), made when first
                        needed and always left empty; -1 when none */
} mg_tp_ctx_t;

/* Why a transport failed to become ready (mg_tp_events_t.ready). */
enum {
  MG_TP_FAIL_CONNECT = 1,    /* the TCP connect failed (rc is the libuv code) */
  MG_TP_FAIL_TLS = 2,        /* a TLS error or the connection failing during the handshake */
  MG_TP_FAIL_PLAIN_HTTP = 3, /* (servers) the peer spoke plain HTTP to a TLS port */
  MG_TP_FAIL_CERT = 4,       /* (clients) the peer's certificate was not accepted */
  MG_TP_FAIL_IO = 5,         /* writing our part of the handshake failed */
};
/* A TLS error while reading (mg_tp_events_t.error). */
#define MG_TP_ETLS (-20001)

/* What a transport tells its owner. Each call may close the transport; the
 * transport checks afterwards and its memory stays valid until `closed`. */
typedef struct {
  /* The stream is ready for the owner's bytes: an upstream's TCP connect (and
   * TLS handshake) is done, or a TLS listener's handshake. rc < 0: it failed,
   * `kind` (MG_TP_FAIL_*) and `why` (for a log line) say how; nothing more comes
   * but `closed` once the owner closes. */
  void (*ready)(void *owner, int rc, int kind, const char *why);
  /* Only while mg_tp_t.preamble is set, before any TLS: the raw bytes of a read.
   * Returns 1 when the preamble is complete (*p, *n: the rest of the read, which
   * goes on as usual), 0 when it waits for more or closed the transport. */
  int (*preamble)(void *owner, const char **p, size_t *n);
  /* Plaintext read. Non-zero: deliver no more of this read (the owner is
   * ending, or changed what it is; no read_end follows). */
  int (*data)(void *owner, const char *p, size_t n);
  /* Everything one socket read brought was delivered (also when it ended with a
   * TLS close_notify: `eof` follows then). */
  void (*read_end)(void *owner);
  /* The peer is done sending (a FIN, or TLS close_notify). Reading has stopped. */
  void (*eof)(void *owner);
  /* Reading failed: a libuv error, MG_ENOMEM, or MG_TP_ETLS; `why` says it. */
  void (*error)(void *owner, int err, const char *why);
  /* A write that did not complete at once completed: as mg_outq_cb's status. */
  void (*written)(void *owner, int status);
  /* The half-close asked with mg_tp_shutdown is done (status < 0: failed).
   * Not called once the transport is closing. May be NULL. */
  void (*shut)(void *owner, int status);
  /* Closed: the last call; the owner may free the memory holding the transport. */
  void (*closed)(void *owner);
  /* Splicing (mg_tp_splice): n more bytes went on; `left` still to come (0: the
   * splice is over). May be NULL for owners that never splice. */
  void (*spliced)(void *owner, size_t n, uint64_t left);
} mg_tp_events_t;

typedef struct {
  SSL *ssl;
  int close; /* 1: send close_notify after what is pending; 2: sent */
} mg_tp_tls_t;

struct mg_tp_s {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_timer_t mem; /* in memory: the handle that closes and completes writes */
  } io;
  mg_outq_t out;      /* plaintext to send (owners append, then mg_tp_flush) */
  mg_tp_tls_t tls;    /* the queue's encoder state while TLS is on */
  SSL *ssl;           /* the TLS session (memory BIOs); NULL: plain */
  mg_tp_ctx_t *ctx;
  const mg_tp_events_t *ev;
  void *owner;
  mg_tp_t *splice_to;       /* splicing: where the bytes read go, splice_left of them */
  uint64_t splice_left;
  uint32_t read_cap;        /* reads take at most this much (0: the read buffer's size) */
  mg_block_t *mem_inflight; /* in memory: written, completing on the next loop turn */
  size_t mem_bytes;
  unsigned reading : 1;
  unsigned tls_ready : 1; /* the handshake is done (or no TLS) */
  unsigned preamble : 1;  /* the owner wants the raw bytes before TLS first */
  unsigned discard : 1;   /* input is dropped unread (the owner is closing) */
  unsigned closing : 1;
  unsigned upstream : 1;  /* the connecting side */
  unsigned mem_shut : 1;  /* in memory: shutdown asked, sent once the writes complete */
  unsigned hs_paused : 1; /* (servers) the handshake waits for the certificate's choice
                             (mg_tls_hello_fn said MG_TLS_HELLO_WAIT): mg_tp_tls_resume */
};

/* A client connection from a listening socket (in memory: a new one the network
 * is told of). 0 or a libuv error; on error the owner's `closed` comes later. */
int mg_tp_accept(mg_tp_t *tp, mg_tp_ctx_t *ctx, uv_stream_t *server, const mg_tp_events_t *ev,
                 void *owner);
/* An upstream connection to addr: `ready` follows (after the TLS handshake when
 * mg_tp_tls was called before the connect completes). `req` is the
 * owner's, kept until `ready` or `closed` (client connections do not carry
 * one). 0 or a libuv error. */
int mg_tp_connect(mg_tp_t *tp, mg_tp_ctx_t *ctx, uv_connect_t *req, const struct sockaddr *addr,
                  const mg_tp_events_t *ev, void *owner);
/* Makes the stream TLS: an accepted one as the server (handshake on the first
 * bytes read), a connecting one as the client (handshake once connected). The
 * transport owns ssl from now on. */
void mg_tp_tls(mg_tp_t *tp, SSL *ssl);
/* Makes a connected client stream TLS from now on (STARTTLS-like: a socket
 * that connected plain, then asks for TLS): the handshake starts at once;
 * `ready` follows (rc 0, or the failure), possibly before this returns when
 * writing the first flight fails. The transport owns ssl from now on. */
void mg_tp_tls_start(mg_tp_t *tp, SSL *ssl);
/* A server's handshake paused for the certificate's choice (the owner's
 * mg_tls_hello_fn said MG_TLS_HELLO_WAIT) goes on: the choice is asked for
 * again, then the handshake and what input came meanwhile go on as after a
 * read (`ready`, `data`, ...). No-op when not paused or closing. Call it from
 * outside the transport's own callbacks. */
void mg_tp_tls_resume(mg_tp_t *tp);
/* Back to plain bytes for what follows (a plaintext answer to a client that
 * spoke HTTP to a TLS port): what BoringSSL had queued is dropped. */
void mg_tp_tls_off(mg_tp_t *tp);
/* TLS 1.3 servers: BoringSSL holds the session tickets until the first write;
 * this queues them now (a zero-byte write), for the next flush. */
void mg_tp_release_tickets(mg_tp_t *tp);
/* Decrypted or still encrypted input waits inside the TLS session. */
int mg_tp_input_pending(const mg_tp_t *tp);
/* Input waits anywhere: in the TLS session, or unread in the socket (a peek; in
 * memory: never). After a splice, whose last read took exactly what was due, it
 * is what the peer sent after that. */
int mg_tp_input_waiting(const mg_tp_t *tp);

/* Starts (1) or stops (0) reading; a no-op when it already is so. */
void mg_tp_read(mg_tp_t *tp, int on);
/* Writes what is queued: synchronously as far as it goes, the rest later
 * (`written`). 0, or a libuv error / MG_ENOMEM (the owner closes). */
int mg_tp_flush(mg_tp_t *tp);
/* With TLS: close_notify goes after what is queued (at the next flush). */
void mg_tp_close_notify(mg_tp_t *tp);
/* A FIN after what is queued and being written; `shut` follows. 0 or an error. */
int mg_tp_shutdown(mg_tp_t *tp);
/* Closes (idempotent): pending writes are cancelled; `closed` follows. */
void mg_tp_close(mg_tp_t *tp);
/* The addresses of the two ends (in memory: 127.0.0.1 ports from the network).
 * 0 or an error. */
int mg_tp_peer(const mg_tp_t *tp, struct sockaddr_storage *ss);
int mg_tp_local(const mg_tp_t *tp, struct sockaddr_storage *ss);

/* Splicing, for bodies passed on as they are between two plain sockets (the
 * kernel moves the pages: no copy into this process). The next n bytes the peer
 * sends on tp go to `to`'s socket through the thread's pipe, as they arrive; when
 * `to` has bytes queued (its client is not keeping up, or they must go first),
 * what came is appended to its queue instead, as a read would have. Progress is
 * told through `spliced`; starting and stopping tp's reading works as usual (a
 * paused splice waits). 0, or < 0 when it cannot be done (TLS on either side,
 * the in-memory network, no pipe): nothing changed, read as usual. */
int mg_tp_splice(mg_tp_t *tp, mg_tp_t *to, uint64_t n);
/* Ends a splice early (the exchange is over): tp reads as usual again. */
void mg_tp_splice_stop(mg_tp_t *tp);
/* The thread's transports are all closed: its pipe goes. */
void mg_tp_ctx_close(mg_tp_ctx_t *ctx);

/* In memory only. Bytes from the peer, delivered as reads (of at most the read
 * buffer's size) while the transport is reading: how many were taken. */
size_t mg_tp_mem_input(mg_tp_t *tp, const char *p, size_t n);
/* The peer half-closed (as a FIN read): 1 when delivered, 0 when not reading. */
int mg_tp_mem_eof(mg_tp_t *tp);
/* The peer reset the connection: a read error. */
void mg_tp_mem_reset(mg_tp_t *tp);
/* An upstream's connect completes: status 0, or a libuv error (refused). */
void mg_tp_mem_connected(mg_tp_t *tp, int status);

#endif
