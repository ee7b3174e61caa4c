/* Output queues: bytes waiting to be written to one stream. Appends copy into
 * 16 KiB blocks (mg_outq_append_ref queues bytes lent by their owner instead); mg_outq_flush writes every pending block with one writev, so a
 * burst of small appends costs one syscall. It first tries to write synchronously
 * (uv_try_write): what the kernel takes is done, with no write request and no
 * callback; only the rest goes to uv_write, whose blocks are freed in the write
 * callback. (A completed uv_write also costs an epoll_ctl in libuv, which the
 * synchronous path avoids.) Each thread keeps a few spare blocks. The queue belongs to the object that owns the stream and must outlive
 * every write it started: uv_close cancels pending writes and runs their callbacks
 * before the close callback, so freeing the owner in its close callback is safe. */
#ifndef MG_BUF_H
#define MG_BUF_H

#include <uv.h>

#include "mg.h"

typedef struct mg_block_s {
  struct mg_block_s *next;
  size_t off, len, cap; /* bytes [off..len) are still to be written */
  /* An external block (mg_outq_append_ref) has no data of its own: its bytes are
   * ext's, lent by `owner` until release(owner) runs when the block is freed. */
  const char *ext;
  void (*release)(void *owner);
  void *owner;
  char data[];
} mg_block_t;

/* The block's bytes (its own, or those it references). */
static inline const char *mg_block_bytes(const mg_block_t *b) { return b->ext ? b->ext : b->data; }

typedef struct mg_outq_s mg_outq_t;
/* Called after every write: status < 0 when it failed, MG_OUTQ_DRAINED when the
 * queue fell below MG_LOW_WATER after being above MG_HIGH_WATER, else 0. */
#define MG_OUTQ_DRAINED 1
typedef void (*mg_outq_cb)(mg_outq_t *q, int status);

struct mg_outq_s {
  mg_block_t *head, *tail; /* appended, not yet submitted */
  size_t pending;          /* bytes in head..tail */
  size_t inflight;         /* bytes submitted to uv_write, not yet completed */
  unsigned writes;         /* uv_write requests in flight */
  int above;               /* went over MG_HIGH_WATER: call cb when drained */
  uv_stream_t *stream;     /* NULL until attached */
  const struct mg_outq_enc_s *enc; /* NULL: bytes go out as appended; else they are
                                       encoded when flushed (TLS: transport.h) */
  void *enc_data;
  mg_outq_cb cb;
  void *data;
};

/* An encoder turns what is pending into what goes on the wire at each flush
 * (transport.c: TLS records). It takes the pending blocks (mg_outq_take) and
 * appends the encoded bytes; `more` says whether it has bytes of its own to send
 * even with nothing pending (handshake, alerts, close_notify). */
typedef struct mg_outq_enc_s {
  int (*encode)(mg_outq_t *q); /* 0, or < 0 (a uv error code, MG_ENOMEM) */
  int (*more)(const mg_outq_t *q);
} mg_outq_enc_t;

void mg_outq_init(mg_outq_t *q, mg_outq_cb cb, void *data);
/* Detaches the pending blocks (an encoder's input): the caller frees them with
 * mg_outq_free_blocks. */
mg_block_t *mg_outq_take(mg_outq_t *q);
void mg_outq_free_blocks(mg_block_t *b);
/* Frees blocks not yet submitted (submitted ones are freed by their callbacks). */
void mg_outq_dispose(mg_outq_t *q);
int mg_outq_append(mg_outq_t *q, const void *p, size_t len);
/* Queues len bytes at p without copying them (a stored response's body): they
 * must stay valid until release(owner) is called, which happens once, when the
 * queue is done with them (written, taken by an encoder and encoded, or dropped
 * with the queue). 0; MG_ENOMEM (nothing queued, release not called). */
int mg_outq_append_ref(mg_outq_t *q, const char *p, size_t len, void (*release)(void *owner), void *owner);
/* Appends v in decimal (no printf on the request path). */
int mg_outq_append_uint(mg_outq_t *q, uint64_t v);
/* Moves every pending block of `from` to the end of `to`. */
void mg_outq_move(mg_outq_t *to, mg_outq_t *from);
/* Drops the first n bytes of those appended and not yet submitted (at most
 * `pending` of them). */
void mg_outq_drop(mg_outq_t *q, size_t n);
/* Writes what is pending: synchronously as far as the kernel takes it (no
 * callback for that part), the rest through uv_write. Returns 0 or a libuv error.
 * No-op without a stream. The callback is not called from inside this function. */
int mg_outq_flush(mg_outq_t *q);
/* Runs the encoder (if any) over what is pending, as a flush does first: for
 * writers other than mg_outq_flush (the in-memory transport). 0 or < 0. */
int mg_outq_encode(mg_outq_t *q);
/* A write of `bytes` taken from the queue (counted in inflight and writes by the
 * writer) completed: the same accounting and callback as mg_outq_flush's own. */
void mg_outq_written(mg_outq_t *q, size_t bytes, int status);
/* Writes what is pending to socket fd with MSG_MORE (the kernel holds a partial
 * packet for what the caller sends next, at once: a spliced body after its
 * head), as far as it takes it now; only when a flush would write synchronously
 * too (no encoder, nothing in flight). 0 or a negative errno. */
int mg_outq_send_more(mg_outq_t *q, int fd);
/* Appends p, or writes it right away behind what is pending (one writev) when a
 * flush would write synchronously now: a large piece then costs no copy. What the
 * kernel does not take is appended. 0 or MG_ENOMEM. */
int mg_outq_write_through(mg_outq_t *q, const char *p, size_t len);
/* True when a flush has something to write (with an encoder: its own bytes too). */
int mg_outq_has_output(const mg_outq_t *q);
/* Frees this thread's spare blocks (a worker thread calls it before it ends). */
void mg_outq_free_spares(void);
static inline size_t mg_outq_size(const mg_outq_t *q) { return q->pending + q->inflight; }
static inline int mg_outq_full(const mg_outq_t *q) { return mg_outq_size(q) > MG_HIGH_WATER; }

#endif
