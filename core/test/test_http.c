/* core/http.c: head storage across split reads, limits, header classification. */
#include "../http.h"
#include "test.h"

static void appends_split_pieces_into_one_header(void) {
  mg_head_t h;
  mg_head_init(&h);
  CHECK(mg_head_append(&h, MG_HEAD_URL, "/a", 2, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_URL, "?b=1", 4, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "Ho", 2, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "st", 2, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "exa", 3, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "mple  ", 6, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "X-A", 3, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "1", 1, 1000, 10) == 0);
  CHECK(mg_head_finish(&h) == 0);
  CHECK(h.n == 2);
  CHECK(mg_str_eq(mg_head_url(&h), MG_STR("/a?b=1")));
  CHECK(mg_str_eq(h.headers[0].name, MG_STR("Host")));
  CHECK(mg_str_eq(h.headers[0].value, MG_STR("example"))); /* trailing spaces trimmed */
  const mg_header_t *x = mg_head_get(&h, MG_STR("x-a"));
  CHECK(x && mg_str_eq(x->value, MG_STR("1")));
  CHECK(mg_head_get(&h, MG_STR("x-b")) == NULL);
  mg_head_dispose(&h);
}

static void enforces_byte_and_count_limits(void) {
  mg_head_t h;
  mg_head_init(&h);
  CHECK(mg_head_append(&h, MG_HEAD_URL, "/0123456789", 11, 10, 10) == MG_ELIMIT);
  mg_head_reset(&h);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "A", 1, 100, 2) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "1", 1, 100, 2) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "B", 1, 100, 2) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "1", 1, 100, 2) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "C", 1, 100, 2) == MG_ELIMIT);
  mg_head_dispose(&h);
}

static void grows_past_the_first_allocation(void) {
  mg_head_t h;
  mg_head_init(&h);
  char name[16];
  for (int i = 0; i < 200; i++) {
    int n = snprintf(name, sizeof(name), "H%d", i);
    CHECK(mg_head_append(&h, MG_HEAD_FIELD, name, (size_t)n, 1 << 20, 1000) == 0);
    CHECK(mg_head_append(&h, MG_HEAD_VALUE, "value-value-value", 17, 1 << 20, 1000) == 0);
  }
  CHECK(mg_head_finish(&h) == 0);
  CHECK(h.n == 200);
  CHECK(mg_str_eq(h.headers[199].name, MG_STR("H199")));
  CHECK(mg_str_eq(h.headers[199].value, MG_STR("value-value-value")));
  mg_head_dispose(&h);
}

static void classifies_hop_by_hop_headers(void) {
  CHECK(mg_http_is_hop_by_hop(MG_STR("Connection")));
  CHECK(mg_http_is_hop_by_hop(MG_STR("TRANSFER-ENCODING")));
  CHECK(mg_http_is_hop_by_hop(MG_STR("keep-alive")));
  CHECK(!mg_http_is_hop_by_hop(MG_STR("content-type")));
  CHECK(mg_http_token_in_list(MG_STR("close, X-Foo ,bar"), MG_STR("x-foo")));
  CHECK(mg_http_token_in_list(MG_STR("close, X-Foo ,bar"), MG_STR("BAR")));
  CHECK(!mg_http_token_in_list(MG_STR("close, X-Foo ,bar"), MG_STR("x-fo")));
  CHECK(!mg_http_token_in_list(MG_STR(""), MG_STR("close")));
}

static void validates_tokens_and_values(void) {
  CHECK(mg_http_is_token(MG_STR("X-Custom_1.2")));
  CHECK(!mg_http_is_token(MG_STR("Host ")));
  CHECK(!mg_http_is_token(MG_STR("a:b")));
  CHECK(!mg_http_is_token(MG_STR("")));
  CHECK(mg_http_bad_value((mg_str_t){ "a\0b", 3 }));
  CHECK(mg_http_bad_value(MG_STR("a\rb")));
  CHECK(!mg_http_bad_value(MG_STR("a\tb c")));
  CHECK(strcmp(mg_http_reason(431), "Request Header Fields Too Large") == 0);
  CHECK(strcmp(mg_http_reason(799), "Unknown") == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    T(appends_split_pieces_into_one_header), T(enforces_byte_and_count_limits),
    T(grows_past_the_first_allocation), T(classifies_hop_by_hop_headers),
    T(validates_tokens_and_values),
  };
  return t_run("http", cases, sizeof(cases) / sizeof(cases[0]));
}
