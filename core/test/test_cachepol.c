/* core/cachepol: the caching rules, section by section of RFC 9111 (and RFC 9110's
 * conditionals, RFC 5861's stale-*, RFC 9211's Cache-Status), with exact answers. */
#include "cachepol.h"
#include "test.h"

#define H(n, v) { { n, sizeof(n) - 1 }, { v, sizeof(v) - 1 } }
#define HS(arr) ((mg_cp_hdrs_t){ arr, sizeof(arr) / sizeof(arr[0]) })
#define S(lit) MG_STR(lit)

static const mg_cp_opts_t opts = { .heuristic_max = 86400, .heuristic_pct = 10 };
static const mg_cp_hdrs_t none = { NULL, 0 };

/* 1994-11-06 08:49:37 GMT */
#define T0 784111777LL

static void test_date_formats(void) {
  CHECK(mg_cp_date(S("Sun, 06 Nov 1994 08:49:37 GMT")) == T0);
  CHECK(mg_cp_date(S("Sunday, 06-Nov-94 08:49:37 GMT")) == T0);
  CHECK(mg_cp_date(S("Sun Nov  6 08:49:37 1994")) == T0);
  CHECK(mg_cp_date(S("Thu, 01 Jan 1970 00:00:00 GMT")) == 0);
  CHECK(mg_cp_date(S("Tue, 29 Feb 2000 12:00:00 GMT")) == 951825600);
  CHECK(mg_cp_date(S("Mon, 29 Feb 2100 12:00:00 GMT")) == -1); /* not a leap year */
  CHECK(mg_cp_date(S("0")) == -1);
  CHECK(mg_cp_date(S("")) == -1);
  CHECK(mg_cp_date(S("Sun, 06 Nov 1994 08:49:37 UTC")) == -1);
  CHECK(mg_cp_date(S("Sun, 32 Nov 1994 08:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("Sun, 06 Foo 1994 08:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("Sun, 06 Nov 1994 24:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("Xyz, 06 Nov 1994 08:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("  Sun, 06 Nov 1994 08:49:37 GMT ")) == T0); /* OWS around it */
  CHECK(mg_cp_date(S("Sunday, 06-Nov-94 08:49:37 GMT extra")) == -1);
}

static void test_delta_seconds(void) {
  CHECK(mg_cp_delta(S("0")) == 0);
  CHECK(mg_cp_delta(S("3600")) == 3600);
  CHECK(mg_cp_delta(S("2147483647")) == 2147483647LL);
  CHECK(mg_cp_delta(S("2147483648")) == MG_CP_DELTA_MAX);
  CHECK(mg_cp_delta(S("99999999999999999999999999999")) == MG_CP_DELTA_MAX); /* 1.2.2 */
  CHECK(mg_cp_delta(S("-1")) == -1);
  CHECK(mg_cp_delta(S("+5")) == -1);
  CHECK(mg_cp_delta(S("5s")) == -1);
  CHECK(mg_cp_delta(S("")) == -1);
  CHECK(mg_cp_delta(S("1.5")) == -1);
}

static mg_cc_t cc1(const char *v, int req) {
  mg_header_t h[1] = { { S("Cache-Control"), { v, strlen(v) } } };
  mg_cp_hdrs_t hs = { h, 1 };
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, req);
  return cc;
}

static void test_cc_tokens_and_values(void) {
  mg_cc_t c = cc1("max-age=60, s-maxage=30, public, must-revalidate, proxy-revalidate, no-transform, immutable", 0);
  CHECK(c.max_age == 60 && c.s_maxage == 30);
  CHECK(c.flags == (MG_CC_PUBLIC | MG_CC_MUST_REVALIDATE | MG_CC_PROXY_REVALIDATE | MG_CC_NO_TRANSFORM | MG_CC_IMMUTABLE));
  CHECK(c.invalid == 0 && c.max_stale == -1 && c.min_fresh == -1 && c.swr == -1 && c.sie == -1);
  c = cc1("MAX-AGE=5, No-Store", 0); /* names without case */
  CHECK(c.max_age == 5 && c.flags == MG_CC_NO_STORE);
  c = cc1("max-age=\"7\"", 0); /* the quoted form is accepted (5.2) */
  CHECK(c.max_age == 7 && c.invalid == 0);
  c = cc1("stale-while-revalidate=30, stale-if-error=600, must-understand, no-store", 0);
  CHECK(c.swr == 30 && c.sie == 600 && c.flags == (MG_CC_MUST_UNDERSTAND | MG_CC_NO_STORE));
  c = cc1("max-stale, min-fresh=10, only-if-cached, no-cache", 1);
  CHECK(c.flags == (MG_CC_MAX_STALE_ANY | MG_CC_ONLY_IF_CACHED | MG_CC_NO_CACHE) && c.min_fresh == 10 && c.max_stale == -1);
  c = cc1("max-stale=120", 1);
  CHECK(c.max_stale == 120 && !(c.flags & MG_CC_MAX_STALE_ANY));
  c = cc1("x-ext=\"a, b\", foo, max-age=9", 0); /* extensions ignored, the comma in quotes too */
  CHECK(c.max_age == 9 && c.flags == 0 && c.invalid == 0);
}

static void test_cc_field_lists(void) {
  mg_cc_t c = cc1("no-cache=\"Set-Cookie, X-Foo\", private=\"X-User\"", 0);
  CHECK(c.flags == (MG_CC_NO_CACHE_FIELDS | MG_CC_PRIVATE_FIELDS));
  CHECK(c.n_no_cache == 2 && mg_str_eq(c.no_cache_f[0], S("Set-Cookie")) && mg_str_eq(c.no_cache_f[1], S("X-Foo")));
  CHECK(c.n_private == 1 && mg_str_eq(c.private_f[0], S("X-User")));
  c = cc1("no-cache=X-Foo", 0); /* token form */
  CHECK(c.flags == MG_CC_NO_CACHE_FIELDS && c.n_no_cache == 1);
  c = cc1("no-cache=\"a, b\", no-cache", 0); /* both: unqualified wins in effect */
  CHECK((c.flags & MG_CC_NO_CACHE) && c.n_no_cache == 2);
  c = cc1("private=\"a,b,c,d,e,f,g,h,i\"", 0); /* too many: the whole response is private */
  CHECK(c.flags & MG_CC_PRIVATE);
  c = cc1("no-cache=\"a b\"", 0); /* not a token: unqualified */
  CHECK(c.flags == MG_CC_NO_CACHE);
  c = cc1("no-cache=\"a\\\"b\"", 0); /* escapes in a field list: unqualified */
  CHECK(c.flags == MG_CC_NO_CACHE && c.invalid == 1);
  c = cc1("private=\"a, A\"", 0); /* duplicates kept once */
  CHECK(c.n_private == 1);
}

static void test_cc_conflicts_most_restrictive(void) {
  mg_header_t h[] = { H("Cache-Control", "max-age=600"), H("Cache-Control", "max-age=60, s-maxage=100"),
                      H("cache-control", "s-maxage=50, stale-if-error=10, stale-if-error=5, swr-x") };
  mg_cp_hdrs_t hs = HS(h);
  mg_cc_t c;
  mg_cc_parse(&c, &hs, 0);
  CHECK(c.max_age == 60 && c.s_maxage == 50 && c.sie == 5);
  c = cc1("min-fresh=5, min-fresh=50, max-stale=100, max-stale=10, max-stale", 1);
  CHECK(c.min_fresh == 50 && c.max_stale == 10 && (c.flags & MG_CC_MAX_STALE_ANY));
}

static void test_cc_invalid_values(void) {
  mg_cc_t c = cc1("max-age=abc", 0);
  CHECK(c.max_age == 0 && c.invalid == 1); /* invalid freshness: stale */
  c = cc1("max-age=-5", 0);
  CHECK(c.max_age == 0);
  c = cc1("max-age", 0);
  CHECK(c.max_age == 0);
  c = cc1("max-age=", 0);
  CHECK(c.max_age == 0);
  c = cc1("max-age = 60", 0); /* not the grammar */
  CHECK(c.max_age == 0 && c.invalid >= 1);
  c = cc1("max-age=60 junk", 0);
  CHECK(c.max_age == 0);
  c = cc1("max-age=99999999999999999999999", 0);
  CHECK(c.max_age == MG_CP_DELTA_MAX);
  c = cc1("s-maxage=1e3", 0);
  CHECK(c.s_maxage == 0);
  c = cc1("max-stale=-1, min-fresh=x, stale-while-revalidate=?", 1);
  CHECK(c.max_stale == -1 && !(c.flags & MG_CC_MAX_STALE_ANY) && c.min_fresh == -1 && c.swr == -1 && c.invalid == 3);
  c = cc1("=5, ,,, \"q\", public", 0); /* garbage elements skipped, the rest read */
  CHECK(c.flags == MG_CC_PUBLIC && c.invalid == 2);
  c = cc1("max-age=\"60", 0); /* an unterminated quote */
  CHECK(c.max_age == 0);
  c = cc1("", 0);
  CHECK(c.flags == 0 && c.max_age == -1 && c.invalid == 0);
}

static void test_pragma_no_cache(void) {
  mg_header_t a[] = { H("Pragma", "no-cache") };
  mg_cp_hdrs_t hs = HS(a);
  mg_cc_t c;
  mg_cc_parse(&c, &hs, 1);
  CHECK(c.flags == (MG_CC_NO_CACHE | MG_CC_PRAGMA_NO_CACHE));
  mg_cc_parse(&c, &hs, 0); /* a response's Pragma means nothing */
  CHECK(c.flags == 0);
  mg_header_t b[] = { H("Pragma", "no-cache"), H("Cache-Control", "max-age=5") };
  hs = HS(b);
  mg_cc_parse(&c, &hs, 1); /* Cache-Control present: Pragma ignored (5.4) */
  CHECK(c.flags == 0 && c.max_age == 5);
}

/* -- storing (3) -- */

static int store(const char *method, mg_header_t *rq, size_t nrq, int status, mg_header_t *rs, size_t nrs,
                 const mg_cp_opts_t *o) {
  mg_cp_hdrs_t a = { rq, nrq }, b = { rs, nrs };
  mg_cp_meta_t m;
  return mg_cp_meta_init(&m, (mg_str_t){ method, strlen(method) }, &a, status, &b, 100, 100, o);
}
#define STORE(m, rq, st, rs) store(m, rq, sizeof(rq) / sizeof(rq[0]), st, rs, sizeof(rs) / sizeof(rs[0]), &opts)

static void test_store_method_and_status(void) {
  mg_header_t rq[] = { H("Host", "a") };
  mg_header_t rs[] = { H("Cache-Control", "max-age=60") };
  CHECK(STORE("GET", rq, 200, rs) == MG_CP_OK);
  CHECK(STORE("HEAD", rq, 200, rs) == MG_CP_NS_METHOD);
  CHECK(STORE("POST", rq, 200, rs) == MG_CP_NS_METHOD);
  CHECK(STORE("GET", rq, 206, rs) == MG_CP_NS_STATUS);
  CHECK(STORE("GET", rq, 304, rs) == MG_CP_NS_STATUS);
  CHECK(STORE("GET", rq, 100, rs) == MG_CP_NS_STATUS);
  CHECK(STORE("GET", rq, 299, rs) == MG_CP_NS_STATUS);
  CHECK(STORE("GET", rq, 503, rs) == MG_CP_OK); /* explicit freshness on an understood status */
  mg_header_t plain[] = { H("Content-Type", "text/plain") };
  CHECK(STORE("GET", rq, 200, plain) == MG_CP_OK);  /* heuristically cacheable */
  CHECK(STORE("GET", rq, 404, plain) == MG_CP_OK);
  CHECK(STORE("GET", rq, 302, plain) == MG_CP_NS_NOT_CACHEABLE);
  CHECK(STORE("GET", rq, 500, plain) == MG_CP_NS_NOT_CACHEABLE);
  mg_header_t pub[] = { H("Cache-Control", "public") };
  CHECK(STORE("GET", rq, 302, pub) == MG_CP_OK);
  mg_header_t exp[] = { H("Expires", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(STORE("GET", rq, 302, exp) == MG_CP_OK);
}

static void test_store_no_store_private_must_understand(void) {
  mg_header_t rq[] = { H("Host", "a") };
  mg_header_t ns[] = { H("Cache-Control", "max-age=60, no-store") };
  CHECK(STORE("GET", rq, 200, ns) == MG_CP_NS_NO_STORE);
  mg_header_t mu[] = { H("Cache-Control", "max-age=60, no-store, must-understand") };
  CHECK(STORE("GET", rq, 200, mu) == MG_CP_OK);         /* understood: no-store ignored */
  CHECK(STORE("GET", rq, 206, mu) == MG_CP_NS_STATUS);  /* not understood: not stored */
  mg_header_t rqns[] = { H("Cache-Control", "no-store") };
  mg_header_t ok[] = { H("Cache-Control", "max-age=60") };
  CHECK(STORE("GET", rqns, 200, ok) == MG_CP_NS_NO_STORE);
  mg_header_t pv[] = { H("Cache-Control", "private, max-age=60") };
  CHECK(STORE("GET", rq, 200, pv) == MG_CP_NS_PRIVATE);
  mg_header_t pvf[] = { H("Cache-Control", "private=\"X-User\", max-age=60") };
  CHECK(STORE("GET", rq, 200, pvf) == MG_CP_OK);
  mg_header_t nc[] = { H("Cache-Control", "no-cache") };
  CHECK(STORE("GET", rq, 200, nc) == MG_CP_OK); /* stored, revalidated on every use */
}

static void test_store_authorization(void) {
  mg_header_t rq[] = { H("Authorization", "Bearer x") };
  mg_header_t a[] = { H("Cache-Control", "max-age=60") };
  CHECK(STORE("GET", rq, 200, a) == MG_CP_NS_AUTH);
  mg_header_t b[] = { H("Cache-Control", "max-age=60, public") };
  CHECK(STORE("GET", rq, 200, b) == MG_CP_OK);
  mg_header_t c[] = { H("Cache-Control", "s-maxage=60") };
  CHECK(STORE("GET", rq, 200, c) == MG_CP_OK);
  mg_header_t d[] = { H("Cache-Control", "must-revalidate, max-age=5") };
  CHECK(STORE("GET", rq, 200, d) == MG_CP_OK);
  mg_header_t e[] = { H("Cache-Control", "proxy-revalidate, max-age=5") };
  CHECK(STORE("GET", rq, 200, e) == MG_CP_NS_AUTH);
}

static void test_store_set_cookie_vary_framing(void) {
  mg_header_t rq[] = { H("Host", "a") };
  mg_header_t sc[] = { H("Cache-Control", "max-age=60"), H("Set-Cookie", "a=b") };
  CHECK(STORE("GET", rq, 200, sc) == MG_CP_NS_SET_COOKIE);
  mg_cp_opts_t allow = opts;
  allow.allow_set_cookie = 1;
  CHECK(store("GET", rq, 1, 200, sc, 2, &allow) == MG_CP_OK);
  mg_header_t vs[] = { H("Cache-Control", "max-age=60"), H("Vary", "Accept"), H("Vary", "Origin, *") };
  CHECK(STORE("GET", rq, 200, vs) == MG_CP_NS_VARY_STAR);
  mg_header_t cl_te[] = { H("Content-Length", "5"), H("Transfer-Encoding", "chunked") };
  CHECK(STORE("GET", rq, 200, cl_te) == MG_CP_NS_FRAMING);
  mg_header_t cl2[] = { H("Content-Length", "5"), H("Content-Length", "6") };
  CHECK(STORE("GET", rq, 200, cl2) == MG_CP_NS_FRAMING);
  mg_header_t cl3[] = { H("Content-Length", "5, 5"), H("Content-Length", "5") };
  CHECK(STORE("GET", rq, 200, cl3) == MG_CP_OK);
  mg_header_t cl4[] = { H("Content-Length", "-5") };
  CHECK(STORE("GET", rq, 200, cl4) == MG_CP_NS_FRAMING);
  mg_header_t cl5[] = { H("Content-Length", "") };
  CHECK(STORE("GET", rq, 200, cl5) == MG_CP_NS_FRAMING);
  mg_header_t cl6[] = { H("Content-Length", "3000000000"), H("Content-Length", "3000000001") };
  CHECK(STORE("GET", rq, 200, cl6) == MG_CP_NS_FRAMING); /* big lengths are compared exactly */
  mg_header_t cl7[] = { H("Content-Length", "1234567890123456789") };
  CHECK(STORE("GET", rq, 200, cl7) == MG_CP_NS_FRAMING);
  mg_header_t cl8[] = { H("Content-Length", "3000000000") };
  CHECK(STORE("GET", rq, 200, cl8) == MG_CP_OK);
  CHECK(strcmp(mg_cp_ns_reason(MG_CP_NS_FRAMING), "framing") == 0);
  CHECK(strcmp(mg_cp_ns_reason(99), "unknown") == 0);
}

static void test_header_stored(void) {
  mg_header_t rs[] = { H("Connection", "X-Hop, close"), H("Cache-Control", "private=\"X-User\", no-cache=\"X-Nc\"") };
  mg_cp_hdrs_t hs = HS(rs);
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_header_stored(S("Content-Type"), &cc, &hs));
  CHECK(!mg_cp_header_stored(S("x-hop"), &cc, &hs));
  CHECK(!mg_cp_header_stored(S("Keep-Alive"), &cc, &hs));
  CHECK(!mg_cp_header_stored(S("Transfer-Encoding"), &cc, &hs));
  CHECK(!mg_cp_header_stored(S("x-user"), &cc, &hs));
  CHECK(!mg_cp_header_stored(S("X-NC"), &cc, &hs));
  CHECK(mg_cp_header_stored(S("Age"), &cc, &hs));
}

/* -- freshness (4.2.1, 4.2.2) -- */

static int64_t life(mg_header_t *rs, size_t n, int status, int *heur) {
  mg_cp_hdrs_t hs = { rs, n };
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, 0);
  return mg_cp_lifetime(&cc, status, &hs, T0 + 5, &opts, heur);
}
#define LIFE(rs, st, h) life(rs, sizeof(rs) / sizeof(rs[0]), st, h)

static void test_freshness_lifetime_order(void) {
  int h;
  mg_header_t a[] = { H("Cache-Control", "max-age=60, s-maxage=30"), H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
                      H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(a, 200, &h) == 30 && !h);
  mg_header_t b[] = { H("Cache-Control", "max-age=60"), H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
                      H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(b, 200, &h) == 60); /* max-age beats Expires */
  mg_header_t c[] = { H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(c, 200, &h) == 3600);
  mg_header_t d[] = { H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT") }; /* no Date: the time received */
  CHECK(LIFE(d, 200, &h) == 3595);
  mg_header_t e[] = { H("Expires", "0"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(e, 200, &h) == 0 && !h); /* invalid Expires: stale, no heuristic */
  mg_header_t f[] = { H("Expires", "Sun, 06 Nov 1994 07:49:37 GMT"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(f, 200, &h) == 0); /* in the past */
  mg_header_t g[] = { H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"), H("Expires", "Sun, 06 Nov 1994 10:49:37 GMT") };
  CHECK(LIFE(g, 200, &h) == 0); /* two Expires: invalid */
  mg_header_t i[] = { H("Cache-Control", "max-age=bad"), H("Expires", "Sun, 06 Nov 1994 09:49:37 GMT") };
  CHECK(LIFE(i, 200, &h) == 0); /* invalid max-age: stale, Expires not consulted */
  mg_header_t j[] = { H("Cache-Control", "max-age=99999999999999") };
  CHECK(LIFE(j, 200, &h) == MG_CP_DELTA_MAX);
}

static void test_freshness_heuristic(void) {
  int h;
  /* Date - Last-Modified = 10000 s: 10 % = 1000 */
  mg_header_t a[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "Sun, 06 Nov 1994 06:02:57 GMT") };
  CHECK(LIFE(a, 200, &h) == 1000 && h == 1);
  CHECK(LIFE(a, 404, &h) == 1000);
  CHECK(LIFE(a, 302, &h) == 0 && h == 0); /* not heuristically cacheable */
  mg_header_t b[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "Sun, 06 Nov 1994 06:02:57 GMT"),
                      H("Cache-Control", "public") };
  CHECK(LIFE(b, 302, &h) == 1000); /* public allows it */
  /* a year old: capped at heuristic_max */
  mg_header_t c[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "Sat, 06 Nov 1993 08:49:37 GMT") };
  CHECK(LIFE(c, 200, &h) == 86400);
  mg_header_t d[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "Mon, 07 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(d, 200, &h) == 0 && !h); /* modified in the future */
  mg_header_t e[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "garbage") };
  CHECK(LIFE(e, 200, &h) == 0);
  mg_header_t f[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(LIFE(f, 200, &h) == 0);
  mg_header_t g[] = { H("Cache-Control", "max-age=0"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                      H("Last-Modified", "Sat, 06 Nov 1993 08:49:37 GMT") };
  CHECK(LIFE(g, 200, &h) == 0 && !h); /* explicit beats heuristic */
  mg_cp_opts_t off = { .heuristic_pct = 10 };
  mg_cp_hdrs_t hs = HS(a);
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_lifetime(&cc, 200, &hs, T0, &off, &h) == 0); /* heuristics off */
}

/* i13-api: a route's cache.ttl for a status (mg_cp_opts_t.status_ttl) */
static void test_status_ttl(void) {
  mg_cp_opts_t t60 = opts;
  t60.status_ttl_set = 1;
  t60.status_ttl = 60;
  int h;
  mg_cp_meta_t m;
  mg_header_t rq[] = { H("Host", "a") };
  mg_cp_hdrs_t a = HS(rq);
  /* no caching headers, no Last-Modified: 60 s instead of a heuristic 0 */
  mg_header_t plain[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Content-Type", "text/plain") };
  mg_cp_hdrs_t b = HS(plain);
  CHECK(mg_cp_meta_init(&m, S("GET"), &a, 200, &b, T0, T0, &t60) == MG_CP_OK);
  CHECK(m.lifetime == 60 && m.heuristic == 0);
  CHECK(mg_cp_meta_init(&m, S("GET"), &a, 200, &b, T0, T0, &opts) == MG_CP_OK && m.lifetime == 0);
  /* a status not cacheable by default becomes storable; one not understood does not */
  CHECK(store("GET", rq, 1, 302, plain, 2, &opts) == MG_CP_NS_NOT_CACHEABLE);
  CHECK(store("GET", rq, 1, 302, plain, 2, &t60) == MG_CP_OK);
  CHECK(store("GET", rq, 1, 500, plain, 2, &t60) == MG_CP_OK);
  CHECK(store("GET", rq, 1, 206, plain, 2, &t60) == MG_CP_NS_STATUS);
  /* beats the heuristic (Date - Last-Modified = 10000 s: 1000) */
  mg_header_t lm[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Last-Modified", "Sun, 06 Nov 1994 06:02:57 GMT") };
  mg_cp_hdrs_t hs = HS(lm);
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_lifetime(&cc, 200, &hs, T0, &t60, &h) == 60 && h == 0);
  /* explicit freshness wins: max-age, s-maxage, Expires (even an invalid one) */
  mg_header_t ma[] = { H("Cache-Control", "max-age=5") };
  hs = HS(ma);
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_lifetime(&cc, 200, &hs, T0, &t60, &h) == 5);
  mg_header_t sm[] = { H("Cache-Control", "s-maxage=7, max-age=5") };
  hs = HS(sm);
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_lifetime(&cc, 200, &hs, T0, &t60, &h) == 7);
  mg_header_t ex[] = { H("Expires", "0"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  hs = HS(ex);
  mg_cc_parse(&cc, &hs, 0);
  CHECK(mg_cp_lifetime(&cc, 200, &hs, T0, &t60, &h) == 0);
  /* what forbids storing still does */
  mg_header_t ns[] = { H("Cache-Control", "no-store") };
  CHECK(store("GET", rq, 1, 200, ns, 1, &t60) == MG_CP_NS_NO_STORE);
  mg_header_t pv[] = { H("Cache-Control", "private") };
  CHECK(store("GET", rq, 1, 200, pv, 1, &t60) == MG_CP_NS_PRIVATE);
  mg_header_t au[] = { H("Authorization", "Basic eDp5") };
  CHECK(store("GET", au, 1, 200, plain, 2, &t60) == MG_CP_NS_AUTH);
  mg_header_t ck[] = { H("Set-Cookie", "a=b") };
  CHECK(store("GET", rq, 1, 200, ck, 1, &t60) == MG_CP_NS_SET_COOKIE);
  /* a ttl of 0: stored, stale at once */
  mg_cp_opts_t t0 = t60;
  t0.status_ttl = 0;
  CHECK(mg_cp_meta_init(&m, S("GET"), &a, 404, &b, T0, T0, &t0) == MG_CP_OK && m.lifetime == 0);
}

/* -- age (4.2.3) -- */

static mg_cp_meta_t meta(mg_header_t *rs, size_t n, int64_t req_t, int64_t res_t) {
  mg_cp_hdrs_t b = { rs, n };
  mg_cp_meta_t m;
  int r = mg_cp_meta_init(&m, S("GET"), &none, 200, &b, req_t, res_t, &opts);
  CHECK(r == MG_CP_OK);
  return m;
}
#define META(rs, a, b) meta(rs, sizeof(rs) / sizeof(rs[0]), a, b)

static void test_age_calculation(void) {
  /* Date = T0, request sent T0, response at T0+2 (delay 2), Age: 10 */
  mg_header_t a[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Age", "10"), H("Cache-Control", "max-age=100") };
  mg_cp_meta_t m = META(a, T0, T0 + 2);
  /* apparent 2, corrected_age_value 12, initial 12, resident 5 */
  CHECK(m.age_value == 10 && m.date_value == T0);
  CHECK(mg_cp_age(&m, T0 + 7) == 17);
  /* origin clock 60 s behind: Date = T0, received at T0+60, no Age: apparent 60 */
  mg_header_t b[] = { H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Cache-Control", "max-age=100") };
  m = META(b, T0 + 59, T0 + 60);
  CHECK(mg_cp_age(&m, T0 + 60) == 60);
  /* origin clock ahead: Date in our future; apparent 0, delay 1 */
  m = META(b, T0 - 31, T0 - 30);
  CHECK(mg_cp_age(&m, T0 - 30) == 1);
  CHECK(mg_cp_age(&m, T0) == 31);
  /* a clock that went back: no negative delay or resident time */
  m = META(b, T0 + 10, T0 + 5);
  CHECK(mg_cp_age(&m, T0) == 5);
  /* bad Age ignored, huge Age capped */
  mg_header_t c[] = { H("Age", "-3"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Cache-Control", "max-age=1") };
  m = META(c, T0, T0);
  CHECK(m.age_value == 0 && mg_cp_age(&m, T0) == 0);
  mg_header_t d[] = { H("Age", "999999999999999999999"), H("Date", "Sun, 06 Nov 1994 08:49:37 GMT") };
  m = META(d, T0, T0);
  CHECK(mg_cp_age(&m, T0) == MG_CP_DELTA_MAX);
  /* no Date: date_value is the response time */
  mg_header_t e[] = { H("Cache-Control", "max-age=1") };
  m = META(e, T0, T0 + 3);
  CHECK(m.date_value == T0 + 3 && mg_cp_age(&m, T0 + 3) == 3);
}

/* -- decisions (4, 4.2.4, 5.2.1, 5.2.2, RFC 5861) -- */

static mg_cp_decision_t decide(const char *res_cc, const char *req_cc, int64_t age_now) {
  mg_header_t rs[] = { { S("Cache-Control"), { res_cc, strlen(res_cc) } }, H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                       H("ETag", "\"v1\"") };
  mg_cp_hdrs_t b = HS(rs);
  mg_cp_meta_t m;
  CHECK(mg_cp_meta_init(&m, S("GET"), &none, 200, &b, T0, T0, &opts) == MG_CP_OK);
  mg_cc_t rq = cc1(req_cc, 1);
  mg_cp_decision_t d;
  mg_cp_decide(&m, &rq, T0 + age_now, &d);
  return d;
}

static void test_decide_fresh_and_stale(void) {
  mg_cp_decision_t d = decide("max-age=60", "", 10);
  CHECK(d.verdict == MG_CP_HIT && d.age == 10 && d.ttl == 50 && d.cs.hit && d.cs.ttl == 50);
  d = decide("max-age=60", "", 60); /* age == lifetime: stale */
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_STALE && d.cs.fwd == MG_CS_FWD_STALE && d.ttl == 0);
  d = decide("max-age=60", "", 59);
  CHECK(d.verdict == MG_CP_HIT && d.ttl == 1);
}

static void test_decide_request_directives(void) {
  mg_cp_decision_t d = decide("max-age=60", "no-cache", 1);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_REQ_NO_CACHE && d.cs.fwd == MG_CS_FWD_REQUEST);
  d = decide("max-age=60", "max-age=5", 10);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_REQ_MAX_AGE);
  d = decide("max-age=60", "max-age=10", 10); /* age <= max-age: fine */
  CHECK(d.verdict == MG_CP_HIT);
  d = decide("max-age=60", "max-age=0", 0);
  CHECK(d.verdict == MG_CP_HIT); /* age 0 <= 0 */
  d = decide("max-age=60", "min-fresh=20", 45); /* 15 s left < 20 */
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_MIN_FRESH);
  d = decide("max-age=60", "min-fresh=20", 40); /* 20 left */
  CHECK(d.verdict == MG_CP_HIT);
  d = decide("max-age=60", "max-stale=30", 90);
  CHECK(d.verdict == MG_CP_STALE_SERVE && d.reason == MG_CP_R_MAX_STALE && d.ttl == -30 && d.cs.hit);
  d = decide("max-age=60", "max-stale=30", 91);
  CHECK(d.verdict == MG_CP_REVALIDATE);
  d = decide("max-age=60", "max-stale", 100000);
  CHECK(d.verdict == MG_CP_STALE_SERVE && d.reason == MG_CP_R_MAX_STALE);
  d = decide("max-age=60", "max-stale, max-stale=5", 70); /* the bound wins */
  CHECK(d.verdict == MG_CP_REVALIDATE);
  d = decide("max-age=60", "only-if-cached", 10);
  CHECK(d.verdict == MG_CP_HIT);
  d = decide("max-age=60", "only-if-cached", 100);
  CHECK(d.verdict == MG_CP_MISS && d.reason == MG_CP_R_ONLY_IF_CACHED);
  d = decide("max-age=60", "only-if-cached, max-stale", 100);
  CHECK(d.verdict == MG_CP_STALE_SERVE);
  mg_cc_t rq = cc1("only-if-cached", 1);
  mg_cp_decide(NULL, &rq, T0, &d);
  CHECK(d.verdict == MG_CP_MISS && d.reason == MG_CP_R_ONLY_IF_CACHED && !d.cs.hit && !d.cs.fwd);
  mg_cp_decide(NULL, NULL, T0, &d);
  CHECK(d.verdict == MG_CP_MISS && d.reason == MG_CP_R_NOT_STORED && d.cs.fwd == MG_CS_FWD_URI_MISS);
}

static void test_decide_response_directives(void) {
  mg_cp_decision_t d = decide("no-cache, max-age=60", "", 1);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_RES_NO_CACHE && !d.stale_if_error_ok);
  d = decide("no-cache=\"X-Foo\", max-age=60", "", 1); /* qualified: reusable (fields dropped) */
  CHECK(d.verdict == MG_CP_HIT);
  d = decide("max-age=60, must-revalidate", "max-stale", 70);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_STALE);
  d = decide("max-age=60, proxy-revalidate", "max-stale", 70);
  CHECK(d.verdict == MG_CP_REVALIDATE);
  d = decide("s-maxage=60", "max-stale", 70); /* s-maxage: no stale for a shared cache */
  CHECK(d.verdict == MG_CP_REVALIDATE);
  d = decide("max-age=60, must-revalidate", "", 10);
  CHECK(d.verdict == MG_CP_HIT);
  d = decide("max-age=60, immutable", "", 10);
  CHECK(d.verdict == MG_CP_HIT);
}

static void test_decide_stale_windows(void) {
  mg_cp_decision_t d = decide("max-age=60, stale-while-revalidate=30", "", 80);
  CHECK(d.verdict == MG_CP_STALE_SERVE && d.reason == MG_CP_R_SWR && d.ttl == -20);
  d = decide("max-age=60, stale-while-revalidate=30", "", 90);
  CHECK(d.verdict == MG_CP_STALE_SERVE);
  d = decide("max-age=60, stale-while-revalidate=30", "", 91);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.reason == MG_CP_R_STALE);
  d = decide("max-age=60, stale-while-revalidate=30, must-revalidate", "", 70);
  CHECK(d.verdict == MG_CP_REVALIDATE);
  d = decide("max-age=60, stale-if-error=100", "", 160);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.stale_if_error_ok);
  d = decide("max-age=60, stale-if-error=100", "", 161);
  CHECK(!d.stale_if_error_ok);
  d = decide("max-age=60", "stale-if-error=10", 65); /* the request's window (RFC 5861 4) */
  CHECK(d.stale_if_error_ok);
  d = decide("max-age=60", "", 65);
  CHECK(!d.stale_if_error_ok);
  d = decide("max-age=60, stale-if-error=100, must-revalidate", "", 70);
  CHECK(!d.stale_if_error_ok);
}

static void test_cache_status_format(void) {
  char b[128];
  mg_cp_decision_t d = decide("max-age=60", "", 10);
  size_t n = mg_cp_status_format(b, sizeof(b), S("moongate"), &d.cs);
  b[n] = 0;
  CHECK(n == 21 && strcmp(b, "moongate; hit; ttl=50") == 0);
  d = decide("max-age=60, stale-while-revalidate=30", "", 80);
  n = mg_cp_status_format(b, sizeof(b), S("moongate"), &d.cs);
  b[n] = 0;
  CHECK(strcmp(b, "moongate; hit; ttl=-20") == 0); /* a stale hit: a negative ttl (RFC 9211 2.5) */
  d = decide("max-age=60", "", 70);
  d.cs.fwd_status = 304;
  d.cs.stored = 1;
  n = mg_cp_status_format(b, sizeof(b), S("mg"), &d.cs);
  b[n] = 0;
  CHECK(strcmp(b, "mg; fwd=stale; fwd-status=304; stored; ttl=-10") == 0);
  mg_cc_t rq = cc1("only-if-cached", 1);
  mg_cp_decide(NULL, &rq, T0, &d);
  n = mg_cp_status_format(b, sizeof(b), S("mg"), &d.cs);
  b[n] = 0;
  CHECK(strcmp(b, "mg; detail=only-if-cached") == 0);
  mg_cp_decide(NULL, NULL, T0, &d);
  d.cs.collapsed = 1;
  n = mg_cp_status_format(b, sizeof(b), S("mg"), &d.cs);
  b[n] = 0;
  CHECK(strcmp(b, "mg; fwd=uri-miss; collapsed") == 0);
  CHECK(mg_cp_status_format(b, 10, S("mg"), &d.cs) == 0); /* does not fit */
}

/* -- validation (4.3, 3.2) -- */

static void test_conditional_request(void) {
  mg_header_t st[] = { H("ETag", "W/\"a1\""), H("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT") };
  mg_cp_hdrs_t hs = HS(st);
  mg_header_t out[2];
  CHECK(mg_cp_conditional(&hs, out) == 2);
  CHECK(mg_str_eq(out[0].name, S("If-None-Match")) && mg_str_eq(out[0].value, S("W/\"a1\"")));
  CHECK(mg_str_eq(out[1].name, S("If-Modified-Since")) && mg_str_eq(out[1].value, S("Sun, 06 Nov 1994 08:49:37 GMT")));
  mg_header_t st2[] = { H("Last-Modified", "yesterday") };
  hs = HS(st2);
  CHECK(mg_cp_conditional(&hs, out) == 0); /* an invalid date is no validator */
  CHECK(mg_cp_conditional(&none, out) == 0);
}

static void test_304_selects(void) {
  mg_header_t st[] = { H("ETag", "\"a\""), H("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT") };
  mg_cp_hdrs_t s = HS(st);
  mg_header_t r1[] = { H("ETag", "\"a\"") };
  mg_cp_hdrs_t r = HS(r1);
  CHECK(mg_cp_304_selects(&s, &r) == 1);
  mg_header_t r2[] = { H("ETag", "\"b\"") };
  r = HS(r2);
  CHECK(mg_cp_304_selects(&s, &r) == 0);
  mg_header_t r3[] = { H("ETag", "W/\"a\"") };
  r = HS(r3);
  CHECK(mg_cp_304_selects(&s, &r) == 1); /* weak: weak comparison */
  mg_header_t r4[] = { H("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT") };
  r = HS(r4);
  CHECK(mg_cp_304_selects(&s, &r) == 1);
  mg_header_t r5[] = { H("Last-Modified", "Sun, 06 Nov 1994 08:49:38 GMT") };
  r = HS(r5);
  CHECK(mg_cp_304_selects(&s, &r) == 0);
  mg_header_t r6[] = { H("Date", "Sun, 06 Nov 1994 08:49:38 GMT") };
  r = HS(r6);
  CHECK(mg_cp_304_selects(&s, &r) == 0);         /* no validator, but the stored one has */
  CHECK(mg_cp_304_selects(&none, &r) == 1);      /* neither has one */
  mg_header_t st2[] = { H("ETag", "W/\"a\"") };
  s = HS(st2);
  r = HS(r1);
  CHECK(mg_cp_304_selects(&s, &r) == 0); /* strong in the 304, weak stored */
}

static void test_merge_304(void) {
  mg_header_t st[] = { H("Content-Type", "text/html"), H("Content-Length", "100"), H("ETag", "\"a\""),
                       H("Cache-Control", "max-age=10"), H("Age", "5"), H("X-A", "1"), H("X-A", "2"),
                       H("Content-Encoding", "gzip") };
  mg_header_t up[] = { H("Cache-Control", "max-age=600"), H("Content-Length", "0"), H("X-A", "3"),
                       H("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), H("Connection", "X-Hop"), H("X-Hop", "h"),
                       H("Content-Encoding", "br"), H("Keep-Alive", "timeout=5") };
  mg_cp_hdrs_t s = HS(st), u = HS(up);
  mg_cc_t cc;
  mg_cc_parse(&cc, &u, 0);
  mg_header_t out[16];
  int n = mg_cp_merge_304(&s, &u, &cc, out, 16);
  CHECK(n == 7);
  if (n == 7) {
    CHECK(mg_str_eq(out[0].value, S("text/html")));
    CHECK(mg_str_eq(out[1].name, S("Content-Length")) && mg_str_eq(out[1].value, S("100"))); /* never updated */
    CHECK(mg_str_eq(out[2].value, S("\"a\"")));
    CHECK(mg_str_eq(out[3].name, S("Cache-Control")) && mg_str_eq(out[3].value, S("max-age=600")));
    CHECK(mg_str_eq(out[4].name, S("X-A")) && mg_str_eq(out[4].value, S("3"))); /* both old X-A replaced */
    CHECK(mg_str_eq(out[5].name, S("Content-Encoding")) && mg_str_eq(out[5].value, S("gzip")));
    CHECK(mg_str_eq(out[6].name, S("Date"))); /* a name the stored response lacked, at the end */
  }
  /* the old Age is gone (it described the old message); hop-by-hop never came in */
  int age = 0, hop = 0;
  for (int i = 0; i < n; i++) {
    age |= mg_str_eq(out[i].name, S("Age"));
    hop |= mg_str_eq(out[i].name, S("X-Hop")) || mg_str_eq(out[i].name, S("Keep-Alive"));
  }
  CHECK(!age && !hop);
  CHECK(mg_cp_merge_304(&s, &u, &cc, out, 3) == MG_ELIMIT);
  CHECK(mg_cp_304_keeps(S("ETag")) && mg_cp_304_keeps(S("vary")) && !mg_cp_304_keeps(S("Content-Length")) &&
        !mg_cp_304_keeps(S("Content-Type")));
}

/* -- client conditionals (RFC 9110 13.1, 13.2.2) -- */

static int cond(const char *method, mg_header_t *rq, size_t n) {
  mg_header_t st[] = { H("ETag", "\"v1\""), H("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
                       H("Date", "Sun, 06 Nov 1994 09:49:37 GMT") };
  mg_cp_hdrs_t s = HS(st), r = { rq, n };
  return mg_cp_client_cond((mg_str_t){ method, strlen(method) }, &r, &s, NULL);
}
#define COND(m, rq) cond(m, rq, sizeof(rq) / sizeof(rq[0]))

static void test_client_conditionals(void) {
  mg_header_t a[] = { H("If-None-Match", "\"v0\", W/\"v1\"") };
  CHECK(COND("GET", a) == 304); /* weak comparison */
  CHECK(COND("HEAD", a) == 304);
  mg_header_t b[] = { H("If-None-Match", "\"v0\"") };
  CHECK(COND("GET", b) == 200);
  mg_header_t c[] = { H("If-None-Match", "*") };
  CHECK(COND("GET", c) == 304);
  mg_header_t d[] = { H("If-None-Match", "\"x,y\", \"v1\"") }; /* a comma inside an etag */
  CHECK(COND("GET", d) == 304);
  mg_header_t e[] = { H("If-None-Match", "v1") }; /* malformed: no match */
  CHECK(COND("GET", e) == 200);
  /* If-None-Match wins over If-Modified-Since */
  mg_header_t f[] = { H("If-None-Match", "\"v0\""), H("If-Modified-Since", "Sun, 06 Nov 1994 10:00:00 GMT") };
  CHECK(COND("GET", f) == 200);
  mg_header_t g[] = { H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT") };
  CHECK(COND("GET", g) == 304);
  mg_header_t h[] = { H("If-Modified-Since", "Sun, 06 Nov 1994 08:49:36 GMT") };
  CHECK(COND("GET", h) == 200);
  mg_header_t i[] = { H("If-Modified-Since", "not a date") };
  CHECK(COND("GET", i) == 200);
  CHECK(COND("POST", g) == 200); /* IMS only for GET/HEAD */
  mg_header_t j[] = { H("If-Match", "\"v1\"") };
  CHECK(COND("GET", j) == 200);
  mg_header_t k[] = { H("If-Match", "W/\"v1\"") }; /* strong comparison */
  CHECK(COND("GET", k) == 412);
  mg_header_t l[] = { H("If-Unmodified-Since", "Sun, 06 Nov 1994 08:00:00 GMT") };
  CHECK(COND("GET", l) == 412);
  mg_header_t m[] = { H("If-Match", "\"v1\""), H("If-Unmodified-Since", "Sun, 06 Nov 1994 08:00:00 GMT") };
  CHECK(COND("GET", m) == 200); /* If-Unmodified-Since only without If-Match */
  mg_header_t n[] = { H("If-Match", "\"v1\""), H("If-None-Match", "\"v1\"") };
  CHECK(COND("GET", n) == 304);
  /* names in any case, behind other headers (the quick "no If-*" exit must see them) */
  mg_header_t o[] = { H("Accept", "*/*"), H("If", "x"), H("IF-NONE-MATCH", "\"v1\"") };
  CHECK(COND("GET", o) == 304);
  mg_header_t p[] = { H("Accept", "*/*"), H("iF-mAtCh", "\"v9\"") };
  CHECK(COND("GET", p) == 412);
  mg_header_t q[] = { H("Accept", "*/*"), H("Iffy", "\"v1\"") };
  CHECK(COND("GET", q) == 200);
  /* no Last-Modified: If-Modified-Since against Date (9111 4.3.2) */
  mg_header_t st[] = { H("Date", "Sun, 06 Nov 1994 09:49:37 GMT") };
  mg_header_t rq[] = { H("If-Modified-Since", "Sun, 06 Nov 1994 09:49:37 GMT") };
  mg_cp_hdrs_t s = HS(st), r = HS(rq);
  CHECK(mg_cp_client_cond(S("GET"), &r, &s, NULL) == 304);
  mg_cp_meta_t mt = { 0 };
  mt.status = 200;
  mt.date_value = T0 + 7200;
  CHECK(mg_cp_client_cond(S("GET"), &r, &none, &mt) == 200);
  mt.date_value = T0;
  CHECK(mg_cp_client_cond(S("GET"), &r, &none, &mt) == 304);
  /* a stored non-2xx is sent as stored: RFC 9110 13.2.1 has the preconditions
   * ignored then (a 304 or 412 in place of a 404 would be wrong) */
  mg_header_t et[] = { H("ETag", "\"v1\""), H("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT") };
  mg_cp_hdrs_t es = HS(et);
  mg_header_t inm[] = { H("If-None-Match", "\"v1\"") }, im[] = { H("If-Match", "\"v9\"") };
  mg_cp_hdrs_t rinm = HS(inm), rim = HS(im);
  for (int st404 = 0; st404 < 2; st404++) {
    mt.status = st404 ? 404 : 203;
    CHECK(mg_cp_client_cond(S("GET"), &rinm, &es, &mt) == (st404 ? 200 : 304));
    CHECK(mg_cp_client_cond(S("GET"), &rim, &es, &mt) == (st404 ? 200 : 412));
    CHECK(mg_cp_client_cond(S("GET"), &r, &es, &mt) == (st404 ? 200 : 304));
  }
  mt.status = 301;
  CHECK(mg_cp_client_cond(S("HEAD"), &rinm, &es, &mt) == 200);
}

static void test_etag_compare(void) {
  CHECK(mg_cp_etag_eq(S("\"1\""), S("\"1\""), 0));
  CHECK(!mg_cp_etag_eq(S("W/\"1\""), S("W/\"1\""), 0));
  CHECK(mg_cp_etag_eq(S("W/\"1\""), S("W/\"1\""), 1));
  CHECK(mg_cp_etag_eq(S("W/\"1\""), S("\"1\""), 1));
  CHECK(!mg_cp_etag_eq(S("\"1\""), S("\"2\""), 1));
  CHECK(!mg_cp_etag_eq(S("1"), S("1"), 1));
  CHECK(!mg_cp_etag_eq(S("\"a b\""), S("\"a b\""), 1));
}

/* -- keys (2, 4.1) -- */

static void test_primary_key(void) {
  char b[256];
  size_t n = mg_cp_key(b, sizeof(b), S("GET"), S("HTTPS"), S("Example.COM:443"), S("/a/B"), S("x=1"));
  CHECK(n && n == strlen("GET https://example.com/a/B?x=1") && memcmp(b, "GET https://example.com/a/B?x=1", n) == 0);
  n = mg_cp_key(b, sizeof(b), S("HEAD"), S("http"), S("h:80"), S(""), S(""));
  CHECK(n == strlen("GET http://h/") && memcmp(b, "GET http://h/", n) == 0);
  n = mg_cp_key(b, sizeof(b), S("GET"), S("http"), S("h:8080"), S("/"), S(""));
  CHECK(n == strlen("GET http://h:8080/") && memcmp(b, "GET http://h:8080/", n) == 0);
  n = mg_cp_key(b, sizeof(b), S("GET"), S("https"), S("h:80"), S("/"), S(""));
  CHECK(n == strlen("GET https://h:80/")); /* 80 is not https's default */
  n = mg_cp_key(b, sizeof(b), S("GET"), S("http"), S("[::1]:80"), S("/"), S(""));
  CHECK(n == strlen("GET http://[::1]/") && memcmp(b, "GET http://[::1]/", n) == 0);
  n = mg_cp_key(b, sizeof(b), S("GET"), S("http"), S("[::1]"), S("/"), S(""));
  CHECK(n == strlen("GET http://[::1]/"));
  CHECK(mg_cp_key(b, 10, S("GET"), S("http"), S("h"), S("/long/path"), S("")) == 0);
}

static size_t vkey(mg_header_t *rs, size_t nrs, mg_header_t *rq, size_t nrq, char *b, size_t cap, int *rc) {
  mg_cp_hdrs_t a = { rs, nrs }, q = { rq, nrq };
  size_t len;
  *rc = mg_cp_vary_key(&a, &q, b, cap, &len);
  return len;
}

static void test_vary_key(void) {
  char b[512];
  int rc;
  mg_header_t rs[] = { H("Vary", "Accept-Encoding, accept-language"), H("Vary", "ACCEPT-encoding") };
  mg_header_t q1[] = { H("Accept-Language", " en ,  fr;q=0.5 "), H("accept-encoding", "gzip"),
                       H("Accept-Encoding", "br ,, deflate") };
  size_t n = vkey(rs, 2, q1, 3, b, sizeof(b), &rc);
  const char *want = "accept-encoding:gzip,br,deflate\naccept-language:en,fr;q=0.5\n";
  CHECK(rc == 0 && n == strlen(want) && memcmp(b, want, n) == 0);
  /* the same request written differently gives the same key */
  mg_header_t q2[] = { H("ACCEPT-ENCODING", "gzip, br, deflate"), H("Accept-Language", "en, fr ; q=0.5") };
  char b2[512];
  size_t n2 = vkey(rs, 2, q2, 2, b2, sizeof(b2), &rc);
  CHECK(rc == 0 && n2 == n && memcmp(b, b2, n) == 0);
  /* absent and empty differ from a value; quoted strings kept */
  mg_header_t q3[] = { H("Accept-Encoding", "x; a=\"p  q\"") };
  n = vkey(rs, 2, q3, 1, b, sizeof(b), &rc);
  want = "accept-encoding:x;a=\"p  q\"\naccept-language\n";
  CHECK(rc == 0 && n == strlen(want) && memcmp(b, want, n) == 0);
  mg_header_t star[] = { H("Vary", "Origin, *") };
  vkey(star, 1, q3, 1, b, sizeof(b), &rc);
  CHECK(rc == MG_CP_VARY_STAR);
  mg_header_t nov[] = { H("Content-Type", "x") };
  n = vkey(nov, 1, q3, 1, b, sizeof(b), &rc);
  CHECK(rc == 0 && n == 0);
  vkey(rs, 2, q1, 3, b, 10, &rc);
  CHECK(rc == MG_ELIMIT);
  mg_header_t many[] = { H("Vary", "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q") };
  vkey(many, 1, q3, 1, b, sizeof(b), &rc);
  CHECK(rc == MG_ELIMIT);
}

/* -- invalidation (4.4) -- */

static int inval(const char *method, int status, mg_header_t *rs, size_t n, mg_str_t keys[3], char *b, size_t cap) {
  mg_cp_hdrs_t r = { rs, n };
  return mg_cp_invalidate((mg_str_t){ method, strlen(method) }, status, S("https"), S("api.example"),
                          S("/v1/items/7"), S(""), &r, b, cap, keys);
}

static void test_invalidation(void) {
  char b[1024];
  mg_str_t k[3];
  CHECK(inval("GET", 200, NULL, 0, k, b, sizeof(b)) == 0);
  CHECK(inval("HEAD", 200, NULL, 0, k, b, sizeof(b)) == 0);
  CHECK(inval("OPTIONS", 200, NULL, 0, k, b, sizeof(b)) == 0);
  CHECK(inval("POST", 500, NULL, 0, k, b, sizeof(b)) == 0); /* errors invalidate nothing */
  CHECK(inval("POST", 404, NULL, 0, k, b, sizeof(b)) == 0);
  CHECK(inval("DELETE", 204, NULL, 0, k, b, sizeof(b)) == 1 && mg_str_eq(k[0], S("GET https://api.example/v1/items/7")));
  mg_header_t a[] = { H("Location", "/v1/items/8"), H("Content-Location", "https://API.example:443/v1/items/7?x") };
  CHECK(inval("POST", 201, a, 2, k, b, sizeof(b)) == 3);
  CHECK(mg_str_eq(k[1], S("GET https://api.example/v1/items/8")));
  CHECK(mg_str_eq(k[2], S("GET https://api.example/v1/items/7?x")));
  mg_header_t c[] = { H("Location", "https://evil.example/v1/items/8"), H("Content-Location", "//other/x") };
  CHECK(inval("PUT", 200, c, 2, k, b, sizeof(b)) == 1); /* other origins: not touched */
  mg_header_t d[] = { H("Location", "http://api.example/v1/items/8") };
  CHECK(inval("PUT", 200, d, 1, k, b, sizeof(b)) == 1); /* another scheme is another origin */
  mg_header_t e[] = { H("Location", "9#frag"), H("Content-Location", "?page=2") };
  CHECK(inval("PATCH", 302, e, 2, k, b, sizeof(b)) == 3);
  CHECK(mg_str_eq(k[1], S("GET https://api.example/v1/items/9")));
  CHECK(mg_str_eq(k[2], S("GET https://api.example/v1/items/7?page=2")));
  mg_header_t f[] = { H("Location", "/v1/items/7"), H("Content-Location", "") };
  CHECK(inval("POST", 200, f, 2, k, b, sizeof(b)) == 1); /* the same as the target; empty ignored */
  mg_header_t g[] = { H("Location", "mailto:x@y") };
  CHECK(inval("POST", 200, g, 1, k, b, sizeof(b)) == 1);
  CHECK(inval("POST", 200, a, 2, k, b, 20) == MG_ELIMIT);
  /* a Location too long for what is left: the target is invalidated all the same */
  static char longref[3000];
  memset(longref, 'l', sizeof(longref));
  memcpy(longref, "/v1/", 4);
  mg_header_t l[] = { { S("Location"), { longref, sizeof(longref) } }, H("Content-Location", "/v1/items/8") };
  CHECK(inval("POST", 201, l, 2, k, b, 100) == 2);
  CHECK(mg_str_eq(k[0], S("GET https://api.example/v1/items/7")));
  CHECK(mg_str_eq(k[1], S("GET https://api.example/v1/items/8")));
}

/* -- hostile input -- */

static void test_hostile_input(void) {
  /* a long run of garbage and repeated headers: bounded, no crash, sane answers */
  static char big[8192];
  for (size_t i = 0; i < sizeof(big); i++) big[i] = "=,\"\\ ;x"[i % 7];
  mg_header_t h[64];
  for (int i = 0; i < 64; i++) h[i] = (mg_header_t){ S("Cache-Control"), { big, sizeof(big) } };
  h[63] = (mg_header_t){ S("Cache-Control"), S("max-age=10") };
  mg_cp_hdrs_t hs = { h, 64 };
  mg_cc_t cc;
  mg_cc_parse(&cc, &hs, 0);
  CHECK(cc.max_age == 10);
  mg_cc_t c = cc1("max-age=18446744073709551616, s-maxage=9223372036854775808", 0);
  CHECK(c.max_age == MG_CP_DELTA_MAX && c.s_maxage == MG_CP_DELTA_MAX);
  c = cc1("no-cache=\"", 0); /* unterminated field list */
  CHECK(c.flags & MG_CC_NO_CACHE);
  c = cc1("\x01\x02\xff, max-age=1", 0);
  CHECK(c.max_age == 1);
  /* a huge lifetime and a huge age never overflow the decision */
  mg_header_t rs[] = { H("Cache-Control", "max-age=99999999999999999"), H("Age", "99999999999999999") };
  mg_cp_hdrs_t r = HS(rs);
  mg_cp_meta_t m;
  CHECK(mg_cp_meta_init(&m, S("GET"), &none, 200, &r, 0, 0, &opts) == MG_CP_OK);
  mg_cp_decision_t d;
  mg_cp_decide(&m, NULL, INT64_C(1) << 40, &d);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.age == MG_CP_DELTA_MAX + (INT64_C(1) << 40));
  mg_cp_decide(&m, NULL, 0, &d);
  CHECK(d.verdict == MG_CP_REVALIDATE && d.ttl == 0); /* age 2^31 == lifetime 2^31: stale */
  /* Date garbage in every form */
  CHECK(mg_cp_date(S("Sun, 06 Nov 1994 08:49:37 GM")) == -1);
  CHECK(mg_cp_date(S("Sun, 06 Nov 99999 08:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("Sunday, 06-Nov-94 08:49:37 GMT")) == T0);
  CHECK(mg_cp_date(S("Funday, 06-Nov-94 08:49:37 GMT")) == -1);
  CHECK(mg_cp_date(S("Sun Nov 6 08:49:37 1994")) == -1);
  CHECK(mg_cp_date((mg_str_t){ big, sizeof(big) }) == -1);
  /* empty slices with no memory behind them (a header with an empty value) */
  mg_header_t nul[] = { { S("Cache-Control"), { NULL, 0 } }, { S("Date"), { NULL, 0 } }, { S("Vary"), { NULL, 0 } },
                        { S("Location"), { NULL, 0 } }, { S("ETag"), { NULL, 0 } }, { S("Expires"), { NULL, 0 } } };
  mg_cp_hdrs_t nh = HS(nul);
  mg_cc_parse(&cc, &nh, 1);
  CHECK(cc.flags == 0 && cc.invalid == 0);
  CHECK(mg_cp_date((mg_str_t){ NULL, 0 }) == -1);
  CHECK(mg_cp_meta_init(&m, S("GET"), &none, 200, &nh, 5, 5, &opts) == MG_CP_OK && m.lifetime == 0 && m.date_value == 5);
  char kb[256];
  size_t vl;
  CHECK(mg_cp_vary_key(&nh, &nh, kb, sizeof(kb), &vl) == 0 && vl == 0);
  mg_str_t keys[3];
  CHECK(mg_cp_invalidate(S("POST"), 200, S("http"), (mg_str_t){ NULL, 0 }, (mg_str_t){ NULL, 0 },
                         (mg_str_t){ NULL, 0 }, &nh, kb, sizeof(kb), keys) == 1 &&
        mg_str_eq(keys[0], S("GET http:///")));
  mg_header_t out[2];
  CHECK(mg_cp_conditional(&nh, out) == 0);
  /* a trailing backslash inside quotes at the very end */
  c = cc1("x=\"a\\\", max-age=3", 0); /* the escaped quote runs to the end: one bad directive */
  CHECK(c.max_age == -1 && c.invalid == 0);
  c = cc1("\"a\\", 0); /* junk ending in a backslash */
  CHECK(c.flags == 0 && c.invalid == 1);
}

int main(void) {
  static const t_case_t cases[] = {
    T(test_date_formats), T(test_delta_seconds), T(test_cc_tokens_and_values), T(test_cc_field_lists),
    T(test_cc_conflicts_most_restrictive), T(test_cc_invalid_values), T(test_pragma_no_cache),
    T(test_store_method_and_status), T(test_store_no_store_private_must_understand), T(test_store_authorization),
    T(test_store_set_cookie_vary_framing), T(test_header_stored), T(test_freshness_lifetime_order),
    T(test_freshness_heuristic), T(test_status_ttl), T(test_age_calculation), T(test_decide_fresh_and_stale),
    T(test_decide_request_directives), T(test_decide_response_directives), T(test_decide_stale_windows),
    T(test_cache_status_format), T(test_conditional_request), T(test_304_selects), T(test_merge_304),
    T(test_client_conditionals), T(test_etag_compare), T(test_primary_key), T(test_vary_key),
    T(test_invalidation), T(test_hostile_input),
  };
  return t_run("cachepol", cases, sizeof(cases) / sizeof(cases[0]));
}
