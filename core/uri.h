/* Request-target and Host checks for routing: the canonical form of a path and of a
 * host name, so that a route that denies /admin is not reached by /%61dmin, //admin,
 * /x/../admin or /./admin, and "example.com." matches the routes of "example.com".
 * A leaf: only mg.h and libc; no allocation, nothing kept between calls, thread-safe. */
#ifndef MG_URI_H
#define MG_URI_H

#include "mg.h"

/* Normalizes the path of an origin-form target (it starts with '/', no query) into
 * `out`, which has room for `len` bytes (the result is never longer than the input;
 * `out` may be `in` itself: the writes never overtake the reads). On success
 * *outlen is the length written and 0 is returned; the output is not NUL-terminated.
 *
 *  - %XX of an unreserved character (ALPHA DIGIT - . _ ~) becomes that character;
 *    any other escape stays an escape, with its hex digits upper-cased (%2f is
 *    refused below; %3f -> %3F). Decoding is done once: %252e stays %252e.
 *  - runs of '/' become one '/'.
 *  - '.' and '..' segments (also when written %2E / %2e) are removed as in RFC 3986
 *    5.2.4, never above the root (/../a -> /a); a trailing '.' or '..' segment
 *    leaves a trailing slash (/a/b/.. -> /a/).
 *
 * MG_EINVAL (the caller answers 400) for: an input that is empty or does not start
 * with '/'; a raw byte below 0x21, 0x7F, '#', '?', or '\\' (some origins treat a
 * backslash as a separator, so it could hide a dot segment); a '%' not followed by
 * two hex digits; an escape that decodes to '/', '\\', NUL or another control byte
 * (< 0x20 or 0x7F), because an origin that decodes it would see another path than
 * the one routed. Bytes >= 0x80 are kept as they are. `out` holds garbage then.
 *
 * What to forward upstream is the caller's choice (the `forward_path` setting):
 * "normalized" forwards exactly what was routed (mg_uri_normalize_target: this
 * path plus the original query), "as_received" forwards the raw target unchanged
 * (still refuse it with 400 when this function refuses its path: the origin must
 * never see a path that moongate could not route). */
int mg_uri_normalize_path(const char *in, size_t len, char *out, size_t *outlen);

/* Splits an origin-form target at its first '?'. *path is the part before it;
 * *query is the rest INCLUDING the '?' (empty when there is no '?'), so that
 * normalized path + query reproduces "/a?" and "/a" faithfully. Slices into
 * target.p. No validation. */
void mg_uri_split_target(mg_str_t target, mg_str_t *path, mg_str_t *query);

/* The form to forward when forward_path = "normalized": the path of `in`
 * normalized as above, then its query (with the '?') copied unchanged. The query
 * is only checked for raw bytes below 0x21, 0x7F and '#', and for a '%' not followed
 * by two hex digits (MG_EINVAL): what its escapes mean is the origin's business,
 * since routing does not look at them. Same buffer contract
 * as mg_uri_normalize_path (room for `len` bytes, may be in place). */
int mg_uri_normalize_target(const char *in, size_t len, char *out, size_t *outlen);

/* Checks a Host header value or the authority of an absolute-form target:
 *   host [ ":" port ]
 * host is a reg-name (letters, digits, '-', '_', '.'; no empty label: not starting
 * with '.', no "..", so an IPv4 literal passes as a name), or an IPv6 literal in
 * brackets (hex digits, ':' and '.' only, checked with inet_pton; no zone id, no
 * IPvFuture). port is 1 to 5 digits, 0..65535; an empty port after ':' is allowed
 * by RFC 3986 and means no port. Userinfo ('@'), percent-escapes, spaces and any
 * other byte -> MG_EINVAL, as is an empty host (RFC 9110 4.2.1: an http URI with an
 * empty host is invalid).
 *
 * *name (if not NULL) is a slice of host.p: the host without the port, with ONE
 * trailing dot removed ("example.com." -> "example.com") so a fully qualified name
 * matches the same routes; an IPv6 literal keeps its brackets ("[::1]"). The case is
 * kept as received: host names compare case-insensitively (mg_str_caseeq), and a
 * slice needs no buffer. *port (if not NULL) is the port or -1 when there is none.
 * On error *name and *port are left unchanged. */
int mg_uri_check_host(mg_str_t host, mg_str_t *name, int *port);

#endif
