#include "alog.h"

#include <stdlib.h>
#include <unistd.h>

#include "log.h"

#define ALOG_FLUSH (32 * 1024)

int mg_alog_init(mg_alog_t *a) {
  a->len = 0;
  a->cap = ALOG_FLUSH;
  a->buf = malloc(a->cap);
  return a->buf ? 0 : MG_ENOMEM;
}

void mg_alog_free(mg_alog_t *a) {
  free(a->buf);
  a->buf = NULL;
  a->len = a->cap = 0;
}

void mg_alog_flush(mg_alog_t *a) {
  if (!a->len) return;
  int fd = mg_access_log_fd();
  if (fd >= 0) {
    size_t off = 0;
    while (off < a->len) {
      ssize_t n = write(fd, a->buf + off, a->len - off);
      if (n <= 0) break;
      off += (size_t)n;
    }
  }
  a->len = 0;
}

void mg_alog_append(mg_alog_t *a, const char *line, size_t len) {
  if (a->len + len > a->cap) {
    mg_alog_flush(a);
    if (len > a->cap) {
      size_t cap = len > ALOG_FLUSH ? len : ALOG_FLUSH;
      char *b = realloc(a->buf, cap);
      if (!b) return;
      a->buf = b;
      a->cap = cap;
    }
  }
  memcpy(a->buf + a->len, line, len);
  a->len += len;
}
