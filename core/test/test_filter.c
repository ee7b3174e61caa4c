/* Filter chains (filter.h) on their own: order, dropping out at the head, ends,
 * failures, and no copy on the way when no filter runs. */
#include "filter.h"
#include "test.h"

static char out[256];
static const char *last_p;
static int ends;

static int sink(void *ctx, const char *p, size_t n) {
  (void)ctx;
  last_p = p;
  strncat(out, p, n);
  return 0;
}
static int sink_end(void *ctx) {
  (void)ctx;
  ends++;
  strcat(out, "|end");
  return 0;
}

/* upper: makes upper case (into its own buffer); tag: adds its ctx before every
 * piece and at the end; quiet: drops out at the head; fail: refuses bodies. */
static int upper(mg_filter_t *f, const char *p, size_t n) {
  char b[64];
  for (size_t i = 0; i < n && i < sizeof(b); i++) b[i] = (char)(p[i] >= 'a' && p[i] <= 'z' ? p[i] - 32 : p[i]);
  return mg_filter_pass(f, b, n);
}
static int tag(mg_filter_t *f, const char *p, size_t n) {
  const char *t = f->ctx;
  if (mg_filter_pass(f, t, strlen(t)) < 0) return -1;
  return mg_filter_pass(f, p, n);
}
static int tag_end(mg_filter_t *f) {
  const char *t = f->ctx;
  mg_filter_pass(f, t, strlen(t));
  return mg_filter_pass_end(f);
}
static int quiet_head(mg_filter_t *f) {
  (void)f;
  return 1;
}
static int fail(mg_filter_t *f, const char *p, size_t n) {
  (void)f;
  (void)p;
  (void)n;
  return -1;
}
static const mg_filter_ops_t UPPER = { .name = "upper", .body = upper, .changes_length = 0 };
static const mg_filter_ops_t TAG = { .name = "tag", .body = tag, .end = tag_end, .changes_length = 1 };
static const mg_filter_ops_t QUIET = { .name = "quiet", .head = quiet_head, .body = fail, .changes_length = 1 };
static const mg_filter_ops_t FAIL = { .name = "fail", .body = fail };

static void reset(void) {
  out[0] = 0;
  last_p = NULL;
  ends = 0;
}

static void no_filter_no_copy(void) {
  reset();
  mg_fchain_t c;
  mg_fchain_init(&c, sink, sink_end, NULL);
  const char *body = "hello";
  CHECK(mg_fchain_head(&c) == 0);
  CHECK(mg_fchain_body(&c, body, 5) == 0);
  CHECK(last_p == body); /* the very bytes given, not a copy */
  CHECK(mg_fchain_body(&c, body, 0) == 0 && last_p == body); /* empty pieces are not passed on */
  CHECK(mg_fchain_end(&c) == 0);
  CHECK(strcmp(out, "hello|end") == 0 && ends == 1);
  CHECK(!mg_fchain_changes_length(&c));
}

static void filters_run_in_order(void) {
  reset();
  mg_fchain_t c;
  mg_fchain_init(&c, sink, sink_end, NULL);
  mg_filter_t a = { .ops = &UPPER }, b = { .ops = &TAG, .ctx = "<t>" }, q = { .ops = &QUIET };
  mg_fchain_add(&c, &a);
  mg_fchain_add(&c, &q);
  mg_fchain_add(&c, &b);
  CHECK(mg_fchain_changes_length(&c));
  CHECK(mg_fchain_head(&c) == 0); /* quiet leaves */
  CHECK(c.first == &a && a.next == &b && b.next == NULL);
  CHECK(mg_fchain_body(&c, "ab", 2) == 0);
  CHECK(mg_fchain_body(&c, "c", 1) == 0);
  CHECK(mg_fchain_end(&c) == 0);
  CHECK(strcmp(out, "<t>AB<t>C<t>|end") == 0 && ends == 1);
}

static void a_failure_stops_the_piece(void) {
  reset();
  mg_fchain_t c;
  mg_fchain_init(&c, sink, sink_end, NULL);
  mg_filter_t a = { .ops = &TAG, .ctx = "x" }, b = { .ops = &FAIL };
  mg_fchain_add(&c, &a);
  mg_fchain_add(&c, &b);
  CHECK(mg_fchain_body(&c, "data", 4) < 0);
  CHECK(out[0] == 0); /* nothing reached the sink */
}

int main(void) {
  static const t_case_t cases[] = {
    { "no_filter_no_copy", no_filter_no_copy },
    { "filters_run_in_order", filters_run_in_order },
    { "a_failure_stops_the_piece", a_failure_stops_the_piece },
  };
  return t_run("filter", cases, sizeof(cases) / sizeof(cases[0]));
}
