/* Error log (levels, one line per write(2), safe from any thread) and the access
 * log sink (per-worker buffers, written by the worker; see worker.c). */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stdarg.h>

#include "mg.h"

enum { MG_LOG_DEBUG, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };

/* Opens (or reopens) the error log: "-" is stderr. Returns 0 or a negative errno. */
int mg_log_open(const char *path, int level);
void mg_log_close(void);
int mg_log_level_parse(const char *s);
int mg_log_enabled(int level);
/* wid < 0: the main thread. */
void mg_log(int level, int wid, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define MG_ERR(wid, ...) mg_log(MG_LOG_ERROR, (wid), __VA_ARGS__)
#define MG_WARN(wid, ...) mg_log(MG_LOG_WARN, (wid), __VA_ARGS__)
#define MG_INFO(wid, ...) mg_log(MG_LOG_INFO, (wid), __VA_ARGS__)
#ifdef MG_NO_DEBUG_LOG
#define MG_DEBUG(wid, ...) ((void)0)
#else
#define MG_DEBUG(wid, ...) \
  do { if (mg_log_enabled(MG_LOG_DEBUG)) mg_log(MG_LOG_DEBUG, (wid), __VA_ARGS__); } while (0)
#endif

/* Access log file descriptor: -1 when off. Opened by the main thread before the
 * workers start; workers only write(2) whole buffers to it (O_APPEND). */
int mg_access_log_open(const char *path);
int mg_access_log_fd(void);
void mg_access_log_close(void);

/* mkdir of the folder holding `path` if it is missing (one level). */
void mg_make_parent_dir(const char *path);

/* Formats the current wall-clock time as ISO 8601 UTC with milliseconds. */
void mg_time_iso(char *out, size_t size);

#endif
