/* core/config.c: loading proxy.lua into a generation, and the C route matcher
 * (which must agree with lua/moongate/router.lua). */
#include <llhttp.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "../config.h"
#include "test.h"

static mg_gen_t *load(const char *text, char *err, size_t errlen) {
  char dir[] = "/tmp/mgtest.XXXXXX";
  if (!mkdtemp(dir)) return NULL;
  char path[128];
  snprintf(path, sizeof(path), "%s/proxy.lua", dir);
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  mg_gen_t *g = NULL;
  mg_config_load(path, &g, err, errlen);
  unlink(path);
  rmdir(dir);
  return g;
}

static const char *name_of(const mg_gen_t *g, const mg_route_t *r) {
  if (!r) return "none";
  return r->upstream >= 0 ? g->upstreams[r->upstream].name : "respond";
}

static void loads_defaults_and_paths(void) {
  char err[512] = "";
  mg_gen_t *g = load("local mg = require 'moongate'\n"
                     "mg.config { workers = 3, access_log = false, timeouts = { keepalive = 1.5 } }\n"
                     "mg.listen { '127.0.0.1:18080', name = 'front' }\n"
                     "mg.upstream 'a' { servers = { '127.0.0.1:9001', '127.0.0.1:9002 weight=3' } }\n"
                     "mg.route { path = '/', upstream = 'a' }\n",
                     err, sizeof(err));
  CHECK(g != NULL);
  if (!g) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK(g->workers == 3);
  CHECK(g->access_log == NULL);
  CHECK(g->timeouts.keepalive == 1500);
  CHECK(g->timeouts.client_header == 10000);
  CHECK(g->limits.body_size == 1048576);
  CHECK(g->timeouts.request == 60000 && g->timeouts.upstream_paused == 60000);
  CHECK(g->limits.body_rate == 1024 && g->limits.connections_per_ip == 0);
  /* connections = "auto": what RLIMIT_NOFILE allows each of the 3 workers */
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_cur == RLIM_INFINITY) CHECK(g->limits.connections == 0);
  else if (rl.rlim_cur > 128 + 6) CHECK(g->limits.connections == (rl.rlim_cur - 128) / 6);
  CHECK(g->nlisteners == 1 && strcmp(g->listeners[0].text, "127.0.0.1:18080") == 0);
  CHECK(g->nupstreams == 1 && mg_upstream_nservers(&g->upstreams[0]) == 2);
  CHECK(mg_upstream_server(&g->upstreams[0], 1)->weight == 3);
  CHECK(strstr(g->pid, "/logs/moongate.pid") != NULL && g->pid[0] == '/');
  mg_gen_unref(g);
}

static void reports_unknown_keys_with_line(void) {
  char err[512] = "";
  mg_gen_t *g = load("local mg = require 'moongate'\n"
                     "mg.listen { '127.0.0.1:18080' }\n"
                     "mg.config { wokers = 2 }\n",
                     err, sizeof(err));
  CHECK(g == NULL);
  CHECK(strstr(err, "proxy.lua:3:") != NULL);
  CHECK(strstr(err, "wokers") != NULL);
}

static void matches_the_most_specific_route(void) {
  char err[512] = "";
  mg_gen_t *g = load("local mg = require 'moongate'\n"
                     "mg.listen { '127.0.0.1:18080', name = 'front' }\n"
                     "mg.listen { '127.0.0.1:18081', name = 'admin' }\n"
                     "for _, n in ipairs { 'root', 'v1', 'exact', 'wild', 'post', 'adm' } do\n"
                     "  mg.upstream(n) { servers = { '127.0.0.1:1' } }\n"
                     "end\n"
                     "mg.route { path = '/', upstream = 'root' }\n"
                     "mg.route { path = '/v1/', upstream = 'v1' }\n"
                     "mg.route { host = 'api.example.com', upstream = 'exact' }\n"
                     "mg.route { host = '*.example.com', upstream = 'wild' }\n"
                     "mg.route { path = '/v1/', methods = { 'POST' }, upstream = 'post' }\n"
                     "mg.route { listener = 'admin', upstream = 'adm' }\n",
                     err, sizeof(err));
  CHECK(g != NULL);
  if (!g) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_GET, MG_STR("x.org"), MG_STR("/a"))), "root") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_GET, MG_STR("x.org"), MG_STR("/v1/a"))), "v1") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_POST, MG_STR("x.org"), MG_STR("/v1/a"))), "post") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_GET, MG_STR("API.example.com:8080"), MG_STR("/v1/"))), "exact") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_GET, MG_STR("a.example.com"), MG_STR("/"))), "wild") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "front", HTTP_GET, MG_STR("example.com"), MG_STR("/"))), "root") == 0);
  CHECK(strcmp(name_of(g, mg_route_match(g, "admin", HTTP_GET, MG_STR("api.example.com"), MG_STR("/"))), "adm") == 0);
  mg_gen_unref(g);
}

static void reads_slow_client_settings(void) {
  char err[512] = "";
  mg_gen_t *g = load("local mg = require 'moongate'\n"
                     "mg.config { workers = 2, timeouts = { request = 0, upstream_paused = 2.5 },\n"
                     "  limits = { body_rate = 0, connections = 7, connections_per_ip = 3 } }\n"
                     "mg.listen { '127.0.0.1:18080' }\n",
                     err, sizeof(err));
  CHECK(g != NULL);
  if (!g) {
    fprintf(stderr, "  %s\n", err);
    return;
  }
  CHECK(g->timeouts.request == 0);
  CHECK(g->timeouts.upstream_paused == 2500);
  CHECK(g->limits.body_rate == 0);
  CHECK(g->limits.connections == 7);
  CHECK(g->limits.connections_per_ip == 3);
  mg_gen_unref(g);
}

int main(void) {
  static const t_case_t cases[] = {
    T(loads_defaults_and_paths), T(reports_unknown_keys_with_line), T(matches_the_most_specific_route),
    T(reads_slow_client_settings),
  };
  return t_run("config", cases, sizeof(cases) / sizeof(cases[0]));
}
