#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>


#define BLOCK_SIZE (16 * 1024)
#define MAX_IOV 64

typedef struct {
  uv_write_t req;
  mg_outq_t *q;
  mg_block_t *blocks;
  size_t bytes;
} write_ctx_t;

void mg_outq_init(mg_outq_t *q, mg_outq_cb cb, void *data) {
  memset(q, 0, sizeof(*q));
  q->cb = cb;
  q->data = data;
}

/* Spare standard blocks of this thread: a response is usually one block, taken
 * and given back within one read callback. */
#ifdef __SANITIZE_ADDRESS__
#define MAX_SPARES 0 /* every block freed: AddressSanitizer sees a use after free */
#else
#define MAX_SPARES 8
#endif
static _Thread_local mg_block_t *spares;
static _Thread_local int nspares;

static mg_block_t *block_new(size_t len) {
  mg_block_t *b;
  if (len <= BLOCK_SIZE && spares) {
    b = spares;
    spares = b->next;
    nspares--;
  } else {
    size_t cap = len > BLOCK_SIZE ? len : BLOCK_SIZE;
    b = malloc(sizeof(*b) + cap);
    if (!b) return NULL;
    b->cap = cap;
  }
  b->next = NULL;
  b->off = b->len = 0;
  b->ext = NULL;
  b->release = NULL;
  return b;
}

static void free_blocks(mg_block_t *b) {
  while (b) {
    mg_block_t *next = b->next;
    if (b->ext) { /* no data of its own: never a spare */
      if (b->release) b->release(b->owner);
      free(b);
    } else if (b->cap == BLOCK_SIZE && nspares < MAX_SPARES) {
      b->next = spares;
      spares = b;
      nspares++;
    } else {
      free(b);
    }
    b = next;
  }
}

void mg_outq_free_spares(void) {
  while (spares) {
    mg_block_t *next = spares->next;
    free(spares);
    spares = next;
  }
  nspares = 0;
}

void mg_outq_dispose(mg_outq_t *q) {
  free_blocks(q->head);
  q->head = q->tail = NULL;
  q->pending = 0;
}

int mg_outq_append(mg_outq_t *q, const void *p, size_t len) {
  const char *src = p;
  while (len > 0) {
    mg_block_t *t = q->tail;
    if (!t || t->len == t->cap) {
      t = block_new(len);
      if (!t) return MG_ENOMEM;
      if (q->tail) q->tail->next = t;
      else q->head = t;
      q->tail = t;
    }
    size_t n = t->cap - t->len;
    if (n > len) n = len;
    memcpy(t->data + t->len, src, n);
    t->len += n;
    src += n;
    len -= n;
    q->pending += n;
  }
  if (mg_outq_size(q) > MG_HIGH_WATER) q->above = 1;
  return 0;
}

int mg_outq_append_ref(mg_outq_t *q, const char *p, size_t len, void (*release)(void *owner), void *owner) {
  if (len == 0) return 0; /* nothing queued: the caller keeps its reference */
  mg_block_t *b = malloc(sizeof(*b));
  if (!b) return MG_ENOMEM;
  *b = (mg_block_t){ .off = 0, .len = len, .cap = len, .ext = p, .release = release, .owner = owner };
  if (q->tail) q->tail->next = b; /* full (len == cap): appends after it take a new block */
  else q->head = b;
  q->tail = b;
  q->pending += len;
  if (mg_outq_size(q) > MG_HIGH_WATER) q->above = 1;
  return 0;
}

int mg_outq_append_uint(mg_outq_t *q, uint64_t v) {
  char d[MG_U64_DEC];
  const char *p = mg_u64_dec(d, v);
  return mg_outq_append(q, p, (size_t)(d + sizeof(d) - p));
}

void mg_outq_move(mg_outq_t *to, mg_outq_t *from) {
  if (!from->head) return;
  if (to->tail) to->tail->next = from->head;
  else to->head = from->head;
  to->tail = from->tail;
  to->pending += from->pending;
  from->head = from->tail = NULL;
  from->pending = 0;
  if (mg_outq_size(to) > MG_HIGH_WATER) to->above = 1;
}

void mg_outq_written(mg_outq_t *q, size_t bytes, int status) {
  q->inflight -= bytes;
  q->writes--;
  if (status < 0) {
    if (q->cb) q->cb(q, status);
    return;
  }
  int drained = 0;
  if (q->above && mg_outq_size(q) < MG_LOW_WATER) {
    q->above = 0;
    drained = MG_OUTQ_DRAINED;
  }
  if (q->cb) q->cb(q, drained);
}

static void on_write(uv_write_t *req, int status) {
  write_ctx_t *w = (write_ctx_t *)req;
  mg_outq_t *q = w->q;
  size_t bytes = w->bytes;
  free_blocks(w->blocks);
  free(w);
  mg_outq_written(q, bytes, status);
}

/* The kernel took `done` bytes from the front of the queue: whole blocks are
 * freed, a block it took part of moves on. Returns how many of `done` lay past
 * the pending bytes (a piece written with them: mg_outq_write_through). */
static size_t consume(mg_outq_t *q, size_t done) {
  while (done > 0 && q->head) {
    mg_block_t *b = q->head;
    size_t left = b->len - b->off;
    if (done < left) {
      b->off += done;
      q->pending -= done;
      return 0;
    }
    done -= left;
    q->pending -= left;
    q->head = b->next;
    if (!q->head) q->tail = NULL;
    b->next = NULL;
    free_blocks(b);
  }
  return done;
}

void mg_outq_drop(mg_outq_t *q, size_t n) { consume(q, n < q->pending ? n : q->pending); }

/* Writes as much as the kernel takes now. Only when nothing is in flight (order)
 * and the queue is not waiting to report MG_OUTQ_DRAINED (that needs a callback). */
static int try_write(mg_outq_t *q) {
  while (q->head && q->writes == 0 && !q->above) {
    uv_buf_t iov[MAX_IOV];
    unsigned n = 0;
    size_t total = 0;
    for (mg_block_t *b = q->head; b && n < MAX_IOV; b = b->next) {
      iov[n++] = uv_buf_init((char *)mg_block_bytes(b) + b->off, (unsigned)(b->len - b->off));
      total += b->len - b->off;
    }
    int rc = uv_try_write(q->stream, iov, n);
    if (rc == UV_EAGAIN) return 0;
    if (rc < 0) return rc;
    consume(q, (size_t)rc);
    if ((size_t)rc < total) return 0; /* the kernel took part: the rest waits for writability */
  }
  return 0;
}

int mg_outq_send_more(mg_outq_t *q, int fd) {
  if (q->enc || q->writes || q->above || !q->head) return 0;
  struct iovec iov[MAX_IOV];
  int n = 0;
  for (mg_block_t *b = q->head; b && n < MAX_IOV; b = b->next) {
    iov[n].iov_base = (char *)mg_block_bytes(b) + b->off;
    iov[n++].iov_len = b->len - b->off;
  }
  struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
  ssize_t rc;
  do rc = sendmsg(fd, &m, MSG_MORE | MSG_DONTWAIT | MSG_NOSIGNAL);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) return errno == EAGAIN ? 0 : -errno;
  consume(q, (size_t)rc);
  return 0;
}

int mg_outq_write_through(mg_outq_t *q, const char *p, size_t len) {
  if (!q->stream || q->enc || q->writes || q->above) return mg_outq_append(q, p, len);
  uv_buf_t iov[MAX_IOV];
  unsigned n = 0;
  for (mg_block_t *b = q->head; b && n < MAX_IOV - 1; b = b->next)
    iov[n++] = uv_buf_init((char *)mg_block_bytes(b) + b->off, (unsigned)(b->len - b->off));
  if (n == MAX_IOV - 1) return mg_outq_append(q, p, len); /* a long queue: no shortcut */
  iov[n++] = uv_buf_init((char *)p, (unsigned)len);
  int rc = uv_try_write(q->stream, iov, n);
  if (rc < 0) return mg_outq_append(q, p, len); /* EAGAIN, or an error the flush reports */
  size_t done = consume(q, (size_t)rc); /* the queued bytes went first */
  return done < len ? mg_outq_append(q, p + done, len - done) : 0;
}

int mg_outq_has_output(const mg_outq_t *q) {
  return q->pending > 0 || (q->enc && q->enc->more(q));
}

mg_block_t *mg_outq_take(mg_outq_t *q) {
  mg_block_t *b = q->head;
  q->head = q->tail = NULL;
  q->pending = 0;
  return b;
}

void mg_outq_free_blocks(mg_block_t *b) { free_blocks(b); }

int mg_outq_encode(mg_outq_t *q) { return q->enc ? q->enc->encode(q) : 0; }

int mg_outq_flush(mg_outq_t *q) {
  if (!q->stream) return 0;
  if (q->enc) {
    int erc = q->enc->encode(q);
    if (erc < 0) return erc;
  }
  int rc = try_write(q);
  if (rc < 0) return rc;
  while (q->head) {
    uv_buf_t iov[MAX_IOV];
    unsigned n = 0;
    size_t bytes = 0;
    mg_block_t *first = q->head, *last = NULL, *b = q->head;
    for (; b && n < MAX_IOV; b = b->next) {
      iov[n++] = uv_buf_init((char *)mg_block_bytes(b) + b->off, (unsigned)(b->len - b->off));
      bytes += b->len - b->off;
      last = b;
    }
    write_ctx_t *w = malloc(sizeof(*w));
    if (!w) return MG_ENOMEM;
    q->head = last->next;
    if (!q->head) q->tail = NULL;
    last->next = NULL;
    w->q = q;
    w->blocks = first;
    w->bytes = bytes;
    q->pending -= bytes;
    q->inflight += bytes;
    q->writes++;
    rc = uv_write(&w->req, q->stream, iov, n, on_write);
    if (rc < 0) {
      q->inflight -= bytes;
      q->writes--;
      free_blocks(first);
      free(w);
      return rc;
    }
  }
  return 0;
}
