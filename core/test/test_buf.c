/* core/buf.c: output queues over a real stream (a Unix socket pair, libuv's pipe
 * handle on our end), read back from the other end: what goes out, in what order,
 * and what stays queued. */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../buf.h"
#include "test.h"

typedef struct {
  uv_loop_t loop;
  uv_pipe_t pipe;
  mg_outq_t q;
  int peer; /* the other end, read directly */
  int calls;
} rig_t;

static void on_out(mg_outq_t *q, int status) {
  rig_t *r = q->data;
  (void)status;
  r->calls++;
}

static void rig_open(rig_t *r, int sndbuf) {
  memset(r, 0, sizeof(*r));
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  if (sndbuf) {
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof(sndbuf));
  }
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  uv_loop_init(&r->loop);
  uv_pipe_init(&r->loop, &r->pipe, 0);
  CHECK(uv_pipe_open(&r->pipe, sv[0]) == 0);
  mg_outq_init(&r->q, on_out, r);
  r->q.stream = (uv_stream_t *)&r->pipe;
  r->peer = sv[1];
}

static void rig_close(rig_t *r) {
  uv_close((uv_handle_t *)&r->pipe, NULL); /* cancels writes in flight (their blocks freed) */
  uv_run(&r->loop, UV_RUN_DEFAULT);
  mg_outq_dispose(&r->q);
  uv_loop_close(&r->loop);
  close(r->peer);
  mg_outq_free_spares();
}

/* Reads what the peer end has now, appending to *buf. */
static void drain_peer(rig_t *r, char **buf, size_t *len) {
  char tmp[65536];
  for (;;) {
    ssize_t n = read(r->peer, tmp, sizeof(tmp));
    if (n <= 0) return;
    *buf = realloc(*buf, *len + (size_t)n);
    memcpy(*buf + *len, tmp, (size_t)n);
    *len += (size_t)n;
  }
}

static char *pattern(size_t n, char seed) {
  char *p = malloc(n);
  for (size_t i = 0; i < n; i++) p[i] = (char)(seed + (char)(i % 61));
  return p;
}

/* A head appended, then a large piece written through: both leave at once, head
 * first, and nothing stays queued. */
static void test_write_through_after_head(void) {
  rig_t r;
  rig_open(&r, 0);
  size_t n = 20000;
  char *piece = pattern(n, 'a');
  CHECK(mg_outq_append(&r.q, "HEAD\r\n\r\n", 8) == 0);
  CHECK(mg_outq_write_through(&r.q, piece, n) == 0);
  CHECK(mg_outq_size(&r.q) == 0);
  char *got = NULL;
  size_t len = 0;
  drain_peer(&r, &got, &len);
  CHECK(len == 8 + n);
  CHECK(len >= 8 && memcmp(got, "HEAD\r\n\r\n", 8) == 0);
  CHECK(len == 8 + n && memcmp(got + 8, piece, n) == 0);
  free(got);
  free(piece);
  rig_close(&r);
}

/* The peer does not read: the kernel takes part of a 1 MiB piece, the rest is
 * queued; a flush and a second piece written through while the first is in
 * flight keep the order. */
static void test_write_through_partial_keeps_order(void) {
  rig_t r;
  rig_open(&r, 16384);
  size_t n = 1 << 20;
  char *a = pattern(n, 'A'), *b = pattern(n, 'k');
  CHECK(mg_outq_write_through(&r.q, a, n) == 0);
  size_t queued = mg_outq_size(&r.q);
  CHECK(queued > 0 && queued < n); /* the kernel took some, not all */
  CHECK(mg_outq_flush(&r.q) == 0);  /* the rest goes to uv_write */
  CHECK(r.q.writes > 0);
  CHECK(mg_outq_write_through(&r.q, b, n) == 0); /* in flight: appended, not written */
  CHECK(r.q.pending == n);
  char *got = NULL;
  size_t len = 0;
  for (int i = 0; i < 100000 && len < 2 * n; i++) {
    drain_peer(&r, &got, &len);
    if (r.q.pending && !r.q.writes) CHECK(mg_outq_flush(&r.q) == 0);
    uv_run(&r.loop, UV_RUN_NOWAIT);
  }
  CHECK(len == 2 * n);
  CHECK(len == 2 * n && memcmp(got, a, n) == 0 && memcmp(got + n, b, n) == 0);
  CHECK(mg_outq_size(&r.q) == 0);
  free(got);
  free(a);
  free(b);
  rig_close(&r);
}

/* Without a stream (the in-memory network) a piece is only appended. */
static void test_write_through_without_stream_appends(void) {
  mg_outq_t q;
  mg_outq_init(&q, NULL, NULL);
  char piece[30000];
  memset(piece, 'z', sizeof(piece));
  CHECK(mg_outq_write_through(&q, piece, sizeof(piece)) == 0);
  CHECK(q.pending == sizeof(piece));
  mg_outq_dispose(&q);
  mg_outq_free_spares();
}

/* mg_outq_drop takes bytes off the front, across blocks, never past what is
 * pending; what is left keeps its order. */
static void test_drop_front(void) {
  mg_outq_t q;
  mg_outq_init(&q, NULL, NULL);
  static char big[20000];
  for (size_t i = 0; i < sizeof(big); i++) big[i] = (char)('a' + i % 26);
  CHECK(mg_outq_append(&q, "HEAD", 4) == 0);
  CHECK(mg_outq_append(&q, big, sizeof(big)) == 0);
  mg_outq_drop(&q, 4);
  CHECK(q.pending == sizeof(big));
  mg_outq_drop(&q, 9000);
  CHECK(q.pending == sizeof(big) - 9000);
  mg_block_t *b = mg_outq_take(&q);
  size_t n = 0;
  int same = 1;
  for (mg_block_t *x = b; x; x = x->next)
    for (size_t i = x->off; i < x->len; i++, n++) same &= x->data[i] == big[9000 + n];
  CHECK(n == sizeof(big) - 9000 && same);
  mg_outq_free_blocks(b);
  CHECK(mg_outq_append(&q, "xy", 2) == 0);
  mg_outq_drop(&q, 100);
  CHECK(q.pending == 0 && q.head == NULL && q.tail == NULL);
  CHECK(mg_outq_append(&q, "z", 1) == 0 && q.pending == 1);
  mg_outq_dispose(&q);
  mg_outq_free_spares();
}

/* mg_outq_append_ref: the owner's release runs once per piece, when its bytes
 * are done with. */
static int released;
static void count_release(void *owner) { released += *(int *)owner; }

/* Pieces referenced between copied ones go out in order, uncopied, through
 * synchronous and uv_write writes; each is released once it is written, not
 * before. */
static void test_ref_pieces_written_in_order(void) {
  rig_t r;
  rig_open(&r, 16384);
  size_t n = 300000;
  char *a = pattern(n, 'A'), *b = pattern(n, 'k');
  int one = 1;
  released = 0;
  CHECK(mg_outq_append(&r.q, "HEAD|", 5) == 0);
  CHECK(mg_outq_append_ref(&r.q, a, n, count_release, &one) == 0);
  CHECK(mg_outq_append(&r.q, "|", 1) == 0); /* after a referenced piece: a block of its own */
  CHECK(mg_outq_append_ref(&r.q, b, n, count_release, &one) == 0);
  CHECK(mg_outq_append_ref(&r.q, b, 0, count_release, &one) == 0); /* nothing: not queued */
  CHECK(mg_outq_append(&r.q, "|END", 4) == 0);
  CHECK(r.q.pending == 2 * n + 10);
  CHECK(mg_outq_flush(&r.q) == 0);
  CHECK(released == 0); /* the kernel took the head, not both pieces */
  char *got = NULL;
  size_t len = 0;
  for (int i = 0; i < 100000 && len < 2 * n + 10; i++) {
    drain_peer(&r, &got, &len);
    if (r.q.pending && !r.q.writes) CHECK(mg_outq_flush(&r.q) == 0);
    uv_run(&r.loop, UV_RUN_NOWAIT);
  }
  CHECK(len == 2 * n + 10);
  CHECK(len == 2 * n + 10 && memcmp(got, "HEAD|", 5) == 0 && memcmp(got + 5, a, n) == 0 &&
        got[5 + n] == '|' && memcmp(got + 6 + n, b, n) == 0 && memcmp(got + 6 + 2 * n, "|END", 4) == 0);
  uv_run(&r.loop, UV_RUN_NOWAIT);
  CHECK(released == 2);
  free(got);
  free(a);
  free(b);
  rig_close(&r);
}

/* Referenced pieces never written are released with the queue (dispose), or by
 * whoever took them (an encoder: mg_outq_take + mg_outq_free_blocks); a dropped
 * front releases the pieces it passes. */
static void test_ref_pieces_released_unwritten(void) {
  mg_outq_t q;
  mg_outq_init(&q, NULL, NULL);
  int one = 1, ten = 10;
  static char piece[16384]; /* the size of a standard block: never kept as a spare */
  memset(piece, 'p', sizeof(piece));
  released = 0;
  CHECK(mg_outq_append_ref(&q, piece, sizeof(piece), count_release, &one) == 0);
  CHECK(mg_outq_append_ref(&q, piece, 100, count_release, &ten) == 0);
  mg_outq_drop(&q, sizeof(piece) + 50);
  CHECK(released == 1 && q.pending == 50);
  mg_block_t *b = mg_outq_take(&q);
  CHECK(b && b->len - b->off == 50 && mg_block_bytes(b) + b->off == piece + 50);
  mg_outq_free_blocks(b);
  CHECK(released == 11);
  CHECK(mg_outq_append(&q, "x", 1) == 0);
  CHECK(mg_outq_append_ref(&q, piece, sizeof(piece), count_release, &ten) == 0);
  mg_outq_dispose(&q);
  CHECK(released == 21);
  /* a spare block after them is a plain one again */
  CHECK(mg_outq_append(&q, piece, sizeof(piece)) == 0);
  CHECK(q.head && q.head->ext == NULL && q.head->release == NULL);
  mg_outq_dispose(&q);
  CHECK(released == 21);
  mg_outq_free_spares();
}

int main(void) {
  static const t_case_t cases[] = {
    { "a head then a piece written through leave together, in order", test_write_through_after_head },
    { "what the kernel does not take is queued, and order holds with writes in flight",
      test_write_through_partial_keeps_order },
    { "without a stream a piece is appended", test_write_through_without_stream_appends },
    { "a drop takes bytes off the front, in order, never past the pending ones", test_drop_front },
    { "referenced pieces go out in order, uncopied, and are released once written", test_ref_pieces_written_in_order },
    { "referenced pieces not written are released by dispose, drop or their taker",
      test_ref_pieces_released_unwritten },
  };
  return t_run("buf", cases, sizeof(cases) / sizeof(cases[0]));
}
