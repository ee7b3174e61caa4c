/* core/uri.c: path normalization for routing and Host checks. */
#include <stdlib.h>

#include "../uri.h"
#include "test.h"

/* want == NULL: MG_EINVAL expected */
typedef struct {
  const char *in;
  const char *want;
} path_case_t;

/* Normalizes `in` (length n) into an exact-size heap buffer, so ASan sees any write
 * past `len` bytes, and compares with `want`. Prints the case when it differs. */
static int path_is(const char *in, size_t n, const char *want) {
  char *out = malloc(n ? n : 1);
  size_t olen = 12345;
  int rc = mg_uri_normalize_path(in, n, out, &olen);
  int ok = want ? rc == 0 && olen == strlen(want) && memcmp(out, want, olen) == 0 : rc == MG_EINVAL;
  if (!ok)
    fprintf(stderr, "  path %.*s: rc %d, got %.*s, want %s\n", (int)n, in, rc,
            rc == 0 ? (int)olen : 0, out, want ? want : "MG_EINVAL");
  free(out);
  return ok;
}

static void check_path_table(const path_case_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) CHECK(path_is(t[i].in, strlen(t[i].in), t[i].want));
}

static void path_attacks_on_admin_all_reach_admin(void) {
  static const path_case_t t[] = {
    { "/admin", "/admin" },
    { "/%61dmin", "/admin" },
    { "/%61%64%6D%69%6e", "/admin" },
    { "//admin", "/admin" },
    { "///admin//", "/admin/" },
    { "/x/../admin", "/admin" },
    { "/./admin", "/admin" },
    { "/%2e/admin", "/admin" },
    { "/%2E%2E/admin", "/admin" },
    { "/x/%2e%2e/admin", "/admin" },
    { "/x/.%2e/admin", "/admin" },
    { "/x/%2e./admin", "/admin" },
    { "/x/y/../../admin", "/admin" },
    { "/../../../admin", "/admin" },
    { "/x/./../admin", "/admin" },
    { "/x//..//admin", "/admin" },
  };
  check_path_table(t, sizeof(t) / sizeof(t[0]));
}

static void path_dot_segments_follow_rfc3986(void) {
  static const path_case_t t[] = {
    { "/", "/" },
    { "//", "/" },
    { "/.", "/" },
    { "/..", "/" },
    { "/../", "/" },
    { "/./", "/" },
    { "/../a", "/a" },
    { "/a/b/..", "/a/" },
    { "/a/b/.", "/a/b/" },
    { "/a/b/../", "/a/" },
    { "/a/b/../c", "/a/c" },
    { "/a/./b/./c", "/a/b/c" },
    { "/a/b/c/./../../g", "/a/g" },
    { "/a/..", "/" },
    { "/a/../..", "/" },
    { "/a/b/%2E%2E", "/a/" },
    /* not dot segments: names that contain dots */
    { "/...", "/..." },
    { "/a/.../b", "/a/.../b" },
    { "/.a/..b/a./b..", "/.a/..b/a./b.." },
    { "/a/.hidden", "/a/.hidden" },
    /* empty segments merge */
    { "/a//b///c", "/a/b/c" },
    { "/a/b/", "/a/b/" },
    { "/a/b//", "/a/b/" },
  };
  check_path_table(t, sizeof(t) / sizeof(t[0]));
}

static void path_escapes_decode_once_and_only_unreserved(void) {
  static const path_case_t t[] = {
    /* unreserved: decoded, any case */
    { "/%41%5a%61%7A%30%39%2D%2e%5F%7e", "/AZaz09-._~" },
    /* reserved or non-ASCII: kept, hex upper-cased */
    { "/a%3fb", "/a%3Fb" },
    { "/a%3Fb", "/a%3Fb" },
    { "/%20x", "/%20x" },
    { "/%25", "/%25" },
    { "/%c3%a9", "/%C3%A9" },
    { "/%ff", "/%FF" },
    { "/%3b%3D%40%2c", "/%3B%3D%40%2C" },
    /* double encoding is not decoded twice: %25 stays, "2e" after it is plain text */
    { "/%252e", "/%252e" },
    { "/%252E%252e/admin", "/%252E%252e/admin" },
    { "/%252e%252e/admin", "/%252e%252e/admin" },
    { "/%252f", "/%252f" },
    /* raw bytes that a path may hold */
    { "/a-b_c~d.e!$&'()*+,;=:@", "/a-b_c~d.e!$&'()*+,;=:@" },
    { "/\xc3\xa9t\xc3\xa9", "/\xc3\xa9t\xc3\xa9" },
  };
  check_path_table(t, sizeof(t) / sizeof(t[0]));
}

static void path_bad_escapes_and_bytes_are_refused(void) {
  static const path_case_t t[] = {
    { "", NULL },
    { "a", NULL },
    { "admin", NULL },
    { "*", NULL },
    { "%2Fadmin", NULL },
    /* escapes that hide a separator or a control */
    { "/a%2Fb", NULL },
    { "/a%2fb", NULL },
    { "/..%2F..%2Fadmin", NULL },
    { "/a%5Cb", NULL },
    { "/a%5cb", NULL },
    { "/a%00b", NULL },
    { "/a%0d%0aX:y", NULL },
    { "/a%7F", NULL },
    { "/a%7f", NULL },
    /* malformed escapes */
    { "/%", NULL },
    { "/a%", NULL },
    { "/a%4", NULL },
    { "/a%4g", NULL },
    { "/a%g4", NULL },
    { "/a%%41", NULL },
    { "/a%-1", NULL },
    { "/a% 41", NULL },
    /* raw bytes that end or break a path */
    { "/a#b", NULL },
    { "/a?b", NULL },
    { "/a b", NULL },
    { "/a\\..\\admin", NULL },
    { "/\\", NULL },
    { "/a\x7f", NULL },
  };
  check_path_table(t, sizeof(t) / sizeof(t[0]));
}

/* ";params" on a dot or empty segment are resolved as servlet containers do;
 * on a named segment they stay. */
static void path_params_on_dot_segments(void) {
  static const struct { const char *in, *want; } t[] = {
    { "/x/..;/admin", "/admin" },       { "/x/%2e%2e;/admin", "/admin" },
    { "/;x/admin", "/admin" },          { "/x/..;a=b/admin", "/admin" },
    { "/a/.;x/b", "/a/b" },             { "/a/b/..;x", "/a/" },
    { "/app;jsessionid=1/x", "/app;jsessionid=1/x" },
    { "/app/;jsessionid=1", "/app/" },  { "/a/b;c/..;/d", "/a/d" },
  };
  for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) CHECK(path_is(t[i].in, strlen(t[i].in), t[i].want));
}

/* Every byte value, raw and escaped: only the documented ones are refused. */
static void path_every_byte_raw_and_escaped(void) {
  static const char hex[] = "0123456789ABCDEF";
  for (int c = 0; c < 256; c++) {
    char raw[3] = { '/', (char)c, 'x' };
    /* '%' here is a malformed escape ("%x") */
    int bad_raw = c < 0x21 || c == 0x7f || c == '#' || c == '?' || c == '\\' || c == '%';
    if (bad_raw) {
      CHECK(path_is(raw, 3, NULL));
    } else if (c == '/') {
      CHECK(path_is(raw, 3, "/x")); /* "//x": slashes merge */
    } else if (c == ';') {
      CHECK(path_is(raw, 3, "/")); /* "/;x": an empty segment with params */
    } else {
      char w[4] = { '/', (char)c, 'x', '\0' };
      CHECK(path_is(raw, 3, w));
    }

    char esc[5] = { '/', '%', hex[c >> 4], (char)"0123456789abcdef"[c & 15], 'x' };
    int unres = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '.' || c == '_' || c == '~';
    int bad_esc = c < 0x20 || c == 0x7f || c == '/' || c == '\\';
    if (bad_esc) {
      CHECK(path_is(esc, 5, NULL));
    } else if (unres) {
      char w[4] = { '/', (char)c, 'x', '\0' };
      CHECK(path_is(esc, 5, w));
    } else {
      char w[6] = { '/', '%', hex[c >> 4], hex[c & 15], 'x', '\0' };
      CHECK(path_is(esc, 5, w));
    }
  }
}

/* A path that is not NUL-terminated and ends in an escape: nothing past len is read
 * (the heap copy is exactly len bytes). */
static void path_reads_only_len_bytes(void) {
  const char *cases[] = { "/a%", "/a%4", "/a%41", "/..", "/a/" };
  const char *want[] = { NULL, NULL, "/aA", "/", "/a/" };
  for (size_t k = 0; k < 5; k++) {
    size_t n = strlen(cases[k]);
    char *in = malloc(n);
    memcpy(in, cases[k], n);
    CHECK(path_is(in, n, want[k]));
    free(in);
  }
}

static void path_long_inputs(void) {
  enum { N = 100000 };
  char *in = malloc(N);
  /* 50,000 slashes: one */
  memset(in, '/', N);
  CHECK(path_is(in, N, "/"));
  /* "/a/.." 20,000 times then "/z": everything pops back to the root */
  for (size_t i = 0; i < N; i += 5) memcpy(in + i, "/a/..", 5);
  char *in2 = malloc(N + 2);
  memcpy(in2, in, N);
  memcpy(in2 + N, "/z", 2);
  CHECK(path_is(in2, N + 2, "/z"));
  /* 33,333 segments "/%61" decode to "/a" each: the output is shorter */
  size_t n = 0;
  while (n + 4 <= N) {
    memcpy(in + n, "/%61", 4);
    n += 4;
  }
  char *want = malloc(n / 2 + 1);
  for (size_t i = 0; i < n / 4; i++) memcpy(want + 2 * i, "/a", 2);
  want[n / 2] = '\0';
  CHECK(path_is(in, n, want));
  /* 10,000 levels deep, then 10,001 ".." */
  size_t m = 0;
  for (int i = 0; i < 10000; i++) in[m++] = '/', in[m++] = 'd';
  for (int i = 0; i < 10001 && m + 3 <= N; i++) memcpy(in + m, "/..", 3), m += 3;
  CHECK(path_is(in, m, "/"));
  free(want);
  free(in2);
  free(in);
}

static void path_normalizes_in_place(void) {
  char buf[] = "//x/%2e%2e/%61dmin/./%3f";
  size_t olen = 0;
  CHECK(mg_uri_normalize_path(buf, strlen(buf), buf, &olen) == 0);
  CHECK(olen == strlen("/admin/%3F") && memcmp(buf, "/admin/%3F", olen) == 0);
}

static void target_split_and_normalized_with_query(void) {
  mg_str_t p, q;
  mg_uri_split_target(MG_STR("/a/b?x=1?y"), &p, &q);
  CHECK(mg_str_eq(p, MG_STR("/a/b")) && mg_str_eq(q, MG_STR("?x=1?y")));
  mg_uri_split_target(MG_STR("/a"), &p, &q);
  CHECK(mg_str_eq(p, MG_STR("/a")) && q.len == 0);
  mg_uri_split_target(MG_STR("/a?"), &p, &q);
  CHECK(mg_str_eq(p, MG_STR("/a")) && mg_str_eq(q, MG_STR("?")));

  char out[64];
  size_t n = 0;
  const char *t = "//x/../%61dmin?q=%2e%2e/../%2f";
  CHECK(mg_uri_normalize_target(t, strlen(t), out, &n) == 0);
  CHECK(n == strlen("/admin?q=%2e%2e/../%2f") && memcmp(out, "/admin?q=%2e%2e/../%2f", n) == 0);
  CHECK(mg_uri_normalize_target("/a?", 3, out, &n) == 0 && n == 3 && memcmp(out, "/a?", 3) == 0);
  CHECK(mg_uri_normalize_target("/a%2f?x", 7, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x y", 6, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x#y", 6, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x\x7f", 5, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("?x", 2, out, &n) == MG_EINVAL);
  /* a '%' in the query must still start an escape */
  CHECK(mg_uri_normalize_target("/a?x=%4", 7, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x=%zz", 8, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x=%", 6, out, &n) == MG_EINVAL);
  CHECK(mg_uri_normalize_target("/a?x=%4a", 8, out, &n) == 0 && n == 8);

  char buf[] = "/./%7e/?a=%41";
  CHECK(mg_uri_normalize_target(buf, strlen(buf), buf, &n) == 0);
  CHECK(n == strlen("/~/?a=%41") && memcmp(buf, "/~/?a=%41", n) == 0);
}

/* want_name == NULL: MG_EINVAL expected */
typedef struct {
  const char *in;
  const char *want_name;
  int want_port;
} host_case_t;

static void check_host_table(const host_case_t *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mg_str_t h = { t[i].in, strlen(t[i].in) };
    mg_str_t name = MG_STR("unset");
    int port = -7;
    int rc = mg_uri_check_host(h, &name, &port);
    int ok = t[i].want_name ? rc == 0 && name.p >= h.p && name.p + name.len <= h.p + h.len &&
                                  mg_str_eq(name, (mg_str_t){ t[i].want_name, strlen(t[i].want_name) }) &&
                                  port == t[i].want_port
                            : rc == MG_EINVAL && mg_str_eq(name, MG_STR("unset")) && port == -7;
    if (!ok)
      fprintf(stderr, "  host \"%s\": rc %d name %.*s port %d\n", t[i].in, rc, (int)name.len,
              name.p, port);
    CHECK(ok);
  }
}

static void host_names_ports_and_trailing_dot(void) {
  static const host_case_t t[] = {
    { "example.com", "example.com", -1 },
    { "Example.COM", "Example.COM", -1 },
    { "example.com.", "example.com", -1 },
    { "example.com.:8080", "example.com", 8080 },
    { "example.com:80", "example.com", 80 },
    { "example.com:", "example.com", -1 },
    { "example.com:0", "example.com", 0 },
    { "example.com:65535", "example.com", 65535 },
    { "example.com:00080", "example.com", 80 },
    { "a", "a", -1 },
    { "a.", "a", -1 },
    { "localhost:8080", "localhost", 8080 },
    { "my_host-1.internal", "my_host-1.internal", -1 },
    { "-x", "-x", -1 },
    { "127.0.0.1", "127.0.0.1", -1 },
    { "127.0.0.1:443", "127.0.0.1", 443 },
    { "[::1]", "[::1]", -1 },
    { "[::1]:8080", "[::1]", 8080 },
    { "[::1]:", "[::1]", -1 },
    { "[2001:DB8::a:1]:443", "[2001:DB8::a:1]", 443 },
    { "[::ffff:10.0.0.1]", "[::ffff:10.0.0.1]", -1 },
  };
  check_host_table(t, sizeof(t) / sizeof(t[0]));
}

static void host_bad_values_are_refused(void) {
  static const host_case_t t[] = {
    { "", NULL, 0 },
    { ":", NULL, 0 },
    { ":80", NULL, 0 },
    { ".", NULL, 0 },
    { "..", NULL, 0 },
    { ".example.com", NULL, 0 },
    { "example..com", NULL, 0 },
    { "example.com..", NULL, 0 },
    { "example.com:99999", NULL, 0 },
    { "example.com:65536", NULL, 0 },
    { "example.com:123456", NULL, 0 },
    { "example.com:80a", NULL, 0 },
    { "example.com:a80", NULL, 0 },
    { "example.com:-1", NULL, 0 },
    { "example.com:+80", NULL, 0 },
    { "example.com: 80", NULL, 0 },
    { "example.com:80:81", NULL, 0 },
    { "user@example.com", NULL, 0 },
    { "user:pass@example.com", NULL, 0 },
    { "example.com@evil.com", NULL, 0 },
    { "exa mple.com", NULL, 0 },
    { " example.com", NULL, 0 },
    { "example.com/", NULL, 0 },
    { "example.com\\", NULL, 0 },
    { "ex%61mple.com", NULL, 0 },
    { "example.com\r\nX: y", NULL, 0 },
    { "\xc3\xa9.com", NULL, 0 },
    { "::1", NULL, 0 },
    { "[::1", NULL, 0 },
    { "::1]", NULL, 0 },
    { "[]", NULL, 0 },
    { "[::1]x", NULL, 0 },
    { "[::1]:80a", NULL, 0 },
    { "[::1]]", NULL, 0 },
    { "[::g]", NULL, 0 },
    { "[1:2:3:4:5:6:7:8:9]", NULL, 0 },
    { "[fe80::1%25eth0]", NULL, 0 },
    { "[v1.abc]", NULL, 0 },
    { "[127.0.0.1]", NULL, 0 },
    { "[::1]:99999", NULL, 0 },
    { "[0000:0000:0000:0000:0000:0000:0000:0000:0000]", NULL, 0 },
    { "[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000]", NULL, 0 },
  };
  check_host_table(t, sizeof(t) / sizeof(t[0]));
}

static void host_every_byte(void) {
  for (int c = 0; c < 256; c++) {
    char h[3] = { 'a', (char)c, 'b' };
    int ok_byte = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
    mg_str_t name;
    int port;
    int rc = mg_uri_check_host((mg_str_t){ h, 3 }, &name, &port);
    if (c == '.') {
      CHECK(rc == 0 && name.len == 3);
    } else if (c == ':') {
      CHECK(rc == MG_EINVAL); /* port "b" */
    } else {
      CHECK(ok_byte ? rc == 0 && name.len == 3 && port == -1 : rc == MG_EINVAL);
    }
  }
}

static void host_out_params_may_be_null(void) {
  CHECK(mg_uri_check_host(MG_STR("a.b:1"), NULL, NULL) == 0);
  CHECK(mg_uri_check_host(MG_STR("a@b"), NULL, NULL) == MG_EINVAL);
}

int main(void) {
  static const t_case_t cases[] = {
    T(path_attacks_on_admin_all_reach_admin),
    T(path_dot_segments_follow_rfc3986),
    T(path_escapes_decode_once_and_only_unreserved),
    T(path_bad_escapes_and_bytes_are_refused),
    T(path_every_byte_raw_and_escaped), T(path_params_on_dot_segments),
    T(path_reads_only_len_bytes),
    T(path_long_inputs),
    T(path_normalizes_in_place),
    T(target_split_and_normalized_with_query),
    T(host_names_ports_and_trailing_dot),
    T(host_bad_values_are_refused),
    T(host_every_byte),
    T(host_out_params_may_be_null),
  };
  return t_run("uri", cases, sizeof(cases) / sizeof(cases[0]));
}
