/* moongate: the command line, the main thread (config, listening sockets, signals)
 * and the worker threads' start and stop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "buf.h"
#include "cache.h"
#include "config.h"
#include "dyn.h"
#include "health.h"
#include "log.h"
#include "luavm.h"
#include "shdict.h"
#include "tls.h"
#include "conn.h"
#include "upstream.h"
#include "worker.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: moongate [-c FILE]          run (default ./proxy.lua)\n"
          "       moongate -t [-c FILE]       check the config and exit\n"
          "       moongate -T [-c FILE]       check the config, print every route with its policies and hooks\n"
          "                                   (also --explain-config), and exit\n"
          "       moongate -s stop [-c FILE]  stop the running instance (pid file)\n"
          "       moongate -s reload [-c FILE] check the config, then reload the running instance\n"
          "       moongate -v                 print the version\n");
}

/* One listening socket per worker per address, all in one SO_REUSEPORT group: the
 * kernel spreads new connections across the workers. Made here so that a bind
 * error stops the start before any worker runs. */
static int listen_socket(const mg_listen_cfg_t *l, char *err, size_t errlen) {
  int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) goto fail;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) goto fail;
  if (l->addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  /* accepted sockets inherit TCP_NODELAY from the listener on Linux: no
   * setsockopt per connection */
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (l->deferred && mg_listen_defer(fd, 1) < 0)
    MG_WARN(-1, "%s: TCP_DEFER_ACCEPT: %s", l->text, strerror(errno));
  if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) < 0) goto fail;
  if (listen(fd, 511) < 0) goto fail;
  return fd;
fail:
  snprintf(err, errlen, "cannot listen on %s: %s", l->text, strerror(errno));
  if (fd >= 0) close(fd);
  return -1;
}

static int read_pid(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  int pid = -1;
  if (fscanf(f, "%d", &pid) != 1) pid = -1;
  fclose(f);
  return pid;
}

static int write_pid(const char *path) {
  char tmp[4200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  mg_make_parent_dir(path);
  FILE *f = fopen(tmp, "w");
  if (!f) return -errno;
  fprintf(f, "%d\n", (int)getpid());
  if (fclose(f) != 0 || rename(tmp, path) != 0) return -errno;
  return 0;
}

/* The main thread's state while running. */
typedef struct {
  uv_loop_t *loop;
  uv_signal_t sig_term, sig_quit, sig_int, sig_hup;
  uv_async_t exited; /* a worker finished */
  mg_worker_t *workers;
  int nworkers;
  atomic_int nexited;
  mg_gen_t *gen;
  int stopping;
  uv_fs_poll_t *polls; /* watch = true: one per file of gen->files */
  int npolls;
  mg_health_t *health; /* the active checks of gen's upstreams (NULL: none) */
} mg_main_t;

static mg_main_t M;

static int open_shared(const mg_gen_t *g) {
  for (int i = 0; i < g->nshared; i++)
    if (!mg_shdict_open(g->shared[i], g->shared_size[i])) {
      MG_ERR(-1, "cannot create shared dictionary %s", g->shared[i]);
      return -1;
    }
  /* the cache's store: made once, kept across reloads (core/cache.h) */
  char err[512];
  int rc = mg_cache_configure(g->cache_memory, g->cache_max_object, g->cache_path, g->cache_disk_size, err,
                              sizeof(err));
  if (rc < 0) {
    MG_ERR(-1, "cannot create the cache store of %llu bytes: %s", (unsigned long long)g->cache_memory, err);
    return -1;
  }
  if (rc == 1)
    MG_WARN(-1, "cache: 'memory', 'max_object', 'path' or 'size' changed: the store keeps its old settings until "
                "a restart");
  return 0;
}

static void watch_files(void);

/* Loads the config again into a scratch state; only if that and every worker's
 * new Lua state succeed do the workers switch. Otherwise the old config keeps
 * serving and the reason is logged. */
static void reload(const char *why) {
  char err[2048];
  mg_gen_t *ng = NULL;
  if (M.stopping) return;
  if (mg_config_load(M.gen->path, &ng, err, sizeof(err)) < 0) {
    MG_ERR(-1, "reload (%s) failed, the old config keeps serving: %s", why, err);
    return;
  }
  mg_dyn_adopt(ng, M.gen); /* unchanged upstreams keep their servers and state */
  if (ng->workers != M.nworkers || strcmp(ng->pid ? ng->pid : "", M.gen->pid ? M.gen->pid : "") != 0)
    MG_WARN(-1, "reload: workers and pid take effect at the next start");
  int n = M.nworkers, ok = open_shared(ng) == 0;
  mg_reload_t **rls = calloc((size_t)n, sizeof(*rls));
  ok = ok && rls;
  for (int w = 0; ok && w < n; w++) {
    mg_reload_t *rl = calloc(1, sizeof(*rl));
    rls[w] = rl;
    if (!rl || !(rl->fds = malloc(sizeof(int) * ((size_t)ng->nlisteners + 1)))) {
      ok = 0;
      break;
    }
    for (int i = 0; i < ng->nlisteners; i++) rl->fds[i] = -1;
    for (int i = 0; ok && i < ng->nlisteners; i++) {
      int kept = 0;
      for (int j = 0; j < M.gen->nlisteners; j++)
        if (strcmp(M.gen->listeners[j].text, ng->listeners[i].text) == 0) kept = 1;
      if (kept) continue;
      rl->fds[i] = listen_socket(&ng->listeners[i], err, sizeof(err));
      if (rl->fds[i] < 0) {
        MG_ERR(-1, "reload failed, the old config keeps serving: %s", err);
        ok = 0;
      }
    }
    if (!ok) break;
    mg_current_worker = &M.workers[w];
    rl->wg = mg_wgen_new(&M.workers[w], ng, err, sizeof(err));
    mg_current_worker = NULL;
    if (!rl->wg) {
      MG_ERR(-1, "reload failed in worker %d, the old config keeps serving: %s", w, err);
      ok = 0;
    }
  }
  if (!ok) {
    for (int w = 0; rls && w < n; w++) {
      mg_reload_t *rl = rls[w];
      if (!rl) continue;
      for (int i = 0; rl->fds && i < ng->nlisteners; i++)
        if (rl->fds[i] >= 0) close(rl->fds[i]);
      if (rl->wg) mg_wgen_unref(rl->wg);
      free(rl->fds);
      free(rl);
    }
    free(rls);
    mg_gen_unref(ng);
    return;
  }
  for (int w = 0; w < n; w++) mg_worker_reload(&M.workers[w], rls[w]);
  free(rls);
  mg_gen_t *old = M.gen;
  mg_dyn_resolve_stop(old);
  M.gen = ng;
  mg_dyn_resolve_start(M.loop, ng);
  /* the old generation's checks stop (they hold it until their handles closed) */
  mg_health_stop(M.health);
  M.health = mg_health_start(M.loop, ng);
  mg_gen_unref(old);
  MG_INFO(-1, "reloaded (%s): %s", why, ng->path);
  watch_files();
}

static void on_file_changed(uv_fs_poll_t *p, int status, const uv_stat_t *prev, const uv_stat_t *curr) {
  reload("a config file changed");
}

/* (Re)starts polling gen->files when watch = true. Polling, not inotify: it
 * sees editors that replace files by renaming, and files on any filesystem. */
static void watch_files(void) {
  for (int i = 0; i < M.npolls; i++) uv_close((uv_handle_t *)&M.polls[i], NULL);
  /* the handles are freed after their close callbacks ran: defer by one loop */
  static uv_fs_poll_t *retired;
  free(retired);
  retired = M.polls;
  M.polls = NULL;
  M.npolls = 0;
  if (!M.gen->watch || M.gen->nfiles == 0) return;
  M.polls = calloc((size_t)M.gen->nfiles, sizeof(uv_fs_poll_t));
  if (!M.polls) return;
  M.npolls = M.gen->nfiles;
  for (int i = 0; i < M.npolls; i++) {
    uv_fs_poll_init(M.loop, &M.polls[i]);
    uv_fs_poll_start(&M.polls[i], on_file_changed, M.gen->files[i], 500);
  }
}

/* A hook that never returns blocks its worker (LuaJIT cannot interrupt compiled
 * code safely): say so loudly, every few seconds, naming the worker and hook. */
static void on_watchdog(uv_timer_t *t) {
  static const char *names[MG_HOOK_MAX] = { MG_HOOK_NAMES };
  uint64_t now = uv_hrtime() / 1000000; /* the same clock as the workers' uv_now, in ms */
  for (int i = 0; i < M.nworkers; i++) {
    uint64_t since = atomic_load(&M.workers[i].hook_since);
    int hook = atomic_load(&M.workers[i].hook_hook);
    if (since && now > since && now - since > 5000 && hook >= 0 && hook <= MG_HOOK_MAX)
      MG_ERR(-1, "worker %d has been stuck in a %s hook for %.0fs: its connections stall "
             "until it returns (restart moongate to recover)", i, hook < MG_HOOK_MAX ? names[hook] : "timer",
             (double)(now - since) / 1e3);
  }
}

static void on_signal(uv_signal_t *s, int signum) {
  switch (signum) {
  case SIGINT:
    MG_INFO(-1, "SIGINT: exiting now");
    if (M.gen->pid) unlink(M.gen->pid);
    _exit(0);
  case SIGTERM:
  case SIGQUIT:
    if (M.stopping) return;
    M.stopping = 1;
    MG_INFO(-1, "%s: draining (up to %.1fs)", signum == SIGTERM ? "SIGTERM" : "SIGQUIT",
            (double)M.gen->timeouts.drain / 1000.0);
    for (int i = 0; i < M.nworkers; i++) mg_worker_command(&M.workers[i], MG_CMD_DRAIN);
    break;
  case SIGHUP:
    reload("SIGHUP");
    break;
  }
}

static void on_exited(uv_async_t *a) {
  if (atomic_load(&M.nexited) == M.nworkers) uv_stop(M.loop);
}

/* Worker threads report their end through this (handed to mg_worker_make). */
static void worker_exited(void) {
  atomic_fetch_add(&M.nexited, 1);
  uv_async_send(&M.exited);
}

static int run(mg_gen_t *g) {
  char err[512];
  if (open_shared(g) < 0) return 1;
  int n = g->workers;
  int *fds = calloc((size_t)n * (size_t)g->nlisteners + 1, sizeof(int));
  if (!fds) return 1;
  for (int w = 0; w < n; w++)
    for (int i = 0; i < g->nlisteners; i++) {
      int fd = listen_socket(&g->listeners[i], err, sizeof(err));
      if (fd < 0) {
        MG_ERR(-1, "%s", err);
        fprintf(stderr, "moongate: %s\n", err);
        for (int k = 0; k < w * g->nlisteners + i; k++) close(fds[k]);
        free(fds);
        return 1;
      }
      fds[w * g->nlisteners + i] = fd;
    }
  M.loop = uv_default_loop();
  M.gen = g;
  M.nworkers = n;
  atomic_init(&M.nexited, 0);
  uv_async_init(M.loop, &M.exited, on_exited);
  uv_signal_init(M.loop, &M.sig_term);
  uv_signal_start(&M.sig_term, on_signal, SIGTERM);
  uv_signal_init(M.loop, &M.sig_quit);
  uv_signal_start(&M.sig_quit, on_signal, SIGQUIT);
  uv_signal_init(M.loop, &M.sig_int);
  uv_signal_start(&M.sig_int, on_signal, SIGINT);
  uv_signal_init(M.loop, &M.sig_hup);
  uv_signal_start(&M.sig_hup, on_signal, SIGHUP);

  M.workers = calloc((size_t)n, sizeof(mg_worker_t));
  if (!M.workers) return 1;
  /* Every worker's state is loaded and has run init_worker before any worker
   * serves: the sockets already listen, so early clients wait in the backlog
   * instead of meeting a half-started instance. */
  for (int w = 0; w < n; w++) {
    char werr[2048];
    int rc = mg_worker_make(&M.workers[w], w, g, fds + w * g->nlisteners, worker_exited, werr,
                            sizeof(werr));
    if (rc == MG_ECONFIG) {
      MG_ERR(-1, "worker %d: %s", w, werr);
      fprintf(stderr, "moongate: %s\n", werr);
      _exit(1);
    }
    if (rc < 0) {
      MG_ERR(-1, "cannot start worker %d: %s", w, uv_strerror(rc));
      _exit(1);
    }
  }
  for (int w = 0; w < n; w++) {
    int rc = mg_worker_run(&M.workers[w]);
    if (rc < 0) {
      MG_ERR(-1, "cannot start worker %d: %s", w, uv_strerror(rc));
      _exit(1);
    }
  }
  free(fds);
  /* the pid file says "running": written once every worker serves and the
   * signals are handled */
  if (g->pid) {
    int rc = write_pid(g->pid);
    if (rc < 0) MG_WARN(-1, "cannot write pid file %s: %s", g->pid, strerror(-rc));
  }
  char addrs[512] = "";
  for (int i = 0; i < g->nlisteners; i++) {
    size_t l = strlen(addrs);
    snprintf(addrs + l, sizeof(addrs) - l, "%s%s", i ? " " : "", g->listeners[i].text);
  }
  MG_INFO(-1, "moongate %s: %d worker(s), listening on %s", MG_VERSION, n, addrs);
  watch_files();
  mg_dyn_resolve_start(M.loop, g);
  M.health = mg_health_start(M.loop, g);
  uv_timer_t watchdog;
  uv_timer_init(M.loop, &watchdog);
  uv_timer_start(&watchdog, on_watchdog, 5000, 5000);
  uv_unref((uv_handle_t *)&watchdog);

  uv_run(M.loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&watchdog, NULL);
  mg_health_stop(M.health); /* its handles close in the uv_run below */
  M.health = NULL;

  for (int w = 0; w < n; w++) mg_worker_join(&M.workers[w]);
  free(M.workers);
  uv_close((uv_handle_t *)&M.exited, NULL);
  uv_close((uv_handle_t *)&M.sig_term, NULL);
  uv_close((uv_handle_t *)&M.sig_quit, NULL);
  uv_close((uv_handle_t *)&M.sig_int, NULL);
  uv_close((uv_handle_t *)&M.sig_hup, NULL);
  M.gen->watch = 0;
  watch_files();
  mg_dyn_resolve_stop(M.gen);
  uv_run(M.loop, UV_RUN_DEFAULT);
  watch_files(); /* frees the last retired handles */
  mg_outq_free_spares(); /* the health checks' output blocks */
  uv_loop_close(M.loop);
  if (M.gen->pid && read_pid(M.gen->pid) == (int)getpid()) unlink(M.gen->pid);
  MG_INFO(-1, "stopped");
  return 0;
}

int main(int argc, char **argv) {
  const char *path = "proxy.lua";
  const char *signame = NULL;
  int test = 0;
  int opt;
  /* --explain-config is -T (issue 14); no other long options */
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--explain-config") == 0) argv[i] = "-T";
  }
  while ((opt = getopt(argc, argv, "c:tTs:vh")) != -1) {
    switch (opt) {
    case 'c': path = optarg; break;
    case 't': test = 1; break;
    case 'T': test = 2; break;
    case 's': signame = optarg; break;
    case 'v': printf("moongate %s\n", MG_VERSION); return 0;
    case 'h': usage(stdout); return 0;
    default: usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    usage(stderr);
    return 2;
  }
  if (signame && strcmp(signame, "stop") != 0 && strcmp(signame, "reload") != 0) {
    fprintf(stderr, "moongate: -s takes 'stop' or 'reload'\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (mg_tls_global_init() < 0) {
    fprintf(stderr, "moongate: cannot set up TLS\n");
    return 1;
  }
  mg_tls_set_hello(mg_conn_tls_hello);
  mg_tls_set_session(mg_upstream_tls_session);

  char err[1024];
  int rc0;
  mg_gen_t *g = NULL;
  if (mg_config_load(path, &g, err, sizeof(err)) < 0) {
    fprintf(stderr, "moongate: config error: %s\n", err);
    return 1;
  }
  if (test == 2) {
    rc0 = mg_config_explain(g->path, stdout, err, sizeof(err));
    mg_gen_unref(g);
    if (rc0 < 0) {
      fprintf(stderr, "moongate: config error: %s\n", err);
      return 1;
    }
    return 0;
  }
  if (test) {
    printf("moongate: config ok: %s\n", g->path);
    mg_gen_unref(g);
    return 0;
  }
  if (signame) {
    int pid = g->pid ? read_pid(g->pid) : -1;
    int rc = 0;
    if (pid <= 0) {
      fprintf(stderr, "moongate: no pid in %s: is moongate running?\n", g->pid ? g->pid : "(no pid file)");
      rc = 1;
    } else if (kill(pid, strcmp(signame, "stop") == 0 ? SIGTERM : SIGHUP) < 0) {
      fprintf(stderr, "moongate: cannot signal pid %d: %s\n", pid, strerror(errno));
      rc = 1;
    }
    mg_gen_unref(g);
    return rc;
  }

  int rc = mg_log_open(g->error_log ? g->error_log : "-", g->log_level);
  if (rc < 0) {
    fprintf(stderr, "moongate: cannot open error log %s: %s\n", g->error_log, strerror(-rc));
    return 1;
  }
  if ((rc = mg_access_log_open(g->access_log)) < 0) {
    fprintf(stderr, "moongate: cannot open access log %s: %s\n", g->access_log, strerror(-rc));
    return 1;
  }
  rc = run(g);
  mg_cache_shutdown(); /* before the log closes: its disk threads may still log */
  mg_access_log_close();
  mg_log_close();
  mg_gen_unref(M.gen ? M.gen : g);
  mg_shdict_close_all();
  return rc;
}
