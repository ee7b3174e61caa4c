/* The HTTP caching rules (RFC 9111, RFC 5861's stale-*, RFC 9211's Cache-Status,
 * RFC 9110's conditionals as a cache answers them) as pure functions, for a shared
 * cache. A leaf: no libuv, no Lua, no store, no allocation. Inputs are header lists
 * (mg_header_t slices) and times in whole seconds since the epoch; outputs are small
 * structs, slices into the inputs, or bytes written into a buffer the caller owns.
 * The store (docs/notes-i13-cache.md) and the proxy path call these; nothing here
 * knows where a response lives. Every slice this file returns points into the
 * header lists it was given and lives as long as they do. */
#ifndef MG_CACHEPOL_H
#define MG_CACHEPOL_H

#include "http.h"
#include "mg.h"

/* A list of headers: a finished mg_head_t's (headers, n) or any array. */
typedef struct {
  const mg_header_t *h;
  size_t n;
} mg_cp_hdrs_t;

/* RFC 9111 1.2.2: a delta-seconds too big to hold is taken as 2^31. */
#define MG_CP_DELTA_MAX 2147483648LL

/* ---- Cache-Control (RFC 9111 5.2) ---- */

enum {
  MG_CC_NO_STORE = 1u << 0,
  MG_CC_NO_CACHE = 1u << 1,        /* unqualified (or a field list we could not keep) */
  MG_CC_NO_CACHE_FIELDS = 1u << 2, /* no-cache="a, b": those fields, in no_cache_f */
  MG_CC_PRIVATE = 1u << 3,         /* unqualified: a shared cache must not store */
  MG_CC_PRIVATE_FIELDS = 1u << 4,  /* private="a": stored without those fields */
  MG_CC_PUBLIC = 1u << 5,
  MG_CC_MUST_REVALIDATE = 1u << 6,
  MG_CC_PROXY_REVALIDATE = 1u << 7,
  MG_CC_MUST_UNDERSTAND = 1u << 8,
  MG_CC_NO_TRANSFORM = 1u << 9,
  MG_CC_ONLY_IF_CACHED = 1u << 10,
  MG_CC_IMMUTABLE = 1u << 11,
  MG_CC_MAX_STALE_ANY = 1u << 12, /* max-stale without a value */
  MG_CC_PRAGMA_NO_CACHE = 1u << 13, /* a request's Pragma: no-cache (no Cache-Control) */
};

/* Field names a no-cache= or private= list may name; more make the directive
 * unqualified (the most restrictive reading). */
#define MG_CC_FIELDS_MAX 8

typedef struct {
  uint32_t flags;
  /* -1 when absent; 0..MG_CP_DELTA_MAX otherwise. Conflicting duplicates keep the
   * most restrictive value (9111 4.2.1): the smallest max-age, s-maxage, max-stale,
   * stale-while-revalidate, stale-if-error, the largest min-fresh. An invalid
   * max-age or s-maxage counts as 0 (stale, 4.2.1); an invalid max-stale,
   * min-fresh or stale-* is ignored (the directive grants nothing then). */
  int64_t max_age, s_maxage, max_stale, min_fresh, swr, sie;
  uint8_t n_no_cache, n_private;
  mg_str_t no_cache_f[MG_CC_FIELDS_MAX], private_f[MG_CC_FIELDS_MAX];
  uint32_t invalid; /* directives that did not parse or had a bad argument */
} mg_cc_t;

/* Parses every Cache-Control header of the list into *cc (reset first). With
 * is_request, a list without Cache-Control but with "Pragma: no-cache" gets
 * MG_CC_NO_CACHE | MG_CC_PRAGMA_NO_CACHE (9111 5.4). Never fails: garbage is
 * skipped up to the next top-level comma and counted in cc->invalid. */
void mg_cc_parse(mg_cc_t *cc, const mg_cp_hdrs_t *hs, int is_request);

/* delta-seconds (digits only; a quoted form is the caller's): the value, capped
 * at MG_CP_DELTA_MAX, or -1 when it is not one. */
int64_t mg_cp_delta(mg_str_t s);

/* An HTTP-date (IMF-fixdate, RFC 850, asctime: RFC 9110 5.6.7) as seconds since
 * the epoch, or -1 when it is not one. */
int64_t mg_cp_date(mg_str_t s);

/* ---- Storing (RFC 9111 3) ---- */

typedef struct {
  int allow_set_cookie;   /* store responses with Set-Cookie (the header is stored) */
  int64_t heuristic_max;  /* cap on a heuristic lifetime, seconds (0: no heuristics) */
  int64_t heuristic_pct;  /* percent of (Date - Last-Modified); 10 per 4.2.2 */
  /* i13-api: a lifetime set for this response's status (a route's cache.ttl): with
   * status_ttl_set, a response without explicit freshness (no s-maxage, max-age or
   * Expires) gets status_ttl seconds instead of a heuristic one, and is storable
   * even where no heuristic applies (any understood status; no Last-Modified
   * needed). What forbids storing (no-store, private, Authorization, ...) still does. */
  int status_ttl_set;
  int64_t status_ttl;
} mg_cp_opts_t;

/* Why a response is not stored (mg_cp_meta_init's answer), 0 when it may be. */
enum {
  MG_CP_OK = 0,
  MG_CP_NS_METHOD,       /* not GET (HEAD is answered from a stored GET) */
  MG_CP_NS_STATUS,       /* not a final status this cache understands */
  MG_CP_NS_NO_STORE,     /* no-store in the request or the response */
  MG_CP_NS_PRIVATE,      /* private without field names */
  MG_CP_NS_AUTH,         /* Authorization without public, s-maxage or must-revalidate */
  MG_CP_NS_SET_COOKIE,   /* Set-Cookie and the policy says no */
  MG_CP_NS_VARY_STAR,    /* Vary: * */
  MG_CP_NS_FRAMING,      /* Content-Length and Transfer-Encoding, or lengths that differ */
  MG_CP_NS_NOT_CACHEABLE,/* no explicit freshness, no public, status not heuristic */
  MG_CP_NS_MAX
};
const char *mg_cp_ns_reason(int why);

/* What a stored response keeps for the decisions: numbers only (the headers
 * themselves are the store's). Fill with mg_cp_meta_init; keep with the object. */
typedef struct {
  int status;
  int64_t request_time, response_time; /* when the request went, the head came */
  int64_t date_value;   /* Date, or response_time when it is missing or invalid */
  int64_t age_value;    /* Age (0 when missing or invalid) */
  int64_t lifetime;     /* freshness lifetime, seconds (may be 0) */
  int64_t last_modified;/* -1 when none */
  uint32_t cc_flags;    /* the response's MG_CC_* */
  int64_t swr, sie;     /* the response's stale-* windows, -1 when absent */
  uint8_t heuristic;    /* lifetime is a heuristic one (Cache-Status detail) */
  uint8_t has_etag, has_validator; /* ETag; ETag or Last-Modified */
  uint8_t s_maxage;     /* s-maxage present: a stale response must be revalidated */
} mg_cp_meta_t;

/* Decides whether a response to a request may be stored and fills *m. status,
 * method: the exchange's. Returns MG_CP_OK or an MG_CP_NS_* reason. */
int mg_cp_meta_init(mg_cp_meta_t *m, mg_str_t method, const mg_cp_hdrs_t *req, int status,
                    const mg_cp_hdrs_t *res, int64_t request_time, int64_t response_time,
                    const mg_cp_opts_t *o);

/* Freshness lifetime (4.2.1, 4.2.2) of a response with these directives and headers;
 * *heuristic says which kind. Without explicit freshness, o->status_ttl (when set)
 * comes before the heuristic (not counted as one). */
int64_t mg_cp_lifetime(const mg_cc_t *cc, int status, const mg_cp_hdrs_t *res,
                       int64_t response_time, const mg_cp_opts_t *o, int *heuristic);

/* current_age (4.2.3) of a stored response at `now`. */
int64_t mg_cp_age(const mg_cp_meta_t *m, int64_t now);

/* Whether a response header is kept in the store (3.1): not hop-by-hop, not named
 * by the response's Connection, not in private="..." ; no-cache="..." fields are
 * not kept either (they may never be sent without revalidation: dropping them is
 * the simplest way to honour that). `res_cc` is the response's. */
int mg_cp_header_stored(mg_str_t name, const mg_cc_t *res_cc, const mg_cp_hdrs_t *res);

/* ---- Answering (RFC 9111 4) ---- */

enum {
  MG_CP_HIT,         /* fresh: answer from the store */
  MG_CP_STALE_SERVE, /* stale but allowed: answer from the store (reason says why) */
  MG_CP_REVALIDATE,  /* send a conditional request (mg_cp_conditional) */
  MG_CP_MISS,        /* nothing usable: forward */
};
enum {
  MG_CP_R_NONE,
  MG_CP_R_MAX_STALE,     /* STALE_SERVE: the request's max-stale allows it */
  MG_CP_R_SWR,           /* STALE_SERVE: stale-while-revalidate: refresh once */
  MG_CP_R_STALE,         /* REVALIDATE: past its lifetime */
  MG_CP_R_REQ_NO_CACHE,  /* REVALIDATE: the request's no-cache or Pragma */
  MG_CP_R_RES_NO_CACHE,  /* REVALIDATE: the response's no-cache */
  MG_CP_R_REQ_MAX_AGE,   /* REVALIDATE: older than the request's max-age */
  MG_CP_R_MIN_FRESH,     /* REVALIDATE: not fresh for min-fresh more seconds */
  MG_CP_R_NOT_STORED,    /* MISS: no stored response */
  MG_CP_R_ONLY_IF_CACHED,/* MISS: only-if-cached and nothing usable: answer 504 */
};

/* Cache-Status "fwd" values (RFC 9211 2.2). */
enum { MG_CS_FWD_NONE, MG_CS_FWD_BYPASS, MG_CS_FWD_METHOD, MG_CS_FWD_URI_MISS,
       MG_CS_FWD_VARY_MISS, MG_CS_FWD_MISS, MG_CS_FWD_REQUEST, MG_CS_FWD_STALE };

typedef struct {
  uint8_t hit;        /* the answer came from the store */
  uint8_t fwd;        /* MG_CS_FWD_* */
  uint8_t stored;     /* the forwarded answer was stored */
  uint8_t collapsed;  /* the forwarded request was collapsed with another */
  int fwd_status;     /* 0: none */
  uint8_t has_ttl;
  int64_t ttl;        /* lifetime - age; negative when stale */
  const char *detail; /* NULL or a token */
} mg_cp_status_t;

typedef struct {
  int verdict; /* MG_CP_HIT ... */
  int reason;  /* MG_CP_R_* */
  int64_t age, ttl;
  /* When revalidation fails (5xx, 502/504 of our own, no connection): the stale
   * response may answer (stale-if-error of the response or the request, and no
   * must-revalidate). Otherwise the failure is passed on (must-revalidate: 504). */
  uint8_t stale_if_error_ok;
  mg_cp_status_t cs; /* the Cache-Status fields so far (fwd_status, stored: the caller's) */
} mg_cp_decision_t;

/* m: the stored response (after the Vary match), or NULL for a miss. req_cc: the
 * request's. */
void mg_cp_decide(const mg_cp_meta_t *m, const mg_cc_t *req_cc, int64_t now, mg_cp_decision_t *d);

/* "name; hit; ttl=5" (RFC 9211) into buf: the length, or 0 when cap is too small.
 * name must be a token. */
size_t mg_cp_status_format(char *buf, size_t cap, mg_str_t name, const mg_cp_status_t *s);

/* ---- Validation (RFC 9111 4.3, RFC 9110 13) ---- */

/* The conditional headers for revalidating a stored response: If-None-Match from
 * its ETag, If-Modified-Since from its Last-Modified (4.3.1). Writes up to 2 into
 * out (slices into stored). Returns how many. */
size_t mg_cp_conditional(const mg_cp_hdrs_t *stored, mg_header_t out[2]);

/* Whether a 304 (or a HEAD's 200) selects the stored response (4.3.4): the same
 * strong ETag, or the same Last-Modified when neither has a strong ETag, or neither
 * carries a validator. 1 yes, 0 no (the stored response is not the one: refetch). */
int mg_cp_304_selects(const mg_cp_hdrs_t *stored, const mg_cp_hdrs_t *res304);

/* The stored headers updated by a 304's (3.2): each header of the 304 replaces
 * every stored one of its name, except those never stored (3.1) and those the
 * stored body depends on (Content-Length, Content-Encoding, Content-Range,
 * Transfer-Encoding, ETag when it differs is handled by mg_cp_304_selects). Slices
 * of either list go into out; the stored order is kept, new names follow.
 * Returns the count, or MG_ELIMIT when cap is too small. */
int mg_cp_merge_304(const mg_cp_hdrs_t *stored, const mg_cp_hdrs_t *res304, const mg_cc_t *res_cc,
                    mg_header_t *out, size_t cap);

/* Whether a header of a stored response goes into a 304 sent to a client
 * (RFC 9110 15.4.5: Content-Location, Date, ETag, Vary, Cache-Control, Expires,
 * plus Last-Modified and Age, which help). */
int mg_cp_304_keeps(mg_str_t name);

/* The client's conditionals against the stored response (RFC 9110 13.2.2 order:
 * If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since). Returns 200
 * (send it), 304 or 412. If-Modified-Since counts only for GET/HEAD and without
 * If-None-Match; its reference is Last-Modified, else Date, else date_value
 * (9111 4.3.2). A stored status other than 2xx (m->status) is sent as it is,
 * whatever the conditionals say (RFC 9110 13.2.1: they are ignored when the
 * response without them would not be a 2xx). */
int mg_cp_client_cond(mg_str_t method, const mg_cp_hdrs_t *req, const mg_cp_hdrs_t *stored,
                      const mg_cp_meta_t *m);

/* Entity-tag comparison (RFC 9110 8.8.3.2). */
int mg_cp_etag_eq(mg_str_t a, mg_str_t b, int weak);

/* ---- Keys (RFC 9111 2, 4.1) ---- */

/* The primary key: "GET https://host[:port]/path?query". A HEAD maps to GET; the
 * scheme and host are lower-cased, a default port (80/443) dropped, an empty query
 * is no query. The length, or 0 when it does not fit. */
size_t mg_cp_key(char *buf, size_t cap, mg_str_t method, mg_str_t scheme, mg_str_t host,
                 mg_str_t path, mg_str_t query);

/* The secondary key from a response's Vary and the request's headers: for each
 * named field (lower-cased, deduplicated, sorted), "name:value\n" with the
 * request's lines of that name joined by ",", list elements trimmed and spaces
 * around ";" and "=" dropped (outside quotes); "name\n" alone when the request has
 * none. *len gets the length. Returns 0, MG_CP_VARY_STAR (Vary: *: not stored) or
 * MG_ELIMIT (buf too small, or too many names). An empty key: no Vary. */
#define MG_CP_VARY_STAR 1
#define MG_CP_VARY_MAX 16
int mg_cp_vary_key(const mg_cp_hdrs_t *res, const mg_cp_hdrs_t *req, char *buf, size_t cap, size_t *len);

/* ---- Invalidation (RFC 9111 4.4) ---- */

/* After an unsafe request (not GET, HEAD, OPTIONS, TRACE) answered 2xx or 3xx, the
 * primary keys to invalidate: the target's, and Location's and Content-Location's
 * when they resolve to the same origin. Each key is written into buf (NUL-free,
 * one after the other) and its slice into keys[]. Returns how many (0..3), or
 * MG_ELIMIT when buf cannot hold the target's key (a reference whose key does not
 * fit what is left of buf is skipped). */
int mg_cp_invalidate(mg_str_t method, int status, mg_str_t scheme, mg_str_t host, mg_str_t path,
                     mg_str_t query, const mg_cp_hdrs_t *res, char *buf, size_t cap, mg_str_t keys[3]);

/* Small helpers the store shares. */
const mg_header_t *mg_cp_get(const mg_cp_hdrs_t *hs, mg_str_t name);
int mg_cp_status_understood(int status);
int mg_cp_status_heuristic(int status);

#endif
