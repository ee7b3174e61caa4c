/* The HTTP caching rules as pure functions: see cachepol.h. The section numbers in
 * comments are RFC 9111's unless another RFC is named. */
#include "cachepol.h"

/* ---- small helpers ---- */

static int lc(int c) { return (unsigned)(c - 'A') < 26u ? c + ('a' - 'A') : c; }

static int is_ows(char c) { return c == ' ' || c == '\t'; }

const mg_header_t *mg_cp_get(const mg_cp_hdrs_t *hs, mg_str_t name) {
  for (size_t i = 0; hs && i < hs->n; i++)
    if (mg_str_caseeq(hs->h[i].name, name)) return &hs->h[i];
  return NULL;
}

static size_t count(const mg_cp_hdrs_t *hs, mg_str_t name) {
  size_t k = 0;
  for (size_t i = 0; hs && i < hs->n; i++) k += mg_str_caseeq(hs->h[i].name, name);
  return k;
}

int64_t mg_cp_delta(mg_str_t s) {
  if (s.len == 0) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < s.len; i++) {
    if (s.p[i] < '0' || s.p[i] > '9') return -1;
    if (v < MG_CP_DELTA_MAX) v = v * 10 + (s.p[i] - '0'); /* stops growing past the cap */
  }
  return v > MG_CP_DELTA_MAX ? MG_CP_DELTA_MAX : v;
}

/* ---- dates (RFC 9110 5.6.7) ---- */

static int num(const char *p, size_t n, int *out) {
  int v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return -1;
    v = v * 10 + (p[i] - '0');
  }
  *out = v;
  return 0;
}

static int month(const char *p) {
  static const char m[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  for (int i = 0; i < 12; i++)
    if (memcmp(m + 3 * i, p, 3) == 0) return i + 1;
  return 0;
}

static int wkday(const char *p, size_t n) {
  static const char *const d[] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
  static const char *const l[] = { "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday" };
  for (int i = 0; i < 7; i++)
    if ((n == 3 && memcmp(p, d[i], 3) == 0) || (n == strlen(l[i]) && memcmp(p, l[i], n) == 0)) return 1;
  return 0;
}

/* hh:mm:ss at p (8 bytes) */
static int hms(const char *p, int *h, int *mi, int *s) {
  if (p[2] != ':' || p[5] != ':') return -1;
  if (num(p, 2, h) || num(p + 3, 2, mi) || num(p + 6, 2, s)) return -1;
  return (*h > 23 || *mi > 59 || *s > 60) ? -1 : 0;
}

static int64_t epoch(int y, int mo, int d, int h, int mi, int s) {
  static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  if (y < 1900 || y > 9999 || mo < 1 || d < 1 || d > mdays[mo - 1]) return -1;
  int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo == 2 && d == 29 && !leap) return -1;
  /* days from civil (proleptic Gregorian), 1970-01-01 = 0 */
  int64_t yy = y - (mo <= 2);
  int64_t era = yy / 400;
  int64_t yoe = yy - era * 400;
  int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  int64_t days = era * 146097 + doe - 719468;
  return days * 86400 + h * 3600 + mi * 60 + (s > 59 ? 59 : s);
}

int64_t mg_cp_date(mg_str_t v) {
  mg_str_t s = mg_http_trim(v);
  const char *p = s.p;
  if (s.len < 24) return -1; /* the shortest form, asctime, has 24 bytes */
  int d, y, h, mi, sec, mo;
  if (s.len == 29 && p[3] == ',') { /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
    if (!wkday(p, 3) || p[4] != ' ' || p[7] != ' ' || p[11] != ' ' || p[16] != ' ' || p[25] != ' ' ||
        memcmp(p + 26, "GMT", 3) != 0)
      return -1;
    if (num(p + 5, 2, &d) || !(mo = month(p + 8)) || num(p + 12, 4, &y) || hms(p + 17, &h, &mi, &sec)) return -1;
    return epoch(y, mo, d, h, mi, sec);
  }
  if (s.len == 24 && p[3] == ' ') { /* asctime: Sun Nov  6 08:49:37 1994 */
    if (!wkday(p, 3) || p[7] != ' ' || p[10] != ' ' || p[19] != ' ') return -1;
    if (!(mo = month(p + 4))) return -1;
    if (p[8] == ' ') {
      if (num(p + 9, 1, &d)) return -1;
    } else if (num(p + 8, 2, &d)) return -1;
    if (hms(p + 11, &h, &mi, &sec) || num(p + 20, 4, &y)) return -1;
    return epoch(y, mo, d, h, mi, sec);
  }
  /* rfc850: Sunday, 06-Nov-94 08:49:37 GMT */
  const char *c = memchr(p, ',', s.len < 10 ? s.len : 10);
  if (!c || !wkday(p, (size_t)(c - p))) return -1;
  size_t rest = s.len - (size_t)(c - p);
  if (rest != 24) return -1;
  c++;
  if (c[0] != ' ' || c[3] != '-' || c[7] != '-' || c[10] != ' ' || c[19] != ' ' || memcmp(c + 20, "GMT", 3) != 0)
    return -1;
  if (num(c + 1, 2, &d) || !(mo = month(c + 4)) || num(c + 8, 2, &y) || hms(c + 11, &h, &mi, &sec)) return -1;
  /* RFC 9110 5.6.7: a two-digit year more than 50 years ahead is in the past
   * century; with no clock here, 70..99 is 19xx and 00..69 is 20xx. */
  y += y >= 70 ? 1900 : 2000;
  return epoch(y, mo, d, h, mi, sec);
}

/* ---- Cache-Control ---- */

/* A quoted-string at *i (on the opening quote): its content slice (escapes left in),
 * *esc when it had any. -1 when it does not end. */
static int quoted(mg_str_t v, size_t *i, mg_str_t *out, int *esc) {
  size_t j = *i + 1, start = j;
  *esc = 0;
  while (j < v.len && v.p[j] != '"') {
    if (v.p[j] == '\\') {
      if (j + 1 >= v.len) return -1;
      *esc = 1;
      j++;
    }
    j++;
  }
  if (j >= v.len) return -1;
  *out = (mg_str_t){ v.p + start, j - start };
  *i = j + 1;
  return 0;
}

/* Skips to the next comma outside quotes (or the end). */
static size_t skip_junk(mg_str_t v, size_t i) {
  int inq = 0;
  for (; i < v.len; i++) {
    if (inq && v.p[i] == '\\') i++;
    else if (v.p[i] == '"') inq = !inq;
    else if (!inq && v.p[i] == ',') break;
  }
  return i > v.len ? v.len : i; /* a trailing backslash steps past the end */
}

static void keep_min(int64_t *slot, int64_t v) {
  if (*slot < 0 || v < *slot) *slot = v;
}

/* no-cache="a, b" / private="a": the names into f[]; 0 when they do not all fit or
 * are not tokens (the caller then takes the unqualified directive). */
static int fields(mg_str_t arg, mg_str_t *f, uint8_t *n) {
  size_t pos = 0;
  mg_str_t tok;
  while (mg_http_next_token(arg, &pos, &tok)) {
    if (!mg_http_is_token(tok)) return 0;
    int dup = 0;
    for (uint8_t k = 0; k < *n; k++) dup |= mg_str_caseeq(f[k], tok);
    if (dup) continue;
    if (*n >= MG_CC_FIELDS_MAX) return 0;
    f[(*n)++] = tok;
  }
  return 1;
}

#define DIR_IS(n, lit) mg_http_name_is((n), (lit), sizeof(lit) - 1)

static void directive(mg_cc_t *cc, mg_str_t name, int has_arg, mg_str_t arg, int esc, int ok) {
  int64_t v = (ok && has_arg && !esc) ? mg_cp_delta(arg) : -1;
  if (DIR_IS(name, "max-age") || DIR_IS(name, "s-maxage")) {
    int64_t *slot = DIR_IS(name, "max-age") ? &cc->max_age : &cc->s_maxage;
    if (v < 0) { /* 4.2.1: invalid freshness information means stale */
      cc->invalid++;
      v = 0;
    }
    keep_min(slot, v);
  } else if (DIR_IS(name, "max-stale")) {
    if (!has_arg && ok) cc->flags |= MG_CC_MAX_STALE_ANY;
    else if (v >= 0) keep_min(&cc->max_stale, v);
    else cc->invalid++;
  } else if (DIR_IS(name, "min-fresh")) {
    if (v < 0) cc->invalid++;
    else if (v > cc->min_fresh) cc->min_fresh = v;
  } else if (DIR_IS(name, "stale-while-revalidate") || DIR_IS(name, "stale-if-error")) {
    if (v < 0) cc->invalid++;
    else keep_min(DIR_IS(name, "stale-if-error") ? &cc->sie : &cc->swr, v);
  } else if (DIR_IS(name, "no-cache") || DIR_IS(name, "private")) {
    int nc = DIR_IS(name, "no-cache");
    uint32_t whole = nc ? MG_CC_NO_CACHE : MG_CC_PRIVATE;
    uint32_t part = nc ? MG_CC_NO_CACHE_FIELDS : MG_CC_PRIVATE_FIELDS;
    if (!has_arg || !ok || esc || !fields(arg, nc ? cc->no_cache_f : cc->private_f, nc ? &cc->n_no_cache : &cc->n_private)) {
      if (has_arg && (!ok || esc)) cc->invalid++;
      cc->flags |= whole;
    } else {
      cc->flags |= part;
    }
  } else if (DIR_IS(name, "no-store")) cc->flags |= MG_CC_NO_STORE;
  else if (DIR_IS(name, "public")) cc->flags |= MG_CC_PUBLIC;
  else if (DIR_IS(name, "must-revalidate")) cc->flags |= MG_CC_MUST_REVALIDATE;
  else if (DIR_IS(name, "proxy-revalidate")) cc->flags |= MG_CC_PROXY_REVALIDATE;
  else if (DIR_IS(name, "must-understand")) cc->flags |= MG_CC_MUST_UNDERSTAND;
  else if (DIR_IS(name, "no-transform")) cc->flags |= MG_CC_NO_TRANSFORM;
  else if (DIR_IS(name, "only-if-cached")) cc->flags |= MG_CC_ONLY_IF_CACHED;
  else if (DIR_IS(name, "immutable")) cc->flags |= MG_CC_IMMUTABLE;
  /* unknown extensions are ignored (5.2.3) */
}

static void parse_value(mg_cc_t *cc, mg_str_t v) {
  size_t i = 0;
  while (i < v.len) {
    while (i < v.len && (is_ows(v.p[i]) || v.p[i] == ',')) i++;
    if (i >= v.len) break;
    size_t s = i;
    while (i < v.len && mg_http_is_tchar((unsigned char)v.p[i])) i++;
    mg_str_t name = { v.p + s, i - s };
    if (name.len == 0) { /* not a directive: skip it */
      cc->invalid++;
      i = skip_junk(v, i);
      continue;
    }
    int has_arg = 0, esc = 0, ok = 1;
    mg_str_t arg = { "", 0 };
    if (i < v.len && v.p[i] == '=') {
      has_arg = 1;
      i++;
      if (i < v.len && v.p[i] == '"') {
        if (quoted(v, &i, &arg, &esc) < 0) {
          ok = 0;
          i = v.len;
        }
      } else {
        size_t a = i;
        while (i < v.len && mg_http_is_tchar((unsigned char)v.p[i])) i++;
        arg = (mg_str_t){ v.p + a, i - a };
        if (arg.len == 0) ok = 0;
      }
    }
    while (i < v.len && is_ows(v.p[i])) i++;
    if (i < v.len && v.p[i] != ',') { /* "max-age=5 x", "max-age = 5": not the grammar */
      ok = 0;
      i = skip_junk(v, i);
    }
    if (!ok && !has_arg) cc->invalid++;
    directive(cc, name, has_arg, arg, esc, ok);
  }
}

void mg_cc_parse(mg_cc_t *cc, const mg_cp_hdrs_t *hs, int is_request) {
  memset(cc, 0, sizeof(*cc));
  cc->max_age = cc->s_maxage = cc->max_stale = cc->min_fresh = cc->swr = cc->sie = -1;
  int seen = 0;
  for (size_t i = 0; hs && i < hs->n; i++) {
    if (!MG_NAME_IS(hs->h[i].name, "cache-control")) continue;
    seen = 1;
    parse_value(cc, hs->h[i].value);
  }
  if (is_request && !seen) { /* 5.4: Pragma only counts without Cache-Control */
    for (size_t i = 0; hs && i < hs->n; i++)
      if (MG_NAME_IS(hs->h[i].name, "pragma") && mg_http_token_in_list(hs->h[i].value, MG_STR("no-cache")))
        cc->flags |= MG_CC_NO_CACHE | MG_CC_PRAGMA_NO_CACHE;
  }
}

/* ---- status codes (RFC 9110 15.1, 9111 3) ---- */

int mg_cp_status_heuristic(int status) {
  switch (status) {
  case 200: case 203: case 204: case 206: case 300: case 301: case 308:
  case 404: case 405: case 410: case 414: case 501: return 1;
  default: return 0;
  }
}

/* The final statuses this cache stores: a complete response it can send again as
 * it came. Not 206 (ranges are answered from a full object), not 304 (it updates,
 * 3.2), nor 1xx, nor statuses with connection-bound meaning (407, 101). */
int mg_cp_status_understood(int status) {
  switch (status) {
  case 200: case 203: case 204: case 300: case 301: case 302: case 303: case 307: case 308:
  case 400: case 403: case 404: case 405: case 410: case 414: case 451:
  case 500: case 501: case 502: case 503: case 504: return 1;
  default: return 0;
  }
}

/* ---- storing ---- */

static const char *const ns_names[MG_CP_NS_MAX] = {
  "ok", "method", "status", "no-store", "private", "authorization", "set-cookie",
  "vary-star", "framing", "not-cacheable",
};

const char *mg_cp_ns_reason(int why) {
  return why >= 0 && why < MG_CP_NS_MAX ? ns_names[why] : "unknown";
}

static int64_t date_or(const mg_cp_hdrs_t *res, int64_t fallback) {
  const mg_header_t *d = mg_cp_get(res, MG_STR("date"));
  int64_t v = d ? mg_cp_date(d->value) : -1;
  return v < 0 ? fallback : v;
}

int64_t mg_cp_lifetime(const mg_cc_t *cc, int status, const mg_cp_hdrs_t *res, int64_t response_time,
                       const mg_cp_opts_t *o, int *heuristic) {
  *heuristic = 0;
  if (cc->s_maxage >= 0) return cc->s_maxage; /* shared cache: s-maxage first */
  if (cc->max_age >= 0) return cc->max_age;
  int64_t date = date_or(res, response_time);
  size_t ne = count(res, MG_STR("expires"));
  if (ne) {
    /* 5.3: an invalid Expires (or several of them) is a time in the past */
    if (ne > 1) return 0;
    int64_t e = mg_cp_date(mg_cp_get(res, MG_STR("expires"))->value);
    return e < 0 || e <= date ? 0 : e - date;
  }
  if (o && o->status_ttl_set) return o->status_ttl; /* the operator's lifetime for this status */
  if (!o || o->heuristic_max <= 0) return 0;
  if (!mg_cp_status_heuristic(status) && !(cc->flags & MG_CC_PUBLIC)) return 0;
  const mg_header_t *lm = mg_cp_get(res, MG_STR("last-modified"));
  int64_t l = lm ? mg_cp_date(lm->value) : -1;
  if (l < 0 || l > date) return 0;
  int64_t h = (date - l) / 100 * o->heuristic_pct + (date - l) % 100 * o->heuristic_pct / 100;
  if (h > o->heuristic_max) h = o->heuristic_max;
  *heuristic = h > 0;
  return h;
}

/* A Content-Length number: up to 18 digits (delta-seconds' cap at 2^31 would make
 * two different big lengths look alike), or -1. */
static int64_t length(mg_str_t s) {
  if (s.len == 0 || s.len > 18) return -1;
  int64_t v = 0;
  for (size_t i = 0; i < s.len; i++) {
    if (s.p[i] < '0' || s.p[i] > '9') return -1;
    v = v * 10 + (s.p[i] - '0');
  }
  return v;
}

/* Content-Length values (one header or a list, several headers) all the same
 * number, and no Transfer-Encoding beside them (RFC 9112 6.3). */
static int framing_ok(const mg_cp_hdrs_t *res) {
  int64_t len = -1;
  int has_cl = 0;
  for (size_t i = 0; i < res->n; i++) {
    if (!MG_NAME_IS(res->h[i].name, "content-length")) continue;
    has_cl = 1;
    size_t pos = 0;
    mg_str_t tok;
    int any = 0;
    while (mg_http_next_token(res->h[i].value, &pos, &tok)) {
      int64_t v = length(tok);
      if (v < 0) return 0;
      if (len >= 0 && v != len) return 0;
      len = v;
      any = 1;
    }
    if (!any) return 0;
  }
  return !(has_cl && mg_cp_get(res, MG_STR("transfer-encoding")));
}

static int vary_star(const mg_cp_hdrs_t *res) {
  for (size_t i = 0; i < res->n; i++)
    if (MG_NAME_IS(res->h[i].name, "vary") && mg_http_token_in_list(res->h[i].value, MG_STR("*"))) return 1;
  return 0;
}

int mg_cp_meta_init(mg_cp_meta_t *m, mg_str_t method, const mg_cp_hdrs_t *req, int status, const mg_cp_hdrs_t *res,
                    int64_t request_time, int64_t response_time, const mg_cp_opts_t *o) {
  memset(m, 0, sizeof(*m));
  m->status = status;
  m->request_time = request_time;
  m->response_time = response_time;
  m->swr = m->sie = m->last_modified = -1;
  if (!mg_str_eq(method, MG_STR("GET"))) return MG_CP_NS_METHOD;
  if (!mg_cp_status_understood(status)) return MG_CP_NS_STATUS;
  mg_cc_t rq, rs;
  mg_cc_parse(&rq, req, 1);
  mg_cc_parse(&rs, res, 0);
  /* 5.2.2.3: must-understand lets a cache that understands the status ignore
   * no-store; every status that reaches here is understood. */
  if ((rq.flags & MG_CC_NO_STORE) || ((rs.flags & MG_CC_NO_STORE) && !(rs.flags & MG_CC_MUST_UNDERSTAND)))
    return MG_CP_NS_NO_STORE;
  if (rs.flags & MG_CC_PRIVATE) return MG_CP_NS_PRIVATE;
  if (mg_cp_get(req, MG_STR("authorization")) &&
      !(rs.flags & (MG_CC_PUBLIC | MG_CC_MUST_REVALIDATE)) && rs.s_maxage < 0)
    return MG_CP_NS_AUTH; /* 3.5 */
  if (mg_cp_get(res, MG_STR("set-cookie")) && !(o && o->allow_set_cookie)) return MG_CP_NS_SET_COOKIE;
  if (vary_star(res)) return MG_CP_NS_VARY_STAR;
  if (!framing_ok(res)) return MG_CP_NS_FRAMING;
  int explicit = rs.max_age >= 0 || rs.s_maxage >= 0 || mg_cp_get(res, MG_STR("expires"));
  if (!explicit && !(rs.flags & MG_CC_PUBLIC) && !mg_cp_status_heuristic(status) && !(o && o->status_ttl_set))
    return MG_CP_NS_NOT_CACHEABLE;

  int heur;
  m->date_value = date_or(res, response_time);
  const mg_header_t *age = mg_cp_get(res, MG_STR("age"));
  int64_t av = age ? mg_cp_delta(mg_http_trim(age->value)) : -1;
  m->age_value = av < 0 ? 0 : av;
  m->lifetime = mg_cp_lifetime(&rs, status, res, response_time, o, &heur);
  m->heuristic = (uint8_t)heur;
  const mg_header_t *lm = mg_cp_get(res, MG_STR("last-modified"));
  m->last_modified = lm ? mg_cp_date(lm->value) : -1;
  m->cc_flags = rs.flags;
  m->swr = rs.swr;
  m->sie = rs.sie;
  m->s_maxage = rs.s_maxage >= 0;
  m->has_etag = mg_cp_get(res, MG_STR("etag")) != NULL;
  m->has_validator = m->has_etag || m->last_modified >= 0;
  return MG_CP_OK;
}

int64_t mg_cp_age(const mg_cp_meta_t *m, int64_t now) {
  int64_t apparent_age = m->response_time - m->date_value;
  if (apparent_age < 0) apparent_age = 0;
  int64_t response_delay = m->response_time - m->request_time;
  if (response_delay < 0) response_delay = 0; /* a clock that went back */
  int64_t corrected_age_value = m->age_value + response_delay;
  int64_t corrected_initial_age = apparent_age > corrected_age_value ? apparent_age : corrected_age_value;
  int64_t resident_time = now - m->response_time;
  if (resident_time < 0) resident_time = 0;
  return corrected_initial_age + resident_time;
}

int mg_cp_header_stored(mg_str_t name, const mg_cc_t *res_cc, const mg_cp_hdrs_t *res) {
  if (mg_http_is_hop_by_hop(name)) return 0;
  for (size_t i = 0; res && i < res->n; i++)
    if (MG_NAME_IS(res->h[i].name, "connection") && mg_http_token_in_list(res->h[i].value, name)) return 0;
  if (res_cc) {
    for (uint8_t k = 0; k < res_cc->n_private; k++)
      if (mg_str_caseeq(res_cc->private_f[k], name)) return 0;
    for (uint8_t k = 0; k < res_cc->n_no_cache; k++)
      if (mg_str_caseeq(res_cc->no_cache_f[k], name)) return 0;
  }
  return 1;
}

/* ---- answering ---- */

void mg_cp_decide(const mg_cp_meta_t *m, const mg_cc_t *rq, int64_t now, mg_cp_decision_t *d) {
  memset(d, 0, sizeof(*d));
  int oic = rq && (rq->flags & MG_CC_ONLY_IF_CACHED);
  if (!m) {
    d->verdict = MG_CP_MISS;
    d->reason = oic ? MG_CP_R_ONLY_IF_CACHED : MG_CP_R_NOT_STORED;
    if (oic) d->cs.detail = "only-if-cached";
    else d->cs.fwd = MG_CS_FWD_URI_MISS;
    return;
  }
  d->age = mg_cp_age(m, now);
  d->ttl = m->lifetime - d->age;
  d->cs.has_ttl = 1;
  d->cs.ttl = d->ttl;
  int64_t staleness = d->ttl > 0 ? 0 : -d->ttl;
  /* 4.2.4: must-revalidate, and for a shared cache proxy-revalidate and s-maxage,
   * forbid serving stale, even on error */
  int strict = (m->cc_flags & (MG_CC_MUST_REVALIDATE | MG_CC_PROXY_REVALIDATE)) || m->s_maxage;
  int64_t sie = m->sie;
  if (rq && rq->sie > sie) sie = rq->sie;
  d->stale_if_error_ok = !strict && !(m->cc_flags & MG_CC_NO_CACHE) && sie >= 0 && staleness <= sie;

  int reason = MG_CP_R_NONE;
  if (rq && (rq->flags & MG_CC_NO_CACHE)) reason = MG_CP_R_REQ_NO_CACHE;
  else if (m->cc_flags & MG_CC_NO_CACHE) reason = MG_CP_R_RES_NO_CACHE;
  else if (rq && rq->max_age >= 0 && d->age > rq->max_age) reason = MG_CP_R_REQ_MAX_AGE;
  else if (rq && rq->min_fresh >= 0 && d->ttl < rq->min_fresh) reason = MG_CP_R_MIN_FRESH;
  else if (d->ttl > 0) {
    d->verdict = MG_CP_HIT;
    d->cs.hit = 1;
    return;
  } else {
    reason = MG_CP_R_STALE;
    if (!strict) {
      int any = rq && (rq->flags & MG_CC_MAX_STALE_ANY) && rq->max_stale < 0;
      if (any || (rq && rq->max_stale >= 0 && staleness <= rq->max_stale)) {
        d->verdict = MG_CP_STALE_SERVE;
        d->reason = MG_CP_R_MAX_STALE;
        d->cs.hit = 1;
        return;
      }
      if (m->swr >= 0 && staleness <= m->swr) {
        d->verdict = MG_CP_STALE_SERVE;
        d->reason = MG_CP_R_SWR;
        d->cs.hit = 1;
        return;
      }
    }
  }
  if (oic) { /* 5.2.1.7: a stored response or 504, never the origin */
    d->verdict = MG_CP_MISS;
    d->reason = MG_CP_R_ONLY_IF_CACHED;
    d->cs.detail = "only-if-cached";
    return;
  }
  d->verdict = MG_CP_REVALIDATE;
  d->reason = reason;
  d->cs.fwd = (reason == MG_CP_R_STALE || reason == MG_CP_R_RES_NO_CACHE) ? MG_CS_FWD_STALE : MG_CS_FWD_REQUEST;
}

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t n) {
  if (at == (size_t)-1 || at + n > cap) return (size_t)-1;
  if (n == 0) return at; /* s may be NULL then */
  memcpy(buf + at, s, n);
  return at + n;
}

static size_t put_int(char *buf, size_t cap, size_t at, int64_t v) {
  char d[MG_U64_DEC + 1];
  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
  char *p = mg_u64_dec(d, u);
  if (v < 0) at = put(buf, cap, at, "-", 1);
  return put(buf, cap, at, p, (size_t)(d + MG_U64_DEC - p));
}

#define PUTS(lit) at = put(buf, cap, at, lit, sizeof(lit) - 1)

size_t mg_cp_status_format(char *buf, size_t cap, mg_str_t name, const mg_cp_status_t *s) {
  static const char *const fwd[] = { "", "bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale" };
  size_t at = put(buf, cap, 0, name.p, name.len);
  if (s->hit) PUTS("; hit");
  if (s->fwd && s->fwd < sizeof(fwd) / sizeof(fwd[0])) {
    PUTS("; fwd=");
    at = put(buf, cap, at, fwd[s->fwd], strlen(fwd[s->fwd]));
  }
  if (s->fwd_status) {
    PUTS("; fwd-status=");
    at = put_int(buf, cap, at, s->fwd_status);
  }
  if (s->stored) PUTS("; stored");
  if (s->collapsed) PUTS("; collapsed");
  if (s->has_ttl) {
    PUTS("; ttl=");
    at = put_int(buf, cap, at, s->ttl);
  }
  if (s->detail) {
    PUTS("; detail=");
    at = put(buf, cap, at, s->detail, strlen(s->detail));
  }
  return at == (size_t)-1 ? 0 : at;
}

/* ---- validation ---- */

size_t mg_cp_conditional(const mg_cp_hdrs_t *stored, mg_header_t out[2]) {
  size_t n = 0;
  const mg_header_t *e = mg_cp_get(stored, MG_STR("etag"));
  const mg_header_t *l = mg_cp_get(stored, MG_STR("last-modified"));
  if (e && e->value.len) out[n++] = (mg_header_t){ MG_STR("If-None-Match"), mg_http_trim(e->value) };
  if (l && mg_cp_date(l->value) >= 0) out[n++] = (mg_header_t){ MG_STR("If-Modified-Since"), mg_http_trim(l->value) };
  return n;
}

static int etag_weak(mg_str_t t) { return t.len >= 2 && t.p[0] == 'W' && t.p[1] == '/'; }

/* A well-formed entity-tag: [W/] DQUOTE *etagc DQUOTE */
static int etag_ok(mg_str_t t) {
  if (etag_weak(t)) t.p += 2, t.len -= 2;
  if (t.len < 2 || t.p[0] != '"' || t.p[t.len - 1] != '"') return 0;
  for (size_t i = 1; i + 1 < t.len; i++) {
    unsigned char c = (unsigned char)t.p[i];
    if (c == '"' || c < 0x21 || c == 0x7f) return 0;
  }
  return 1;
}

int mg_cp_etag_eq(mg_str_t a, mg_str_t b, int weak) {
  a = mg_http_trim(a);
  b = mg_http_trim(b);
  if (!etag_ok(a) || !etag_ok(b)) return 0;
  if (!weak && (etag_weak(a) || etag_weak(b))) return 0;
  if (etag_weak(a)) a.p += 2, a.len -= 2;
  if (etag_weak(b)) b.p += 2, b.len -= 2;
  return mg_str_eq(a, b);
}

/* The next entity-tag of a list (commas may sit inside the quotes). 1 and *t, 0 at
 * the end, -1 on a malformed element. */
static int next_etag(mg_str_t l, size_t *pos, mg_str_t *t) {
  size_t i = *pos;
  while (i < l.len && (is_ows(l.p[i]) || l.p[i] == ',')) i++;
  if (i >= l.len) return 0;
  size_t s = i;
  if (l.len - i >= 2 && l.p[i] == 'W' && l.p[i + 1] == '/') i += 2;
  if (i >= l.len || l.p[i] != '"') return -1;
  const char *q = memchr(l.p + i + 1, '"', l.len - i - 1);
  if (!q) return -1;
  i = (size_t)(q - l.p) + 1;
  *t = (mg_str_t){ l.p + s, i - s };
  while (i < l.len && is_ows(l.p[i])) i++;
  if (i < l.len && l.p[i] != ',') return -1;
  *pos = i;
  return etag_ok(*t) ? 1 : -1;
}

/* If-Match / If-None-Match against the stored ETag: 1 when it matches. */
static int etag_list_match(const mg_cp_hdrs_t *req, mg_str_t hname, const mg_header_t *etag, int weak) {
  for (size_t i = 0; i < req->n; i++) {
    if (!mg_str_caseeq(req->h[i].name, hname)) continue;
    mg_str_t v = mg_http_trim(req->h[i].value);
    if (v.len == 1 && v.p[0] == '*') return 1; /* a stored response exists */
    size_t pos = 0;
    mg_str_t t;
    int r;
    while ((r = next_etag(v, &pos, &t)) == 1)
      if (etag && mg_cp_etag_eq(t, etag->value, weak)) return 1;
  }
  return 0;
}

int mg_cp_client_cond(mg_str_t method, const mg_cp_hdrs_t *req, const mg_cp_hdrs_t *stored, const mg_cp_meta_t *m) {
  size_t i = 0; /* most requests have no If-*: the stored headers are then not looked at */
  while (i < req->n && !(req->h[i].name.len > 3 && (req->h[i].name.p[0] | 0x20) == 'i' &&
                         (req->h[i].name.p[1] | 0x20) == 'f' && req->h[i].name.p[2] == '-'))
    i++;
  if (i == req->n) return 200;
  if (m && (m->status < 200 || m->status > 299)) return 200; /* RFC 9110 13.2.1 */
  const mg_header_t *etag = mg_cp_get(stored, MG_STR("etag"));
  const mg_header_t *lmh = mg_cp_get(stored, MG_STR("last-modified"));
  int64_t lm = lmh ? mg_cp_date(lmh->value) : -1;
  int get = mg_str_eq(method, MG_STR("GET")) || mg_str_eq(method, MG_STR("HEAD"));
  /* RFC 9110 13.2.2 steps 1-2 */
  if (mg_cp_get(req, MG_STR("if-match"))) {
    if (!etag_list_match(req, MG_STR("if-match"), etag, 0)) return 412;
  } else {
    const mg_header_t *ius = mg_cp_get(req, MG_STR("if-unmodified-since"));
    int64_t t = ius ? mg_cp_date(ius->value) : -1;
    if (t >= 0 && lm >= 0 && lm > t) return 412;
  }
  /* step 3 */
  if (mg_cp_get(req, MG_STR("if-none-match"))) {
    if (etag_list_match(req, MG_STR("if-none-match"), etag, 1)) return get ? 304 : 412;
    return 200;
  }
  /* step 4 */
  const mg_header_t *ims = mg_cp_get(req, MG_STR("if-modified-since"));
  if (!get || !ims) return 200;
  int64_t t = mg_cp_date(ims->value);
  if (t < 0) return 200;
  int64_t ref = lm >= 0 ? lm : date_or(stored, m ? m->date_value : -1);
  if (ref < 0) return 200;
  return ref <= t ? 304 : 200;
}

int mg_cp_304_selects(const mg_cp_hdrs_t *stored, const mg_cp_hdrs_t *res) {
  const mg_header_t *ne = mg_cp_get(res, MG_STR("etag")), *se = mg_cp_get(stored, MG_STR("etag"));
  const mg_header_t *nl = mg_cp_get(res, MG_STR("last-modified")), *sl = mg_cp_get(stored, MG_STR("last-modified"));
  if (ne) { /* strong: strong comparison; weak: weak comparison (4.3.4) */
    if (!se) return 0;
    return mg_cp_etag_eq(ne->value, se->value, etag_weak(mg_http_trim(ne->value)));
  }
  if (nl) {
    if (!sl) return 0;
    int64_t a = mg_cp_date(nl->value), b = mg_cp_date(sl->value);
    return a >= 0 && a == b;
  }
  return !se && !sl; /* no validator on either side */
}

/* Headers a 304 never changes: the stored body's own description (3.2) and the
 * message's framing. */
static int body_bound(mg_str_t n) {
  return MG_NAME_IS(n, "content-length") || MG_NAME_IS(n, "content-encoding") ||
         MG_NAME_IS(n, "content-range") || MG_NAME_IS(n, "transfer-encoding");
}

int mg_cp_merge_304(const mg_cp_hdrs_t *stored, const mg_cp_hdrs_t *res, const mg_cc_t *res_cc, mg_header_t *out,
                    size_t cap) {
  size_t n = 0;
#define UPD(name) (mg_cp_header_stored((name), res_cc, res) && !body_bound(name))
  for (size_t i = 0; i < stored->n; i++) {
    mg_str_t name = stored->h[i].name;
    int in304 = 0;
    for (size_t j = 0; j < res->n && !in304; j++) in304 = mg_str_caseeq(res->h[j].name, name) && UPD(name);
    if (!in304) {
      /* Age describes the message it came in: the old one goes, a new one comes
       * only with the 304 */
      if (MG_NAME_IS(name, "age")) continue;
      if (n >= cap) return MG_ELIMIT;
      out[n++] = stored->h[i];
      continue;
    }
    int first = 1;
    for (size_t k = 0; k < i && first; k++) first = !mg_str_caseeq(stored->h[k].name, name);
    if (!first) continue;
    for (size_t j = 0; j < res->n; j++) {
      if (!mg_str_caseeq(res->h[j].name, name)) continue;
      if (n >= cap) return MG_ELIMIT;
      out[n++] = res->h[j];
    }
  }
  for (size_t j = 0; j < res->n; j++) { /* names the stored response did not have */
    mg_str_t name = res->h[j].name;
    if (!UPD(name) || mg_cp_get(stored, name)) continue;
    if (n >= cap) return MG_ELIMIT;
    out[n++] = res->h[j];
  }
#undef UPD
  return (int)n;
}

int mg_cp_304_keeps(mg_str_t n) {
  return MG_NAME_IS(n, "content-location") || MG_NAME_IS(n, "date") || MG_NAME_IS(n, "etag") ||
         MG_NAME_IS(n, "vary") || MG_NAME_IS(n, "cache-control") || MG_NAME_IS(n, "expires") ||
         MG_NAME_IS(n, "last-modified") || MG_NAME_IS(n, "age");
}

/* ---- keys ---- */

static size_t put_lower(char *buf, size_t cap, size_t at, mg_str_t s) {
  if (at == (size_t)-1 || at + s.len > cap) return (size_t)-1;
  if (s.len == 0) return at;
  for (size_t i = 0; i < s.len; i++) buf[at + i] = (char)lc((unsigned char)s.p[i]);
  return at + s.len;
}

size_t mg_cp_key(char *buf, size_t cap, mg_str_t method, mg_str_t scheme, mg_str_t host, mg_str_t path,
                 mg_str_t query) {
  if (mg_str_eq(method, MG_STR("HEAD"))) method = MG_STR("GET");
  /* a default port (or an empty one) is no port: "h:80" is "h" over http */
  const char *colon = NULL;
  for (size_t i = host.len; i > 0; i--) {
    if (host.p[i - 1] == ']') break;
    if (host.p[i - 1] == ':') {
      colon = host.p + i - 1;
      break;
    }
  }
  if (colon) {
    mg_str_t port = { colon + 1, (size_t)(host.p + host.len - colon - 1) };
    if (port.len == 0 || (mg_str_eq(port, MG_STR("80")) && mg_str_caseeq(scheme, MG_STR("http"))) ||
        (mg_str_eq(port, MG_STR("443")) && mg_str_caseeq(scheme, MG_STR("https"))))
      host.len = (size_t)(colon - host.p);
  }
  size_t at = put(buf, cap, 0, method.p, method.len);
  PUTS(" ");
  at = put_lower(buf, cap, at, scheme);
  PUTS("://");
  at = put_lower(buf, cap, at, host);
  if (path.len == 0) PUTS("/");
  else at = put(buf, cap, at, path.p, path.len);
  if (query.len) {
    PUTS("?");
    at = put(buf, cap, at, query.p, query.len);
  }
  return at == (size_t)-1 ? 0 : at;
}

/* One request header value normalized onto buf: list elements trimmed, empty ones
 * dropped, whitespace runs one space, none around ';' and '=', quoted strings as
 * they are. */
static size_t put_norm(char *buf, size_t cap, size_t at, mg_str_t v, int *first) {
  size_t i = 0;
  while (i < v.len && at != (size_t)-1) {
    while (i < v.len && (is_ows(v.p[i]) || v.p[i] == ',')) i++;
    if (i >= v.len) break;
    if (!*first) PUTS(",");
    *first = 0;
    int space = 0;
    char prev = 0;
    while (i < v.len && v.p[i] != ',' && at != (size_t)-1) {
      char c = v.p[i];
      if (is_ows(c)) {
        space = 1;
        i++;
        continue;
      }
      if (space && c != ';' && c != '=' && prev != ';' && prev != '=') PUTS(" ");
      space = 0;
      if (c == '"') {
        size_t s = i++;
        while (i < v.len && v.p[i] != '"') i += (v.p[i] == '\\') ? 2 : 1;
        if (i < v.len) i++;
        else i = v.len;
        at = put(buf, cap, at, v.p + s, i - s);
        prev = '"';
        continue;
      }
      at = put(buf, cap, at, &c, 1);
      prev = c;
      i++;
    }
  }
  return at;
}

static int lcmp(mg_str_t a, mg_str_t b) {
  size_t n = a.len < b.len ? a.len : b.len;
  for (size_t i = 0; i < n; i++) {
    int x = lc((unsigned char)a.p[i]), y = lc((unsigned char)b.p[i]);
    if (x != y) return x - y;
  }
  return a.len < b.len ? -1 : a.len > b.len;
}

int mg_cp_vary_key(const mg_cp_hdrs_t *res, const mg_cp_hdrs_t *req, char *buf, size_t cap, size_t *len) {
  mg_str_t names[MG_CP_VARY_MAX];
  size_t nn = 0;
  *len = 0;
  for (size_t i = 0; res && i < res->n; i++) {
    if (!MG_NAME_IS(res->h[i].name, "vary")) continue;
    size_t pos = 0;
    mg_str_t tok;
    while (mg_http_next_token(res->h[i].value, &pos, &tok)) {
      if (tok.len == 1 && tok.p[0] == '*') return MG_CP_VARY_STAR;
      size_t k = 0;
      while (k < nn && lcmp(names[k], tok) < 0) k++; /* sorted insert, no duplicates */
      if (k < nn && lcmp(names[k], tok) == 0) continue;
      if (nn == MG_CP_VARY_MAX) return MG_ELIMIT;
      memmove(names + k + 1, names + k, (nn - k) * sizeof(names[0]));
      names[k] = tok;
      nn++;
    }
  }
  size_t at = 0;
  for (size_t k = 0; k < nn; k++) {
    at = put_lower(buf, cap, at, names[k]);
    int first = 1, any = 0;
    for (size_t i = 0; req && i < req->n; i++) {
      if (!mg_str_caseeq(req->h[i].name, names[k])) continue;
      if (!any) PUTS(":");
      any = 1;
      at = put_norm(buf, cap, at, req->h[i].value, &first);
    }
    PUTS("\n");
  }
  if (at == (size_t)-1) return MG_ELIMIT;
  *len = at;
  return 0;
}

/* ---- invalidation ---- */

static int safe_method(mg_str_t m) {
  return mg_str_eq(m, MG_STR("GET")) || mg_str_eq(m, MG_STR("HEAD")) || mg_str_eq(m, MG_STR("OPTIONS")) ||
         mg_str_eq(m, MG_STR("TRACE"));
}

/* "GET scheme://host" of a key: its length (up to the path's '/') */
static size_t origin_len(mg_str_t k) {
  const char *s = k.len > 3 ? memchr(k.p, ':', k.len) : NULL;
  if (!s || (size_t)(k.p + k.len - s) < 3) return k.len;
  const char *p = memchr(s + 3, '/', (size_t)(k.p + k.len - s - 3));
  return p ? (size_t)(p - k.p) : k.len;
}

/* Resolves a Location / Content-Location reference against the target (RFC 3986
 * 5.2, without dot-segment removal) and writes its key at buf[at]. 0 and *out, or
 * -1 when it cannot be resolved. */
static int ref_key(mg_str_t ref, mg_str_t scheme, mg_str_t host, mg_str_t path, char *buf, size_t cap, size_t at,
                   mg_str_t *out) {
  ref = mg_http_trim(ref);
  if (ref.len == 0) return -1;
  const char *hash = memchr(ref.p, '#', ref.len);
  if (hash) ref.len = (size_t)(hash - ref.p);
  if (ref.len == 0) return -1;
  mg_str_t rs = scheme, rh = host, rp, rq = { "", 0 };
  char dir[2048];
  int auth = 0;
  size_t i = 0;
  while (i < ref.len && (mg_http_is_tchar((unsigned char)ref.p[i]) && ref.p[i] != '%' && ref.p[i] != '*')) i++;
  if (i > 0 && i < ref.len && ref.p[i] == ':' && ((ref.p[0] | 0x20) >= 'a' && (ref.p[0] | 0x20) <= 'z')) {
    rs = (mg_str_t){ ref.p, i }; /* scheme:... */
    ref.p += i + 1;
    ref.len -= i + 1;
    if (ref.len < 2 || ref.p[0] != '/' || ref.p[1] != '/') return -1;
  }
  if (ref.len >= 2 && ref.p[0] == '/' && ref.p[1] == '/') { /* //authority/path */
    size_t a = 2;
    while (a < ref.len && ref.p[a] != '/' && ref.p[a] != '?') a++;
    rh = (mg_str_t){ ref.p + 2, a - 2 };
    auth = 1;
    ref.p += a;
    ref.len -= a;
  }
  const char *q = memchr(ref.p, '?', ref.len);
  rp = (mg_str_t){ ref.p, q ? (size_t)(q - ref.p) : ref.len };
  if (q) rq = (mg_str_t){ q + 1, (size_t)(ref.p + ref.len - q - 1) };
  if (rp.len == 0 && !auth) rp = path; /* "?q" keeps the target's path */
  else if (rp.len && rp.p[0] != '/') {             /* relative: the target's directory + ref */
    const char *slash = NULL;
    for (size_t k = path.len; k > 0 && !slash; k--)
      if (path.p[k - 1] == '/') slash = path.p + k - 1;
    size_t dl = slash ? (size_t)(slash - path.p) + 1 : 1;
    if (dl + rp.len > sizeof(dir)) return -1;
    if (slash) memcpy(dir, path.p, dl);
    else dir[0] = '/';
    memcpy(dir + dl, rp.p, rp.len);
    rp = (mg_str_t){ dir, dl + rp.len };
  }
  size_t n = mg_cp_key(buf + at, cap - at, MG_STR("GET"), rs, rh, rp, rq);
  if (n == 0) return -2;
  *out = (mg_str_t){ buf + at, n };
  return 0;
}

int mg_cp_invalidate(mg_str_t method, int status, mg_str_t scheme, mg_str_t host, mg_str_t path, mg_str_t query,
                     const mg_cp_hdrs_t *res, char *buf, size_t cap, mg_str_t keys[3]) {
  if (safe_method(method) || status < 200 || status > 399) return 0;
  size_t n = mg_cp_key(buf, cap, MG_STR("GET"), scheme, host, path, query);
  if (n == 0) return MG_ELIMIT;
  keys[0] = (mg_str_t){ buf, n };
  int k = 1;
  size_t at = n;
  static const mg_str_t hn[2] = { { "location", 8 }, { "content-location", 16 } };
  for (int j = 0; j < 2; j++) {
    const mg_header_t *h = mg_cp_get(res, hn[j]);
    mg_str_t key;
    if (!h) continue;
    /* a reference that does not fit is left alone: the target (and the other
     * reference) are invalidated all the same, whatever the origin put there */
    if (ref_key(h->value, scheme, host, path, buf, cap, at, &key) < 0) continue;
    size_t ol = origin_len(key);
    if (ol != origin_len(keys[0]) || memcmp(key.p, keys[0].p, ol) != 0) continue; /* another origin */
    int dup = 0;
    for (int d = 0; d < k; d++) dup |= mg_str_eq(keys[d], key);
    if (dup) continue;
    keys[k++] = key;
    at += key.len;
  }
  return k;
}
