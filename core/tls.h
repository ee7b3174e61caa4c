/* TLS with BoringSSL: server contexts for listeners (certificates chosen by SNI,
 * ALPN, session tickets whose keys every worker shares, client certificates) and
 * client contexts for upstreams. The bytes go through memory BIOs: the loop owns
 * the sockets, BoringSSL only transforms bytes, and nothing ever blocks.
 *
 * Contexts belong to a config generation: built by the main thread at load,
 * shared read-only by every worker (SSL_CTX is safe for that), freed with the
 * generation (connections hold their own reference through their SSL). */
#ifndef MG_TLS_H
#define MG_TLS_H

#include <openssl/ssl.h>

#include "mg.h"

typedef struct {
  SSL_CTX *ctx;
  char *cert_file;
  char *name;      /* the name a tls_hello hook may pick it by; NULL when unnamed */
  char **dns;      /* subjectAltName DNS entries, lowercase ("*.example.com" kept) */
  int ndns;
} mg_tls_cert_t;

/* A listener's TLS: certs[0] is the default (no SNI, or no name matched). */
typedef struct mg_tls_server_s {
  mg_tls_cert_t *certs;
  int ncerts;
  int verify_client; /* 0 off, 1 optional, 2 required */
} mg_tls_server_t;

/* tls.profile: the TLS 1.2 cipher suites a listener offers when it names none
 * (TLS 1.3 suites are BoringSSL's fixed AEAD set). The versions follow from
 * min_version, which the Lua side sets to 1.3 for "modern". */
enum {
  MG_TLS_INTERMEDIATE, /* ECDHE with AES-GCM or ChaCha20-Poly1305 (Mozilla "intermediate") */
  MG_TLS_MODERN,       /* TLS 1.3 only */
  MG_TLS_COMPATIBLE,   /* intermediate plus the ECDHE AES-CBC-SHA suites of older clients */
};

/* What proxy.lua asked for (normalised by the Lua side; paths absolute). */
typedef struct {
  const char **cert_files, **key_files, **names;
  int ncerts;
  int min_version;        /* TLS1_2_VERSION or TLS1_3_VERSION */
  int verify_client;      /* 0, 1 optional, 2 required */
  const char *client_ca;  /* required with verify_client */
  int profile;            /* MG_TLS_* */
  const char *ciphers;    /* an OpenSSL-style cipher string for TLS 1.2; NULL: the profile's */
  int session_timeout;    /* seconds; 0: 2 h for TLS 1.2 sessions, 24 h for TLS 1.3 */
} mg_tls_server_cfg_t;

/* An upstream's TLS. */
typedef struct mg_tls_client_s {
  SSL_CTX *ctx;
  uint8_t id[32]; /* hash of the settings and files: keys the upstream pools */
  char *sni;   /* server name sent and verified; NULL: none */
  int verify;
} mg_tls_client_t;

typedef struct {
  int verify;
  const char *ca_file;    /* NULL: the system bundle */
  const char *sni;
  const char *cert_file, *key_file; /* client certificate, optional */
} mg_tls_client_cfg_t;

/* Process-wide setup (ticket keys, ex_data index). Main thread, before any load. */
int mg_tls_global_init(void);

/* Builds a listener's contexts. 0, or MG_ECONFIG with err naming the file. */
int mg_tls_server_new(mg_tls_server_t *t, const mg_tls_server_cfg_t *cfg, char *err, size_t errlen);
void mg_tls_server_free(mg_tls_server_t *t);
int mg_tls_client_new(mg_tls_client_t *t, const mg_tls_client_cfg_t *cfg, char *err, size_t errlen);
void mg_tls_client_free(mg_tls_client_t *t);

/* A worker's client contexts by (verify, CA file, SNI), for the hooks' clients
 * (mg.tcp, mg.http): building one loads a CA bundle, file I/O of milliseconds,
 * so it is done once per worker and setting. The least recently used goes past
 * MG_TLS_CLIENT_CACHE_MAX; an SSL made from an evicted context keeps it alive
 * (SSL_CTX is refcounted). Zeroed: empty. Worker thread only. */
#define MG_TLS_CLIENT_CACHE_MAX 16
typedef struct {
  struct mg_tls_cached_s {
    char *key; /* verify, CA file and SNI; klen bytes */
    size_t klen;
    uint64_t used;
    mg_tls_client_t t;
  } e[MG_TLS_CLIENT_CACHE_MAX];
  int n;
  uint64_t tick;
} mg_tls_client_cache_t;
/* The context for the settings (ca NULL: the system bundle, and ignored without
 * verify; sni NULL: none), built when first asked for. Owned by the cache: valid
 * until the next call or mg_tls_client_cache_free. NULL with err on failure. */
mg_tls_client_t *mg_tls_client_cached(mg_tls_client_cache_t *c, int verify, const char *ca,
                                      const char *sni, char *err, size_t errlen);
void mg_tls_client_cache_free(mg_tls_client_cache_t *c);

/* A server-side SSL for a new connection, with memory BIOs; `owner` is handed to
 * the hello callback (mg_tls_hello_fn). NULL when out of memory. */
SSL *mg_tls_accept_new(const mg_tls_server_t *t, void *owner);
/* A client-side SSL for an upstream connection (SNI, verification, resumption
 * with `session` when given); `owner` is handed to the session callback. */
SSL *mg_tls_connect_new(const mg_tls_client_t *t, SSL_SESSION *session, void *owner);
/* Called with each new client session (after the handshake with TLS 1.2, when a
 * ticket arrives with 1.3): returns 1 when it keeps the reference. */
typedef int (*mg_tls_session_fn)(void *owner, SSL_SESSION *session);
void mg_tls_set_session(mg_tls_session_fn fn);
/* Lets Lua choose the certificate: returns the index in t->certs, -1 to use the
 * default choice, -2 to refuse the handshake, MG_TLS_HELLO_WAIT when the choice
 * waits (a hook waits): the handshake pauses (mg_tp_tls_resume goes on with it,
 * and this is asked again then). Set by main (conn.c's mg_conn_tls_hello). */
#define MG_TLS_HELLO_WAIT (-3)
typedef int (*mg_tls_hello_fn)(void *owner, const mg_tls_server_t *t, const char *sni);
void mg_tls_set_hello(mg_tls_hello_fn fn);

/* The index of the certificate SNI `name` selects (exact names first, then
 * wildcards of one label), 0 when none matches. */
int mg_tls_pick_cert(const mg_tls_server_t *t, const char *name);

/* What BoringSSL wants to send (the write BIO's bytes): *p and the length, 0 when
 * nothing. Once the caller has copied them, mg_tls_out_taken empties the BIO (a
 * fresh one, so no buffer grows). */
size_t mg_tls_out_peek(SSL *ssl, const uint8_t **p);
void mg_tls_out_taken(SSL *ssl);

/* The verified-or-not client certificate of a server-side session: subject and
 * issuer in RFC 2253 form, SHA-256 fingerprint as 64 hex digits (NUL-terminated).
 * 0, or -1 when the client sent none. */
int mg_tls_peer(SSL *ssl, char *subject, size_t slen, size_t *sout, char *issuer, size_t ilen,
                size_t *iout, char fp[65], int *verified);

/* Replaces emptied memory BIOs by fresh ones (no buffer kept while idle). */
void mg_tls_release_bios(SSL *ssl);

/* The last BoringSSL error as text ("" when none), for log lines. */
const char *mg_tls_error(char *buf, size_t len);

#endif
