/* i14-auth: what the authentication policies need from C (core/api.h, the
 * "i14-auth" block): SHA-256 of a key, a constant-time comparison, password hash
 * verification through the system's crypt (libxcrypt: bcrypt $2b$/$2y$, SHA-2
 * crypt $5$/$6$), and the client certificate's common name and DNS names. */
#include <crypt.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "api.h"

int mg_api_sha256(const char *p, size_t len, unsigned char out[32]) {
  SHA256((const uint8_t *)p, len, out);
  return 0;
}

int mg_api_ct_equal(const void *a, const void *b, size_t n) {
  return CRYPTO_memcmp(a, b, n) == 0;
}

/* The hash schemes accepted: bcrypt and SHA-2 crypt (others, DES and MD5 crypt
 * among them, are refused: weak). */
static int scheme_ok(const char *h, size_t len) {
  if (len >= 4 && (memcmp(h, "$2b$", 4) == 0 || memcmp(h, "$2y$", 4) == 0)) return 1;
  if (len >= 3 && (memcmp(h, "$5$", 3) == 0 || memcmp(h, "$6$", 3) == 0)) return 1;
  return 0;
}

/* 0: a hash this build verifies; MG_API_EINVAL: not one (scheme, or malformed). */
int mg_api_crypt_supported(const char *hash, size_t hlen) {
  if (hlen == 0 || hlen >= CRYPT_OUTPUT_SIZE || memchr(hash, '\0', hlen) || !scheme_ok(hash, hlen))
    return MG_API_EINVAL;
  char h[CRYPT_OUTPUT_SIZE];
  memcpy(h, hash, hlen);
  h[hlen] = '\0';
  if (crypt_checksalt(h) != CRYPT_SALT_OK) return MG_API_EINVAL;
  /* the setting is right; the whole hash must be what crypt gives for some phrase:
   * hash a probe and compare the lengths (a truncated or padded hash never matches) */
  struct crypt_data *d = calloc(1, sizeof(*d));
  if (!d) return MG_API_ENOMEM;
  const char *out = crypt_rn("probe", h, d, (int)sizeof(*d));
  int rc = out && out[0] != '*' && strlen(out) == hlen ? 0 : MG_API_EINVAL;
  free(d);
  return rc;
}

/* 1: `pw` hashes to `hash`; 0: it does not; MG_API_EINVAL: a hash crypt refuses;
 * MG_API_ENOMEM. Passwords with a NUL byte never match. */
int mg_api_crypt_check(const char *pw, size_t pwlen, const char *hash, size_t hlen) {
  if (hlen == 0 || hlen >= CRYPT_OUTPUT_SIZE || !scheme_ok(hash, hlen)) return MG_API_EINVAL;
  if (pwlen > CRYPT_MAX_PASSPHRASE_SIZE || memchr(pw, '\0', pwlen)) return 0;
  char *buf = malloc(pwlen + 1 + hlen + 1);
  struct crypt_data *d = calloc(1, sizeof(*d));
  if (!buf || !d) {
    free(buf);
    free(d);
    return MG_API_ENOMEM;
  }
  char *p = buf, *h = buf + pwlen + 1;
  memcpy(p, pw, pwlen);
  p[pwlen] = '\0';
  memcpy(h, hash, hlen);
  h[hlen] = '\0';
  const char *out = crypt_rn(p, h, d, (int)sizeof(*d));
  int rc;
  if (!out || out[0] == '*') rc = MG_API_EINVAL;
  else rc = strlen(out) == hlen && CRYPTO_memcmp(out, h, hlen) == 0;
  OPENSSL_cleanse(buf, pwlen + 1);
  OPENSSL_cleanse(d, sizeof(*d));
  free(buf);
  free(d);
  return rc;
}
