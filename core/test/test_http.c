/* core/http.c: head storage across split reads, limits, header classification. */
#include "../arena.h"
#include "../http.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

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

/* Found by fuzz_response: an upstream's "HTTP/1.1 200 \r\n:\r\n\r\n" (an empty reason
 * phrase, then a header with an empty name and value, which llhttp takes) appends
 * only empty pieces, so a fresh head has no buffer when it is finished. Its slices
 * must still point somewhere (NULL + 0 is undefined behaviour, and so is memcmp on
 * a NULL slice), for proxy.c to refuse the empty name as it does any other. */
static void finishes_a_head_of_empty_pieces(void) {
  mg_head_t h;
  mg_head_init(&h);
  CHECK(mg_head_append(&h, MG_HEAD_URL, "", 0, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_FIELD, "", 0, 1000, 10) == 0);
  CHECK(mg_head_append(&h, MG_HEAD_VALUE, "", 0, 1000, 10) == 0);
  CHECK(mg_head_finish(&h) == 0);
  CHECK(h.n == 1);
  CHECK(h.headers[0].name.p != NULL && h.headers[0].name.len == 0);
  CHECK(h.headers[0].value.p != NULL && h.headers[0].value.len == 0);
  CHECK(!mg_http_is_token(h.headers[0].name));
  mg_str_t url = mg_head_url(&h);
  CHECK(url.p != NULL && url.len == 0);
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

/* A NUL, CR or LF at every place of values of 0 to 40 bytes (the check goes 8
 * bytes at a time, then one by one) is found; the bytes next to them, 0x01,
 * 0x0b, 0x0c, tab and 0x7f..0xff, are not refused. */
static void finds_a_bad_byte_anywhere_in_a_value(void) {
  char buf[41];
  for (size_t len = 0; len <= 40; len++) {
    memset(buf, 'a', sizeof buf);
    CHECK(!mg_http_bad_value((mg_str_t){ buf, len }));
    const unsigned char fine[] = { 0x01, 0x0b, 0x0c, '\t', 0x7f, 0x80, 0xff };
    for (size_t k = 0; k < sizeof fine; k++) {
      memset(buf, fine[k], len);
      CHECK(!mg_http_bad_value((mg_str_t){ buf, len }));
    }
    for (size_t at = 0; at < len; at++) {
      const char bad[] = { '\0', '\r', '\n' };
      for (size_t k = 0; k < 3; k++) {
        memset(buf, 0x01, sizeof buf); /* next to the borrow the 8-byte test can see */
        buf[at] = bad[k];
        CHECK(mg_http_bad_value((mg_str_t){ buf, len }));
        buf[at] = 'a';
      }
    }
  }
}

/* Setting a field replaces every field of that name (any case) and keeps the
 * others in order; deleting one that is not there changes nothing. */
static void sets_and_deletes_fields_in_order(void) {
  mg_arena_t a;
  mg_arena_init(&a);
  mg_head_t h = { 0 };
  CHECK(mg_head_set(&h, &a, MG_STR("A"), MG_STR("1"), 1) == 0);
  CHECK(mg_head_set(&h, &a, MG_STR("b"), MG_STR("2"), 1) == 0);
  CHECK(mg_head_set(&h, &a, MG_STR("B"), MG_STR("3"), 1) == 0);
  CHECK(mg_head_set(&h, &a, MG_STR("c"), MG_STR("4"), 1) == 0);
  CHECK(mg_head_set(&h, &a, MG_STR("x"), MG_STR(""), 2) == 0);
  CHECK(h.n == 4);
  CHECK(mg_head_set(&h, &a, MG_STR("b"), MG_STR("5"), 0) == 0);
  CHECK(h.n == 3);
  CHECK(mg_str_eq(h.headers[0].name, MG_STR("A")) && mg_str_eq(h.headers[1].name, MG_STR("c")));
  CHECK(mg_str_eq(h.headers[2].name, MG_STR("b")) && mg_str_eq(h.headers[2].value, MG_STR("5")));
  CHECK(mg_head_set(&h, &a, MG_STR("a"), MG_STR(""), 2) == 0);
  CHECK(h.n == 2 && mg_str_eq(h.headers[0].name, MG_STR("c")));
  free(h.headers);
  mg_arena_dispose(&a);
}

/* Feeds `wire` to a fresh scanner one byte at a time (every split a read can
 * make), then in one piece; both must agree. Returns the result and, from the
 * byte-wise run, the head's length (bytes up to its last LF) when it ended. */
static int scan(const char *wire, size_t *head_len) {
  size_t n = strlen(wire), total = 0;
  mg_head_scan_t s;
  mg_head_scan_reset(&s);
  int bytewise = MG_SCAN_MORE;
  for (size_t i = 0; i < n && bytewise == MG_SCAN_MORE; i++) {
    bytewise = mg_head_scan(&s, wire + i, 1);
    total = i + 1;
  }
  mg_head_scan_reset(&s);
  int whole = mg_head_scan(&s, wire, n);
  CHECK(whole == bytewise);
  *head_len = total;
  return whole;
}

static void scans_head_line_endings(void) {
  size_t len;
  CHECK(scan("GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\n\n", &len) == MG_SCAN_END && len == 27);
  CHECK(scan("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", &len) == MG_SCAN_END && len == 31);
  CHECK(scan("GET / HTTP/1.1\r\nHost: x\r\n", &len) == MG_SCAN_MORE);
  CHECK(scan("GET / HTTP/1.1\nHost: x\r\n\r\n", &len) == MG_SCAN_BARE_LF);
  CHECK(scan("GET / HTTP/1.1\r\nHost: x\r\n\n", &len) == MG_SCAN_BARE_LF);
  CHECK(scan("GET / HTTP/1.1\r\nHost: x\rX: 1\r\n\r\n", &len) == MG_SCAN_BARE_CR);
  CHECK(scan("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", &len) == MG_SCAN_FOLD);
  CHECK(scan("GET / HTTP/1.1\r\n\tHost: x\r\n\r\n", &len) == MG_SCAN_FOLD);
  CHECK(scan("HTTP/1.1 200 OK\nContent-Length: 2\n\nok", &len) == MG_SCAN_BARE_LF);
  /* once the head ended, the body is not looked at */
  mg_head_scan_t s;
  mg_head_scan_reset(&s);
  CHECK(mg_head_scan(&s, "A\r\n\r\n", 5) == MG_SCAN_END);
  CHECK(mg_head_scan(&s, "\n\r x", 4) == MG_SCAN_END);
}

static void splits_comma_lists(void) {
  mg_str_t list = MG_STR(" , keep-alive ,X-A,\t,x-b  ,"), tok;
  size_t pos = 0;
  CHECK(mg_http_next_token(list, &pos, &tok) && mg_str_eq(tok, MG_STR("keep-alive")));
  CHECK(mg_http_next_token(list, &pos, &tok) && mg_str_eq(tok, MG_STR("X-A")));
  CHECK(mg_http_next_token(list, &pos, &tok) && mg_str_eq(tok, MG_STR("x-b")));
  CHECK(!mg_http_next_token(list, &pos, &tok));
  CHECK(mg_http_token_in_list(list, MG_STR("x-a")));
  CHECK(!mg_http_token_in_list(list, MG_STR("x")));
}

int main(void) {
  static const t_case_t cases[] = {
    T(appends_split_pieces_into_one_header), T(finishes_a_head_of_empty_pieces),
    T(enforces_byte_and_count_limits),
    T(grows_past_the_first_allocation), T(classifies_hop_by_hop_headers),
    T(validates_tokens_and_values), T(scans_head_line_endings), T(splits_comma_lists),
    T(finds_a_bad_byte_anywhere_in_a_value), T(sets_and_deletes_fields_in_order),
  };
  return t_run("http", cases, sizeof(cases) / sizeof(cases[0]));
}
