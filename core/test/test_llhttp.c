/* The llhttp library as vendor/ builds it: strict framing (LLHTTP_STRICT_MODE).
 * A lenient build lets a front end before moongate and moongate split one stream
 * into different messages; each case here passes a lenient build and must fail
 * ours. */
#include <llhttp.h>

#include "test.h"

static int messages;
static int count_message(llhttp_t *p) {
  (void)p;
  messages++;
  return 0;
}

/* Parses `wire` as one stream of `type` messages: the llhttp error (HPE_OK when
 * everything parsed), and the number of complete messages in `*n`. */
static llhttp_errno_t parse(llhttp_type_t type, const char *wire, int *n) {
  llhttp_settings_t s;
  llhttp_settings_init(&s);
  s.on_message_complete = count_message;
  llhttp_t p;
  llhttp_init(&p, type, &s);
  messages = 0;
  llhttp_errno_t err = llhttp_execute(&p, wire, strlen(wire));
  *n = messages;
  return err;
}

static void accepts_well_formed_messages(void) {
  int n;
  CHECK(parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabc\r\n0\r\n\r\n", &n) == HPE_OK && n == 1);
  CHECK(parse(HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &n) == HPE_OK && n == 1);
}

static void chunk_data_must_end_in_crlf(void) {
  int n;
  /* lenient: any two bytes after the chunk data are taken as its CRLF */
  CHECK(parse(HTTP_REQUEST, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabcXX0\r\n\r\n", &n) != HPE_OK);
  CHECK(parse(HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "3\r\nabcXX0\r\n\r\n", &n) != HPE_OK);
}

static void a_cr_must_be_followed_by_lf(void) {
  int n;
  CHECK(parse(HTTP_REQUEST, "GET / HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", &n) != HPE_OK);
  CHECK(parse(HTTP_REQUEST, "GET / HTTP/1.1\rHost: x\r\n\r\n", &n) != HPE_OK);
  CHECK(parse(HTTP_RESPONSE, "HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\nContent-Length: 0\r\n\r\n", &n) !=
        HPE_OK);
}

static void a_bare_lf_does_not_end_the_head(void) {
  int n;
  CHECK(parse(HTTP_REQUEST, "GET / HTTP/1.1\nHost: x\n\n", &n) != HPE_OK || n == 0);
  CHECK(parse(HTTP_RESPONSE, "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", &n) != HPE_OK || n == 0);
}

int main(void) {
  static const t_case_t cases[] = {
    T(accepts_well_formed_messages), T(chunk_data_must_end_in_crlf),
    T(a_cr_must_be_followed_by_lf), T(a_bare_lf_does_not_end_the_head),
  };
  return t_run("llhttp", cases, sizeof(cases) / sizeof(cases[0]));
}
