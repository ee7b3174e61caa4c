#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Process-wide: both logs are set up by the main thread before workers start and
 * only read afterwards; writes are single write(2) calls on O_APPEND descriptors,
 * so lines from different threads never interleave. */
static int err_fd = 2;
static int err_level = MG_LOG_INFO;
static int access_fd = -1;

static const char *level_names[] = { "debug", "info", "warn", "error" };

int mg_log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, level_names[i]) == 0) return i;
  return -1;
}

/* Creates the file's folder when missing (one level: "logs/" next to proxy.lua). */
void mg_make_parent_dir(const char *path) {
  char dir[4096];
  snprintf(dir, sizeof(dir), "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir) return;
  *slash = '\0';
  mkdir(dir, 0755);
}

static int open_path(const char *path) {
  if (strcmp(path, "-") == 0) return 2;
  mg_make_parent_dir(path);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  return fd < 0 ? -errno : fd;
}

int mg_log_open(const char *path, int level) {
  int fd = open_path(path);
  if (fd < 0) return fd;
  if (err_fd > 2) close(err_fd);
  err_fd = fd;
  err_level = level;
  return 0;
}

void mg_log_close(void) {
  if (err_fd > 2) close(err_fd);
  err_fd = 2;
}

int mg_log_enabled(int level) { return level >= err_level; }

void mg_time_iso(char *out, size_t size) {
  if (size == 0) return;
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  /* strftime for the fields, not snprintf("%02d", tm.tm_*): the compiler cannot bound
   * int fields, so GCC 12 warned (-Wformat-truncation) that a 32-byte buffer might
   * truncate. 0 means it did not fit: an empty stamp rather than a partial one. */
  size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
  if (n == 0) {
    out[0] = '\0';
    return;
  }
  unsigned ms = (unsigned)(tv.tv_usec / 1000) % 1000u;
  snprintf(out + n, size - n, ".%03uZ", ms);
}

void mg_log(int level, int wid, const char *fmt, ...) {
  if (level < err_level) return;
  char line[2048];
  char ts[32];
  mg_time_iso(ts, sizeof(ts));
  int n;
  if (wid >= 0) n = snprintf(line, sizeof(line), "%s [%s] w%d ", ts, level_names[level], wid);
  else n = snprintf(line, sizeof(line), "%s [%s] main ", ts, level_names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof(line) - 2) len = sizeof(line) - 2;
  line[len++] = '\n';
  ssize_t w = write(err_fd, line, len);
  (void)w;
}

int mg_access_log_open(const char *path) {
  if (!path) {
    mg_access_log_close();
    return 0;
  }
  int fd = open_path(path);
  if (fd < 0) return fd;
  mg_access_log_close();
  access_fd = fd;
  return 0;
}

int mg_access_log_fd(void) { return access_fd; }

void mg_access_log_close(void) {
  if (access_fd > 2) close(access_fd);
  access_fd = -1;
}
