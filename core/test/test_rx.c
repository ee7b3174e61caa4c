/* core/rx.c: PCRE2 patterns compiled once, matched with their groups. */
#include <stdint.h>
#include <stdlib.h>

#include "../rx.h"
#include "test.h"

static mg_rx_t *rx(const char *pat) {
  char err[128];
  size_t off;
  return mg_rx_new(pat, strlen(pat), 0, err, sizeof err, &off);
}

static void t_groups_and_offsets(void) {
  mg_rx_t *r = rx("^/v1/(\\w+)(/x)?/(.*)$");
  CHECK(r != NULL);
  CHECK(mg_rx_groups(r) == 3);
  size_t ov[8];
  const char *s = "/v1/users/7/edit";
  CHECK(mg_rx_match(r, s, strlen(s), ov, 4) == 4);
  CHECK(ov[0] == 0 && ov[1] == strlen(s));
  CHECK(ov[2] == 4 && ov[3] == 9);             /* users */
  CHECK(ov[4] == SIZE_MAX && ov[5] == SIZE_MAX); /* (/x)? unset */
  CHECK(ov[6] == 10 && ov[7] == strlen(s));    /* 7/edit */
  CHECK(mg_rx_match(r, "/v2/a/b", 7, ov, 4) == 0);
  /* fewer pairs than groups: only those are written */
  size_t two[2] = { 99, 99 };
  CHECK(mg_rx_match(r, s, strlen(s), two, 1) == 4);
  CHECK(two[0] == 0 && two[1] == strlen(s));
  mg_rx_free(r);
}

static void t_errors_name_offset(void) {
  char err[128];
  size_t off = 77;
  CHECK(mg_rx_new("^/v1/(.*$", 9, 0, err, sizeof err, &off) == NULL);
  CHECK(off == 9);
  CHECK(strstr(err, "missing closing parenthesis") != NULL);
  CHECK(mg_rx_new("a{2,1}", 6, 0, err, 8, &off) == NULL);
  CHECK(strlen(err) == 7); /* cut to the buffer */
}

static void t_binary_and_caseless(void) {
  char err[64];
  size_t off, ov[2];
  mg_rx_t *r = mg_rx_new("a\0b", 3, MG_RX_CASELESS, err, sizeof err, &off);
  CHECK(r != NULL);
  CHECK(mg_rx_match(r, "xA\0B", 4, ov, 1) == 1);
  CHECK(ov[0] == 1 && ov[1] == 4);
  CHECK(mg_rx_match(r, "ab", 2, ov, 1) == 0);
  mg_rx_free(r);
  mg_rx_free(NULL);
}

int main(void) {
  static const t_case_t cases[] = {
    { "groups and offsets, unset groups", t_groups_and_offsets },
    { "errors: PCRE2's message and offset", t_errors_name_offset },
    { "NUL bytes in pattern and subject, caseless", t_binary_and_caseless },
  };
  return t_run("rx", cases, sizeof cases / sizeof cases[0]);
}
