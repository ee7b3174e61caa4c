/* A set of IPv4 and IPv6 prefixes (trusted_proxies now, IP allow/deny rules later,
 * at 100,000 prefixes and more): "is this address inside any of them?".
 *
 * Two path-compressed binary tries over the address bits, one for IPv4 and one for
 * IPv6, whose nodes live in one growable array linked by index: a lookup visits at
 * most one node per bit of the longest prefix on its path (O(prefix length),
 * independent of the number of prefixes), n prefixes take at most 2n nodes, and the
 * whole set is freed in one go. An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a
 * dual-stack socket reports for an IPv4 client) is the IPv4 address a.b.c.d: it
 * matches the IPv4 prefixes, never the IPv6 ones.
 *
 * Threads: build it with mg_cidr_add from one thread, then it is immutable; any
 * number of threads may call the match functions on it concurrently (they only
 * read). A leaf: only mg.h and libc. */
#ifndef MG_CIDR_H
#define MG_CIDR_H

#include <sys/socket.h>

#include "mg.h"

typedef struct mg_cidr_s mg_cidr_t;

/* An empty set, or NULL when out of memory. The caller owns it: mg_cidr_free. */
mg_cidr_t *mg_cidr_new(void);

/* Adds a prefix written as text: "10.0.0.0/8", "192.168.1.1" (= /32), "::1"
 * (= /128), "2001:db8::/32", "::ffff:10.0.0.0/104" (an IPv4-mapped prefix of at
 * least /96 is stored as the IPv4 prefix, here 10.0.0.0/8). The address is
 * inet_pton's strict dotted-quad or IPv6 text; the length is 1 to 3 digits, at most
 * 32 or 128. Host bits set beyond the length are accepted and masked off
 * ("10.1.2.3/8" is 10.0.0.0/8), as most tools do; a config checker that wants to
 * warn can compare the text itself. No surrounding spaces, brackets or zone id.
 * Adding a prefix already covered by the set changes nothing.
 * Returns 0, MG_EINVAL for bad text (the set is unchanged), MG_ENOMEM. */
int mg_cidr_add(mg_cidr_t *set, const char *text, size_t len);

/* 1 when the address of `sa` (AF_INET or AF_INET6; the port is ignored) is inside
 * a prefix of the set, else 0 (also for NULL, another family or an empty set). */
int mg_cidr_match(const mg_cidr_t *set, const struct sockaddr *sa);

/* The same for an address written as text, as in an X-Forwarded-For entry:
 * surrounding spaces and tabs are skipped; 0 for text that is not a plain IPv4 or
 * IPv6 address (a port, brackets, a prefix length or garbage). */
int mg_cidr_match_text(const mg_cidr_t *set, mg_str_t ip_text);

/* The number of successful mg_cidr_add calls (so 0 means "match nothing" and the
 * caller may skip the lookup). */
size_t mg_cidr_count(const mg_cidr_t *set);

/* Frees the set and all its nodes. NULL is fine. */
void mg_cidr_free(mg_cidr_t *set);

#endif
