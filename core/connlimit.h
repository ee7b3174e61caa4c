/* limits.connections_per_ip: how many client connections each address holds, counted
 * across every worker of the process.
 *
 * The only state in the core shared by workers on the connection path, so it is
 * touched only at accept and at close (never per request), under one mutex per
 * shard. A leaf: it knows nothing of connections, only addresses as text. */
#ifndef MG_CONNLIMIT_H
#define MG_CONNLIMIT_H

#include "mg.h"

/* Counts one more connection from `ip` (its text, as in logs; at most 63 bytes)
 * unless `max` are counted already. Returns 1 when counted (the caller then owes
 * one mg_connlimit_release), 0 when the address is at its limit, MG_ENOMEM when
 * nothing could be counted. Any thread. */
int mg_connlimit_acquire(mg_str_t ip, uint64_t max);
/* Forgets one connection counted for `ip`. Any thread. */
void mg_connlimit_release(mg_str_t ip);
/* Connections counted for `ip` now (tests). */
uint64_t mg_connlimit_count(mg_str_t ip);

#endif
