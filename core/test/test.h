/* A minimal test harness: each TEST is a function; CHECK survives NDEBUG and
 * records a failure without stopping the other tests. main() prints the summary
 * line scripts/test counts: "c-tests: N passed, N failed". */
#ifndef MG_TEST_H
#define MG_TEST_H

#include <stdio.h>
#include <string.h>

static int t_failed_checks;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      t_failed_checks++;                                                     \
    }                                                                        \
  } while (0)

typedef struct {
  const char *name;
  void (*fn)(void);
} t_case_t;

static inline int t_run(const char *suite, const t_case_t *cases, size_t n) {
  int passed = 0, failed = 0;
  for (size_t i = 0; i < n; i++) {
    int before = t_failed_checks;
    cases[i].fn();
    if (t_failed_checks == before) {
      passed++;
      printf("ok   %s: %s\n", suite, cases[i].name);
    } else {
      failed++;
      printf("FAIL %s: %s\n", suite, cases[i].name);
    }
  }
  printf("c-tests: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

#define T(fn) { #fn, fn }

#endif
