/* The access log's per-worker buffer: lines are appended as requests end and
 * written to the access log file in one write per loop iteration (or when the
 * buffer fills), so a burst of requests costs one syscall. */
#ifndef MG_ALOG_H
#define MG_ALOG_H

#include "mg.h"

typedef struct {
  char *buf;
  size_t len, cap;
} mg_alog_t;

/* 0, or MG_ENOMEM. */
int mg_alog_init(mg_alog_t *a);
void mg_alog_free(mg_alog_t *a);
/* Appends one line (with its newline); a line that does not fit flushes first. */
void mg_alog_append(mg_alog_t *a, const char *line, size_t len);
/* Writes what is buffered to the access log file (log.h), if one is open. */
void mg_alog_flush(mg_alog_t *a);

#endif
