#include "tls.h"

#include <ctype.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <uv.h>

#include "log.h"

/* ---------------- session ticket keys ----------------
 * One set for the process: every worker's connections use the same contexts'
 * callback, so a ticket issued by one worker resumes on any other, and the keys
 * outlive reloads. A new key every TICKET_ROTATE seconds; the previous one still
 * decrypts (and asks for a fresh ticket) for another period. */
#define TICKET_ROTATE (12 * 3600)

typedef struct {
  uint8_t name[16];
  uint8_t hmac[32];
  uint8_t aes[32];
} ticket_key_t;

static struct {
  uv_mutex_t lock;
  ticket_key_t cur, prev;
  int have_prev;
  time_t rotate_at;
} tickets;

static mg_tls_hello_fn hello_fn;
static mg_tls_session_fn session_fn;
static int ex_owner = -1; /* SSL ex_data slot: the connection (server) */
static int ex_server = -1; /* SSL ex_data slot: its mg_tls_server_t */

static void new_key(ticket_key_t *k) {
  RAND_bytes(k->name, sizeof(k->name));
  RAND_bytes(k->hmac, sizeof(k->hmac));
  RAND_bytes(k->aes, sizeof(k->aes));
}

int mg_tls_global_init(void) {
  if (ex_owner >= 0) return 0;
  if (uv_mutex_init(&tickets.lock) < 0) return MG_ENOMEM;
  new_key(&tickets.cur);
  tickets.rotate_at = time(NULL) + TICKET_ROTATE;
  ex_owner = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  ex_server = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  return ex_owner >= 0 && ex_server >= 0 ? 0 : MG_ENOMEM;
}

void mg_tls_set_hello(mg_tls_hello_fn fn) { hello_fn = fn; }
void mg_tls_set_session(mg_tls_session_fn fn) { session_fn = fn; }

static int new_session_cb(SSL *ssl, SSL_SESSION *session) {
  void *owner = SSL_get_ex_data(ssl, ex_owner);
  return owner && session_fn ? session_fn(owner, session) : 0;
}

static int ticket_cb(SSL *ssl, uint8_t *key_name, uint8_t *iv, EVP_CIPHER_CTX *ectx,
                     HMAC_CTX *hctx, int encrypt) {
  (void)ssl;
  ticket_key_t k;
  int rc = 1;
  uv_mutex_lock(&tickets.lock);
  time_t now = time(NULL);
  if (now >= tickets.rotate_at) {
    tickets.prev = tickets.cur;
    tickets.have_prev = 1;
    new_key(&tickets.cur);
    tickets.rotate_at = now + TICKET_ROTATE;
  }
  if (encrypt) {
    k = tickets.cur;
  } else if (memcmp(key_name, tickets.cur.name, 16) == 0) {
    k = tickets.cur;
  } else if (tickets.have_prev && memcmp(key_name, tickets.prev.name, 16) == 0) {
    k = tickets.prev;
    rc = 2; /* good, but issue a ticket under the current key */
  } else {
    rc = 0; /* unknown key: a full handshake */
  }
  uv_mutex_unlock(&tickets.lock);
  if (rc == 0) return 0;
  if (encrypt) {
    memcpy(key_name, k.name, 16);
    RAND_bytes(iv, EVP_MAX_IV_LENGTH < 16 ? EVP_MAX_IV_LENGTH : 16);
    if (!EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv)) return -1;
  } else if (!EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k.aes, iv)) {
    return -1;
  }
  if (!HMAC_Init_ex(hctx, k.hmac, sizeof(k.hmac), EVP_sha256(), NULL)) return -1;
  return rc;
}

/* ---------------- errors ---------------- */

const char *mg_tls_error(char *buf, size_t len) {
  unsigned long e = ERR_peek_last_error();
  if (!e) {
    snprintf(buf, len, "%s", "");
  } else {
    const char *reason = ERR_reason_error_string(e);
    snprintf(buf, len, "%s", reason ? reason : "unknown error");
  }
  ERR_clear_error();
  return buf;
}

static int fail(char *err, size_t errlen, const char *what, const char *file) {
  char why[256];
  mg_tls_error(why, sizeof(why));
  snprintf(err, errlen, "%s '%s'%s%s", what, file, why[0] ? ": " : "", why);
  return MG_ECONFIG;
}

/* ---------------- server side ---------------- */

static char *lowercase_dup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  for (size_t i = 0; i < n; i++) d[i] = (char)tolower((unsigned char)s[i]);
  d[n] = '\0';
  return d;
}

static int read_names(mg_tls_cert_t *c, X509 *x) {
  GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  if (!names) return 0;
  size_t n = sk_GENERAL_NAME_num(names);
  c->dns = calloc(n ? n : 1, sizeof(*c->dns));
  if (!c->dns) {
    GENERAL_NAMES_free(names);
    return MG_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
    if (g->type != GEN_DNS) continue;
    const unsigned char *p = ASN1_STRING_get0_data(g->d.dNSName);
    int len = ASN1_STRING_length(g->d.dNSName);
    if (len <= 0 || memchr(p, '\0', (size_t)len)) continue;
    char *s = lowercase_dup((const char *)p, (size_t)len);
    if (!s) break;
    c->dns[c->ndns++] = s;
  }
  GENERAL_NAMES_free(names);
  return 0;
}

int mg_tls_pick_cert(const mg_tls_server_t *t, const char *name) {
  if (!name || !*name) return 0;
  char low[256];
  size_t n = strlen(name);
  if (n >= sizeof(low)) return 0;
  for (size_t i = 0; i <= n; i++) low[i] = (char)tolower((unsigned char)name[i]);
  if (n > 1 && low[n - 1] == '.') low[n - 1] = '\0'; /* "a.test." is a.test, fully qualified */
  for (int i = 0; i < t->ncerts; i++)
    for (int j = 0; j < t->certs[i].ndns; j++)
      if (strcmp(t->certs[i].dns[j], low) == 0) return i;
  /* "*.example.com" covers exactly one more label: a.example.com, not
   * example.com nor a.b.example.com */
  const char *dot = strchr(low, '.');
  if (!dot || dot == low) return 0;
  for (int i = 0; i < t->ncerts; i++)
    for (int j = 0; j < t->certs[i].ndns; j++) {
      const char *d = t->certs[i].dns[j];
      if (d[0] == '*' && d[1] == '.' && strcmp(d + 1, dot) == 0) return i;
    }
  return 0;
}

/* The certificate is chosen as soon as the ClientHello is read, before
 * anything else of the handshake (BoringSSL's select_certificate_cb): a
 * tls_hello hook first (it may wait: the handshake then pauses, SSL_do_handshake
 * says SSL_ERROR_PENDING_CERTIFICATE, and this runs again once the transport
 * steps the handshake after the wait), else SNI. BoringSSL has parsed and
 * checked the server_name extension by now (one host_name, no NUL, at most 255
 * bytes): SSL_get_servername gives it. */
static enum ssl_select_cert_result_t select_cb(const SSL_CLIENT_HELLO *hello) {
  SSL *ssl = hello->ssl;
  const mg_tls_server_t *t = SSL_get_ex_data(ssl, ex_server);
  if (!t) return ssl_select_cert_success;
  const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  int pick = -1;
  if (hello_fn) {
    pick = hello_fn(SSL_get_ex_data(ssl, ex_owner), t, name);
    if (pick == MG_TLS_HELLO_WAIT) return ssl_select_cert_retry;
    if (pick == -2) return ssl_select_cert_error; /* a handshake_failure alert */
  }
  if (pick < 0 || pick >= t->ncerts) pick = mg_tls_pick_cert(t, name);
  if (pick > 0 && !SSL_set_SSL_CTX(ssl, t->certs[pick].ctx)) return ssl_select_cert_error;
  return ssl_select_cert_success;
}

/* The certificate is chosen (select_cb): this only acknowledges the client's
 * SNI in the ServerHello, as a server that used it does. */
static int sni_cb(SSL *ssl, int *alert, void *arg) {
  (void)ssl;
  (void)alert;
  (void)arg;
  return SSL_TLSEXT_ERR_OK;
}

/* ALPN: HTTP/1.1 is all we speak. A client that offers only other protocols
 * gets no ALPN answer (it may still go on with HTTP/1.1). */
static int alpn_cb(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                   unsigned inlen, void *arg) {
  (void)ssl;
  (void)arg;
  for (unsigned i = 0; i < inlen;) {
    unsigned n = in[i];
    if (i + 1 + n > inlen) break;
    if (n == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
      *out = in + i + 1;
      *outlen = 8;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + n;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

/* The TLS 1.2 suites of each profile, in the server's order of preference: forward
 * secret key exchange only (ECDHE), AEADs first. Never 3DES, RC4, NULL, export
 * or plain RSA key exchange: a listener gets those only by naming them in
 * `ciphers`. Each name must be one BoringSSL knows (the strict parser refuses
 * the list otherwise, and the listener with it). */
#define AEAD_SUITES \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
static const char *const profile_ciphers[] = {
  [MG_TLS_INTERMEDIATE] = AEAD_SUITES,
  [MG_TLS_MODERN] = AEAD_SUITES, /* unused: TLS 1.3 only */
  [MG_TLS_COMPATIBLE] = AEAD_SUITES ":ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
                        "ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA",
};

/* Default session lifetimes. A resumed TLS 1.2 session reuses the old master
 * secret with no fresh key exchange, so it is kept short (BoringSSL's own
 * default); a TLS 1.3 resumption runs a new ECDHE exchange, and a day is what
 * the ticket keys' rotation honours anyway (TICKET_ROTATE). */
#define SESSION_TIMEOUT_TLS12 (2 * 3600)
#define SESSION_TIMEOUT_TLS13 (24 * 3600)

static int server_ctx(mg_tls_cert_t *c, const mg_tls_server_cfg_t *cfg, int i, char *err,
                      size_t errlen) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) return MG_ENOMEM;
  c->ctx = ctx;
  SSL_CTX_set_min_proto_version(ctx, (uint16_t)cfg->min_version);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  int profile = cfg->profile >= 0 && cfg->profile <= MG_TLS_COMPATIBLE ? cfg->profile : MG_TLS_INTERMEDIATE;
  const char *list = cfg->ciphers ? cfg->ciphers : profile_ciphers[profile];
  if (SSL_CTX_set_strict_cipher_list(ctx, list) != 1) {
    char why[256];
    mg_tls_error(why, sizeof(why));
    snprintf(err, errlen, "mg.listen tls: invalid 'ciphers' \"%s\"%s%s", list, why[0] ? ": " : "", why);
    return MG_ECONFIG;
  }
  uint32_t t12 = cfg->session_timeout > 0 ? (uint32_t)cfg->session_timeout : SESSION_TIMEOUT_TLS12;
  uint32_t t13 = cfg->session_timeout > 0 ? (uint32_t)cfg->session_timeout : SESSION_TIMEOUT_TLS13;
  SSL_CTX_set_timeout(ctx, t12);
  SSL_CTX_set_session_psk_dhe_timeout(ctx, t13);
  if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_files[i]) != 1)
    return fail(err, errlen, "mg.listen tls: cannot load certificate", cfg->cert_files[i]);
  if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key_files[i], SSL_FILETYPE_PEM) != 1) {
    int why = ERR_GET_REASON(ERR_peek_last_error());
    if (why == X509_R_KEY_VALUES_MISMATCH || why == X509_R_KEY_TYPE_MISMATCH) {
      ERR_clear_error();
      snprintf(err, errlen, "mg.listen tls: key '%s' does not match certificate '%s'",
               cfg->key_files[i], cfg->cert_files[i]);
      return MG_ECONFIG;
    }
    return fail(err, errlen, "mg.listen tls: cannot load key", cfg->key_files[i]);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    snprintf(err, errlen, "mg.listen tls: key '%s' does not match certificate '%s'",
             cfg->key_files[i], cfg->cert_files[i]);
    return MG_ECONFIG;
  }
  X509 *x = SSL_CTX_get0_certificate(ctx);
  if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
    MG_WARN(-1, "certificate '%s' has expired", cfg->cert_files[i]);
  if (x && read_names(c, x) < 0) return MG_ENOMEM;
  SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
  SSL_CTX_set_select_certificate_cb(ctx, select_cb);
  SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_cb); /* session id context: see below */
  if (cfg->verify_client) {
    int mode = SSL_VERIFY_PEER | (cfg->verify_client == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(ctx, mode, NULL);
    if (SSL_CTX_load_verify_locations(ctx, cfg->client_ca, NULL) != 1)
      return fail(err, errlen, "mg.listen tls: cannot load client_ca", cfg->client_ca);
    STACK_OF(X509_NAME) *cas = SSL_load_client_CA_file(cfg->client_ca);
    if (!cas) return fail(err, errlen, "mg.listen tls: cannot load client_ca", cfg->client_ca);
    SSL_CTX_set_client_CA_list(ctx, cas);
  }
  return 0;
}

/* Adds a file's bytes to a hash (nothing when it cannot be read: loading it
 * reports that). */
static void hash_file(SHA256_CTX *h, const char *path) {
  FILE *f = path ? fopen(path, "rb") : NULL;
  if (!f) return;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) SHA256_Update(h, buf, n);
  fclose(f);
}

/* What a resumed session vouches for about the client: whether and against which
 * CAs it was verified. Sessions and tickets resume only where that is the same:
 * a ticket from a listener without client certificates must not open one that
 * requires them, on another listener or after a reload that turned them on.
 * (Certificates are left out on purpose: a renewed certificate keeps sessions.) */
static void session_context(const mg_tls_server_cfg_t *cfg, uint8_t out[32]) {
  SHA256_CTX h;
  SHA256_Init(&h);
  SHA256_Update(&h, "moongate", 8);
  uint8_t mode = (uint8_t)cfg->verify_client;
  SHA256_Update(&h, &mode, 1);
  if (cfg->verify_client) hash_file(&h, cfg->client_ca);
  SHA256_Final(out, &h);
}

/* An explicit cipher list is used as written; a log line names what it enables
 * that no profile would: suites without forward secrecy, and 3DES (64-bit
 * blocks: Sweet32). */
static void warn_weak(const char *list, SSL_CTX *ctx) {
  STACK_OF(SSL_CIPHER) *s = SSL_CTX_get_ciphers(ctx);
  char weak[512];
  size_t n = 0;
  weak[0] = '\0';
  for (size_t i = 0; s && i < sk_SSL_CIPHER_num(s); i++) {
    const SSL_CIPHER *ci = sk_SSL_CIPHER_value(s, i);
    const char *name = SSL_CIPHER_get_name(ci);
    int kx = SSL_CIPHER_get_kx_nid(ci);
    if (kx != NID_kx_rsa && kx != NID_kx_psk && !strstr(name, "DES-CBC3")) continue;
    int k = snprintf(weak + n, sizeof(weak) - n, "%s%s", n ? ", " : "", name);
    if (k < 0 || (size_t)k >= sizeof(weak) - n) break;
    n += (size_t)k;
  }
  if (n) MG_WARN(-1, "mg.listen tls: ciphers \"%s\" enables weak suites (no forward secrecy or 3DES): %s", list, weak);
}

int mg_tls_server_new(mg_tls_server_t *t, const mg_tls_server_cfg_t *cfg, char *err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  t->certs = calloc((size_t)cfg->ncerts, sizeof(*t->certs));
  if (!t->certs) return MG_ENOMEM;
  t->ncerts = cfg->ncerts;
  t->verify_client = cfg->verify_client;
  for (int i = 0; i < cfg->ncerts; i++) {
    mg_tls_cert_t *c = &t->certs[i];
    c->cert_file = strdup(cfg->cert_files[i]);
    c->name = cfg->names[i] ? strdup(cfg->names[i]) : NULL;
    if (!c->cert_file || (cfg->names[i] && !c->name)) return MG_ENOMEM;
    int rc = server_ctx(c, cfg, i, err, errlen);
    if (rc < 0) return rc;
  }
  if (cfg->ciphers && cfg->min_version < TLS1_3_VERSION) warn_weak(cfg->ciphers, t->certs[0].ctx);
  uint8_t sid[32];
  session_context(cfg, sid);
  for (int i = 0; i < t->ncerts; i++) SSL_CTX_set_session_id_context(t->certs[i].ctx, sid, sizeof(sid));
  return 0;
}

void mg_tls_server_free(mg_tls_server_t *t) {
  for (int i = 0; i < t->ncerts; i++) {
    mg_tls_cert_t *c = &t->certs[i];
    SSL_CTX_free(c->ctx);
    free(c->cert_file);
    free(c->name);
    for (int j = 0; j < c->ndns; j++) free(c->dns[j]);
    free(c->dns);
  }
  free(t->certs);
  memset(t, 0, sizeof(*t));
}

static SSL *with_bios(SSL_CTX *ctx) {
  SSL *ssl = SSL_new(ctx);
  if (!ssl) return NULL;
  BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
  if (!r || !w) {
    BIO_free(r);
    BIO_free(w);
    SSL_free(ssl);
    return NULL;
  }
  SSL_set_bio(ssl, r, w);
  return ssl;
}

SSL *mg_tls_accept_new(const mg_tls_server_t *t, void *owner) {
  SSL *ssl = with_bios(t->certs[0].ctx);
  if (!ssl) return NULL;
  SSL_set_ex_data(ssl, ex_owner, owner);
  SSL_set_ex_data(ssl, ex_server, (void *)t);
  SSL_set_accept_state(ssl);
  return ssl;
}

/* ---------------- client side ---------------- */

#define SYSTEM_CA "/etc/ssl/certs/ca-certificates.crt"

int mg_tls_client_new(mg_tls_client_t *t, const mg_tls_client_cfg_t *cfg, char *err, size_t errlen) {
  memset(t, 0, sizeof(*t));
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) return MG_ENOMEM;
  t->ctx = ctx;
  t->verify = cfg->verify;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
  SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
  if (cfg->sni && !(t->sni = strdup(cfg->sni))) return MG_ENOMEM;
  /* the pool key: the same settings (and files) share pooled connections and
   * sessions across reloads, different ones never do */
  SHA256_CTX h;
  SHA256_Init(&h);
  uint8_t v = (uint8_t)(cfg->verify ? 1 : 0);
  SHA256_Update(&h, &v, 1);
  const char *parts[] = { cfg->sni, cfg->ca_file, cfg->cert_file, cfg->key_file };
  for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
    SHA256_Update(&h, parts[i] ? parts[i] : "", parts[i] ? strlen(parts[i]) + 1 : 1);
    if (i > 0) hash_file(&h, parts[i]);
  }
  SHA256_Final(t->id, &h);
  if (cfg->verify) {
    const char *ca = cfg->ca_file ? cfg->ca_file : SYSTEM_CA;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
      return fail(err, errlen, "mg.upstream tls: cannot load ca", ca);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  if (cfg->cert_file) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert_file) != 1)
      return fail(err, errlen, "mg.upstream tls: cannot load certificate", cfg->cert_file);
    if (!cfg->key_file || SSL_CTX_use_PrivateKey_file(ctx, cfg->key_file, SSL_FILETYPE_PEM) != 1)
      return fail(err, errlen, "mg.upstream tls: cannot load key",
                  cfg->key_file ? cfg->key_file : "(none)");
    if (SSL_CTX_check_private_key(ctx) != 1) {
      ERR_clear_error();
      snprintf(err, errlen, "mg.upstream tls: key '%s' does not match certificate '%s'",
               cfg->key_file, cfg->cert_file);
      return MG_ECONFIG;
    }
  }
  static const uint8_t alpn[] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
  SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
  return 0;
}

void mg_tls_client_free(mg_tls_client_t *t) {
  SSL_CTX_free(t->ctx);
  free(t->sni);
  memset(t, 0, sizeof(*t));
}

/* The cache's key: a tag (verify, and which of ca and sni are given), the CA
 * file, NUL, the SNI, NUL. Compared in place: a lookup (every mg.http or mg.tcp
 * TLS connection) allocates nothing. */
static int key_is(const struct mg_tls_cached_s *e, char tag, const char *ca, size_t calen,
                  const char *sni, size_t snilen) {
  return e->klen == 3 + calen + snilen && e->key[0] == tag && memcmp(e->key + 1, ca, calen) == 0 &&
         e->key[1 + calen] == '\0' && memcmp(e->key + 2 + calen, sni, snilen) == 0;
}

mg_tls_client_t *mg_tls_client_cached(mg_tls_client_cache_t *c, int verify, const char *ca,
                                      const char *sni, char *err, size_t errlen) {
  verify = verify ? 1 : 0;
  if (!verify) ca = NULL;
  size_t calen = ca ? strlen(ca) : 0, snilen = sni ? strlen(sni) : 0;
  char tag = (char)('0' + verify + (ca ? 2 : 0) + (sni ? 4 : 0));
  for (int i = 0; i < c->n; i++)
    if (key_is(&c->e[i], tag, ca ? ca : "", calen, sni ? sni : "", snilen)) {
      c->e[i].used = ++c->tick;
      return &c->e[i].t;
    }
  size_t klen = 3 + calen + snilen;
  char *key = malloc(klen);
  if (!key) {
    snprintf(err, errlen, "no memory");
    return NULL;
  }
  key[0] = tag;
  if (calen) memcpy(key + 1, ca, calen);
  key[1 + calen] = '\0';
  if (snilen) memcpy(key + 2 + calen, sni, snilen);
  key[klen - 1] = '\0';
  struct mg_tls_cached_s *e;
  if (c->n == MG_TLS_CLIENT_CACHE_MAX) { /* the least recently used goes */
    e = &c->e[0];
    for (int i = 1; i < c->n; i++)
      if (c->e[i].used < e->used) e = &c->e[i];
    mg_tls_client_free(&e->t);
    free(e->key);
    *e = c->e[--c->n];
  }
  e = &c->e[c->n];
  mg_tls_client_cfg_t cfg = { .verify = verify, .ca_file = ca, .sni = sni };
  int rc = mg_tls_client_new(&e->t, &cfg, err, errlen);
  if (rc < 0) {
    if (rc == MG_ENOMEM) snprintf(err, errlen, "no memory");
    mg_tls_client_free(&e->t);
    free(key);
    return NULL;
  }
  e->key = key;
  e->klen = klen;
  e->used = ++c->tick;
  c->n++;
  return &e->t;
}

void mg_tls_client_cache_free(mg_tls_client_cache_t *c) {
  for (int i = 0; i < c->n; i++) {
    mg_tls_client_free(&c->e[i].t);
    free(c->e[i].key);
  }
  c->n = 0;
}

SSL *mg_tls_connect_new(const mg_tls_client_t *t, SSL_SESSION *session, void *owner) {
  SSL *ssl = with_bios(t->ctx);
  if (!ssl) return NULL;
  SSL_set_ex_data(ssl, ex_owner, owner);
  if (t->sni) {
    SSL_set_tlsext_host_name(ssl, t->sni);
    if (t->verify) {
      X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (!X509_VERIFY_PARAM_set1_host(param, t->sni, strlen(t->sni))) {
        SSL_free(ssl);
        return NULL;
      }
    }
  }
  if (session) SSL_set_session(ssl, session);
  SSL_set_connect_state(ssl);
  return ssl;
}

/* ---------------- moving bytes ---------------- */

/* A memory BIO keeps the largest buffer it ever held: an emptied one is replaced
 * by a fresh, empty BIO, so a connection holds no buffer between reads and
 * writes (the price is a small allocation per use). */
static void fresh_bio(SSL *ssl, int write) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return; /* keep the old one: still correct, only bigger */
  if (write) SSL_set0_wbio(ssl, b);
  else SSL_set0_rbio(ssl, b);
}

void mg_tls_release_bios(SSL *ssl) {
  if (BIO_pending(SSL_get_rbio(ssl)) == 0) fresh_bio(ssl, 0);
  if (BIO_pending(SSL_get_wbio(ssl)) == 0) fresh_bio(ssl, 1);
}

size_t mg_tls_out_peek(SSL *ssl, const uint8_t **p) {
  size_t n = 0;
  if (!BIO_mem_contents(SSL_get_wbio(ssl), p, &n)) return 0;
  return n;
}

void mg_tls_out_taken(SSL *ssl) { fresh_bio(ssl, 1); }

/* ---------------- peer certificate ---------------- */

static size_t name_text(X509_NAME *n, char *buf, size_t len) {
  BIO *b = BIO_new(BIO_s_mem());
  if (!b) return 0;
  X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253);
  const uint8_t *p;
  size_t have = 0;
  if (BIO_mem_contents(b, &p, &have)) {
    if (have >= len) have = len - 1;
    memcpy(buf, p, have);
  }
  buf[have] = '\0';
  BIO_free(b);
  return have;
}

int mg_tls_peer(SSL *ssl, char *subject, size_t slen, size_t *sout, char *issuer, size_t ilen,
                size_t *iout, char fp[65], int *verified) {
  X509 *x = SSL_get_peer_certificate(ssl);
  if (!x) return -1;
  *sout = name_text(X509_get_subject_name(x), subject, slen);
  *iout = name_text(X509_get_issuer_name(x), issuer, ilen);
  uint8_t md[32];
  unsigned n = 0;
  static const char hex[] = "0123456789abcdef";
  if (X509_digest(x, EVP_sha256(), md, &n) && n == 32) {
    for (unsigned i = 0; i < 32; i++) {
      fp[2 * i] = hex[md[i] >> 4];
      fp[2 * i + 1] = hex[md[i] & 15];
    }
  } else {
    memset(fp, '0', 64);
  }
  fp[64] = '\0';
  *verified = SSL_get_verify_result(ssl) == X509_V_OK;
  X509_free(x);
  return 0;
}
