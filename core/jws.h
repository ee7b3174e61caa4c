/* JWS signature checks (RFC 7515/7518/8037) for the jwt policy
 * (lua/moongate/policy/jwt.lua), through BoringSSL. A leaf: no other core module.
 *
 * A key is parsed once (config time or a JWKS fetch) and owned by its caller
 * (Lua: ffi.gc with mg_api_jws_key_free); verifying allocates no key object. */
#ifndef MG_JWS_H
#define MG_JWS_H
#include <stddef.h>

typedef struct mg_jws_key_s mg_jws_key_t;

/* key types (mg_api_jws_key_type) */
enum { MG_JWS_KEY_HMAC = 1, MG_JWS_KEY_RSA = 2, MG_JWS_KEY_P256 = 3, MG_JWS_KEY_P384 = 4,
       MG_JWS_KEY_ED25519 = 5 };
/* algorithms (mg_api_jws_verify) */
enum { MG_JWS_HS256 = 1, MG_JWS_HS384 = 2, MG_JWS_HS512 = 3, MG_JWS_RS256 = 4, MG_JWS_PS256 = 5,
       MG_JWS_ES256 = 6, MG_JWS_ES384 = 7, MG_JWS_EDDSA = 8 };

/* A shared secret (HS*): 1 to 4096 bytes. NULL: empty/too long or no memory. */
mg_jws_key_t *mg_api_jws_key_hmac(const char *secret, size_t len);
/* A PEM public key (SubjectPublicKeyInfo "PUBLIC KEY", or "RSA PUBLIC KEY"):
 * RSA (2048 bits or more), EC P-256 / P-384, Ed25519. NULL: not one of those. */
mg_jws_key_t *mg_api_jws_key_pem(const char *pem, size_t len);
/* JWK components (big-endian bytes, base64url-decoded by the caller).
 * rsa: n (2048 bits or more), e; ec: crv 256 or 384, x, y (on the curve);
 * ed25519: x (32 bytes). NULL when they do not make a valid key. */
mg_jws_key_t *mg_api_jws_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen);
mg_jws_key_t *mg_api_jws_key_ec(int crv, const unsigned char *x, size_t xlen, const unsigned char *y,
                                size_t ylen);
mg_jws_key_t *mg_api_jws_key_ed25519(const unsigned char *x, size_t xlen);
int mg_api_jws_key_type(const mg_jws_key_t *k);
void mg_api_jws_key_free(mg_jws_key_t *k);
/* 1: `sig` is alg's signature of `input` by k; 0: it is not (or has the wrong
 * size); -1: alg does not go with k's type (HS* needs an HMAC key, RS/PS RSA,
 * ES256 P-256, ES384 P-384, EdDSA Ed25519: the algorithm confusion check). */
int mg_api_jws_verify(const mg_jws_key_t *k, int alg, const char *input, size_t ilen,
                      const unsigned char *sig, size_t slen);

#endif
