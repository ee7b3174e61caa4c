/* core/connlimit.c: per-address connection counts shared by every worker. */
#include <uv.h>

#include "../connlimit.h"
#include "test.h"

static void counts_up_to_the_limit_per_address(void) {
  mg_str_t a = MG_STR("192.0.2.1"), b = MG_STR("192.0.2.10");
  CHECK(mg_connlimit_acquire(a, 2) == 1);
  CHECK(mg_connlimit_acquire(a, 2) == 1);
  CHECK(mg_connlimit_acquire(a, 2) == 0); /* the third */
  CHECK(mg_connlimit_acquire(b, 2) == 1); /* another address is apart */
  CHECK(mg_connlimit_count(a) == 2 && mg_connlimit_count(b) == 1);
  mg_connlimit_release(a);
  CHECK(mg_connlimit_acquire(a, 2) == 1); /* room again after a release */
  mg_connlimit_release(a);
  mg_connlimit_release(a);
  mg_connlimit_release(b);
  CHECK(mg_connlimit_count(a) == 0 && mg_connlimit_count(b) == 0);
  CHECK(mg_connlimit_acquire(a, 0) == 0); /* a limit of 0 counts nothing */
  CHECK(mg_connlimit_count(a) == 0);
}

static void keeps_many_addresses_apart(void) {
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < 4000; i++) {
      char s[40];
      int n = snprintf(s, sizeof(s), "2001:db8::%x", i);
      CHECK(mg_connlimit_acquire((mg_str_t){ s, (size_t)n }, 1) == 1);
    }
    for (int i = 0; i < 4000; i++) {
      char s[40];
      int n = snprintf(s, sizeof(s), "2001:db8::%x", i);
      CHECK(mg_connlimit_acquire((mg_str_t){ s, (size_t)n }, 1) == 0);
      CHECK(mg_connlimit_count((mg_str_t){ s, (size_t)n }) == 1);
      mg_connlimit_release((mg_str_t){ s, (size_t)n });
    }
  }
}

/* Workers count from their own threads: the counts stay exact. */
static void thread_body(void *arg) {
  (void)arg;
  mg_str_t a = MG_STR("198.51.100.7");
  for (int i = 0; i < 20000; i++) {
    if (mg_connlimit_acquire(a, 1000000) == 1) mg_connlimit_release(a);
  }
}

static void counts_exactly_across_threads(void) {
  uv_thread_t t[4];
  for (int i = 0; i < 4; i++) uv_thread_create(&t[i], thread_body, NULL);
  for (int i = 0; i < 4; i++) uv_thread_join(&t[i]);
  CHECK(mg_connlimit_count(MG_STR("198.51.100.7")) == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    T(counts_up_to_the_limit_per_address), T(keeps_many_addresses_apart), T(counts_exactly_across_threads),
  };
  return t_run("connlimit", cases, sizeof(cases) / sizeof(cases[0]));
}
