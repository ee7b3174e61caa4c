/* Maglev consistent hashing for `balance = "hash"` (issue 12): a lookup table built
 * once per upstream per config, shared read-only by every worker, plus the two
 * helpers a request needs: the key (`hash_key = "ip" | "header:NAME" | "cookie:NAME"
 * | "arg:NAME"`) and a bounded-load pick. No libuv, no Lua, no mg_req_t: the caller
 * hands in plain inputs, so all of it is unit tested alone (core/test/test_maglev.c).
 *
 * The table (Maglev, Eisenbud et al., NSDI 2016, section 3.4): M slots, M a prime
 * from a fixed list, the smallest one >= 100 x n (65537 at least; 1048573 for 10,000
 * backends). Backend i has a permutation of the slots, offset + j*skip mod M, offset
 * and skip from two hashes of its name, so the table depends only on the names and
 * weights, not on their order in the config, and is the same in every worker, every
 * process and after a restart. Backends take turns claiming their next free
 * preferred slot until all M are claimed. Weighted variant: turns are handed out by
 * stride scheduling (a backend of weight w gets a turn every W/w), so each backend
 * owns a share of the slots proportional to its weight (within one slot for equal
 * weights; with equal weights it is exactly the paper's round robin). Removing one
 * backend of n moves about 1/n of the keys, plus a little (1 of 10: 10.2 % moved,
 * of which 9.95 % had to; core/test/test_maglev.c measures it).
 *
 * Costs: build O(M log n) for the turns + the permutation walks (O(M log M)
 * expected, O(M n) worst case), all at config load; memory 4 bytes per slot (4 MB
 * for 10,000 backends). Lookup O(1). Bounded pick: expected O((1+eps)/eps) slots,
 * O(M) worst case (all servers full or unusable, which only races can cause).
 *
 * Thread safety: a built table is immutable; any thread may read it at once. */
#ifndef MG_MAGLEV_H
#define MG_MAGLEV_H

#include <stddef.h>
#include <stdint.h>

#include "mg.h"

/* The most backends one table takes (its M is then 16777213 slots, 64 MB). */
#define MG_MAGLEV_MAX_BACKENDS 100000
/* The largest weight; a larger one is an error (MG_EINVAL). */
#define MG_MAGLEV_MAX_WEIGHT 1000000u

typedef struct mg_maglev_s mg_maglev_t;

/* One backend. `name` identifies it for the permutation ("host:port" is the natural
 * choice): keep names unique, since equal names get equal permutations and then
 * share their slots arbitrarily (still deterministic). Binary-safe, any length.
 * weight 0: the backend owns no slot (never picked). */
typedef struct {
  mg_str_t name;
  uint32_t weight;
} mg_maglev_backend_t;

/* Builds the table for backends[0..n). *out gets a table the caller owns
 * (mg_maglev_free); backend numbers in lookups are indices into `backends`. The
 * names are not kept. Errors: MG_EINVAL (n == 0, n > MG_MAGLEV_MAX_BACKENDS, a weight
 * above MG_MAGLEV_MAX_WEIGHT, every weight 0, a NULL name with a length),
 * MG_ENOMEM. */
int mg_maglev_new(const mg_maglev_backend_t *backends, size_t n, mg_maglev_t **out);
void mg_maglev_free(mg_maglev_t *m);

size_t mg_maglev_slots(const mg_maglev_t *m);    /* M */
size_t mg_maglev_backends(const mg_maglev_t *m); /* n */
/* The backend that owns slot `slot` (< M); tests and stats use it. */
uint32_t mg_maglev_slot_owner(const mg_maglev_t *m, size_t slot);

/* The key's hash: a 64-bit multiply-and-shift mix over 8-byte words under fixed
 * constants (about 40 instructions for a client address), the same in every
 * process on purpose: a consistent hash must send the same client to the same
 * server from every moongate of a fleet and after a restart. Clients may choose
 * keys that collide; the bounded-load cap keeps them from piling onto one server. */
uint64_t mg_maglev_hash(const void *key, size_t len);

/* O(1): the backend owning the key's slot (hash mod M). Ignores load and health. */
uint32_t mg_maglev_lookup(const mg_maglev_t *m, uint64_t hash);

/* Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded
 * Loads", SODA 2018), weighted: server i may take the request when
 *   load_i + 1 <= ceil((1 + eps) * (total + 1) * weight_i / wsum)
 * (equal weights: ceil((1 + eps) * mean load after this request)). The pick walks
 * the table from the key's slot, slot by slot, to the first usable server that may
 * take it. All inputs are the caller's (its shared per-server state); `load` is read
 * once per slot visited, and may race with other workers, so the cap is a
 * best effort: if a whole walk of the table finds no server under its cap, the
 * usable server with the least load per weight that was seen is returned. */
typedef struct {
  double eps;      /* >= 0; e.g. 0.25. Negative counts as 0. INFINITY: no bound,
                      plain consistent hashing that still skips unusable servers */
  uint64_t total;  /* active requests over the usable servers, not counting this one */
  uint64_t wsum;   /* sum of the usable servers' weights (0: every backend's) */
  /* Server i's active requests, or -1 when it must be skipped (down, ejected,
   * already tried for this request, weight 0 now). Called with the table's index. */
  int64_t (*load)(void *ud, uint32_t server);
  void *ud;
} mg_maglev_bound_t;

/* The server to use, or -1 when no usable server was seen in the whole table. */
int64_t mg_maglev_pick_bounded(const mg_maglev_t *m, uint64_t hash, const mg_maglev_bound_t *b);

/* ---- hash_key: which bytes of the request are hashed -------------------------- */

typedef enum {
  MG_HASH_KEY_IP = 0, /* the client address (after trusted_proxies) */
  MG_HASH_KEY_HEADER, /* the first header NAME (case-insensitive: the callback's job) */
  MG_HASH_KEY_COOKIE, /* cookie NAME from the Cookie header(s), first occurrence */
  MG_HASH_KEY_ARG,    /* query argument NAME, first occurrence, raw (not %-decoded) */
} mg_hash_key_kind_t;

#define MG_HASH_KEY_MAX_NAME 256

typedef struct {
  mg_hash_key_kind_t kind;
  mg_str_t name; /* points into the spec string given to mg_hash_key_parse */
} mg_hash_key_t;

/* Parses a `hash_key` string: "ip", "header:NAME", "cookie:NAME", "arg:NAME". NAME is
 * 1..MG_HASH_KEY_MAX_NAME bytes: HTTP token characters for a header or a cookie,
 * visible ASCII but '&', '=', '#' for an argument (so never NUL or space). out->name points into `spec`, which must outlive `out` (the config string).
 * Errors: MG_ECONFIG, with *err a static message for the config error. */
int mg_hash_key_parse(const char *spec, size_t len, mg_hash_key_t *out, const char **err);

/* The request, as plain inputs. `header` returns 1 and sets *val to the idx-th (from
 * 0) header called `name` (ASCII case-insensitive) or returns 0 when there is no such
 * header; values are used as they are (binary-safe). query: the part after '?',
 * without it; may be empty. */
typedef struct {
  mg_str_t ip;
  int (*header)(void *ud, mg_str_t name, size_t idx, mg_str_t *val);
  void *ud;
  mg_str_t query;
} mg_hash_input_t;

/* Sets *key to the bytes to hash (a slice of the inputs, valid as long as they are).
 * Returns 1 when they come from the spec, 0 when the spec's source is missing or
 * empty (no such header, cookie or argument, or an empty value) and the client ip
 * was used instead -- the documented fallback; *key is then the ip, which is empty
 * when the caller has none (a unix socket; "ip" then returns 0 too): hashing the
 * empty key still picks a server, the same one each time. */
int mg_hash_key_extract(const mg_hash_key_t *k, const mg_hash_input_t *in, mg_str_t *key);

#endif
