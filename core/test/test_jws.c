/* core/jws.c: signatures made here with BoringSSL, checked through the API the
 * jwt policy uses; the key type binds the algorithm (alg confusion). */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <stdlib.h>

#include "../jws.h"
#include "test.h"

static const char MSG[] = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

/* the PEM SubjectPublicKeyInfo of pk (malloc'd, NUL-terminated) */
static char *pem_of(EVP_PKEY *pk) {
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(b, pk);
  const uint8_t *p;
  size_t n;
  BIO_mem_contents(b, &p, &n);
  char *s = malloc(n + 1);
  memcpy(s, p, n);
  s[n] = 0;
  BIO_free(b);
  return s;
}

static void test_hmac(void) {
  mg_jws_key_t *k = mg_api_jws_key_hmac("secret", 6);
  unsigned char mac[64];
  unsigned int n;
  HMAC(EVP_sha384(), "secret", 6, (const uint8_t *)MSG, strlen(MSG), mac, &n);
  CHECK(mg_api_jws_key_type(k) == MG_JWS_KEY_HMAC);
  CHECK(mg_api_jws_verify(k, MG_JWS_HS384, MSG, strlen(MSG), mac, n) == 1);
  CHECK(mg_api_jws_verify(k, MG_JWS_HS256, MSG, strlen(MSG), mac, n) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_HS384, MSG, strlen(MSG), mac, n - 1) == 0);
  mac[3] ^= 1;
  CHECK(mg_api_jws_verify(k, MG_JWS_HS384, MSG, strlen(MSG), mac, n) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_RS256, MSG, strlen(MSG), mac, n) == -1);
  CHECK(mg_api_jws_key_hmac("", 0) == NULL);
  mg_api_jws_key_free(k);
}

static void test_es256(void) {
  EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
  CHECK(EC_KEY_generate_key(ec));
  unsigned char d[32], raw[64];
  SHA256((const uint8_t *)MSG, strlen(MSG), d);
  ECDSA_SIG *s = ECDSA_do_sign(d, 32, ec);
  BN_bn2bin_padded(raw, 32, s->r);
  BN_bn2bin_padded(raw + 32, 32, s->s);
  /* from PEM and from JWK coordinates */
  EVP_PKEY *pk = EVP_PKEY_new();
  EVP_PKEY_set1_EC_KEY(pk, ec);
  char *pem = pem_of(pk);
  mg_jws_key_t *k = mg_api_jws_key_pem(pem, strlen(pem));
  CHECK(mg_api_jws_key_type(k) == MG_JWS_KEY_P256);
  CHECK(mg_api_jws_verify(k, MG_JWS_ES256, MSG, strlen(MSG), raw, 64) == 1);
  CHECK(mg_api_jws_verify(k, MG_JWS_ES256, MSG, strlen(MSG) - 1, raw, 64) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_ES256, MSG, strlen(MSG), raw, 63) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_ES384, MSG, strlen(MSG), raw, 64) == -1);
  CHECK(mg_api_jws_verify(k, MG_JWS_HS256, MSG, strlen(MSG), raw, 32) == -1);
  unsigned char pt[65];
  CHECK(EC_POINT_point2oct(EC_KEY_get0_group(ec), EC_KEY_get0_public_key(ec), POINT_CONVERSION_UNCOMPRESSED,
                           pt, sizeof pt, NULL) == 65);
  mg_jws_key_t *j = mg_api_jws_key_ec(256, pt + 1, 32, pt + 33, 32);
  CHECK(mg_api_jws_verify(j, MG_JWS_ES256, MSG, strlen(MSG), raw, 64) == 1);
  pt[40] ^= 1; /* not on the curve */
  CHECK(mg_api_jws_key_ec(256, pt + 1, 32, pt + 33, 32) == NULL);
  CHECK(mg_api_jws_key_ec(384, pt + 1, 32, pt + 33, 32) == NULL);
  mg_api_jws_key_free(j);
  mg_api_jws_key_free(k);
  free(pem);
  EVP_PKEY_free(pk);
  ECDSA_SIG_free(s);
  EC_KEY_free(ec);
}

static void test_ed25519(void) {
  uint8_t pub[32], priv[64], sig[64];
  ED25519_keypair(pub, priv);
  CHECK(ED25519_sign(sig, (const uint8_t *)MSG, strlen(MSG), priv));
  mg_jws_key_t *k = mg_api_jws_key_ed25519(pub, 32);
  CHECK(mg_api_jws_verify(k, MG_JWS_EDDSA, MSG, strlen(MSG), sig, 64) == 1);
  sig[0] ^= 1;
  CHECK(mg_api_jws_verify(k, MG_JWS_EDDSA, MSG, strlen(MSG), sig, 64) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_ES256, MSG, strlen(MSG), sig, 64) == -1);
  mg_api_jws_key_free(k);
  EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
  char *pem = pem_of(pk);
  k = mg_api_jws_key_pem(pem, strlen(pem));
  CHECK(mg_api_jws_key_type(k) == MG_JWS_KEY_ED25519);
  mg_api_jws_key_free(k);
  free(pem);
  EVP_PKEY_free(pk);
  CHECK(mg_api_jws_key_pem("garbage", 7) == NULL);
}

static void test_rsa(void) {
  RSA *rsa = RSA_new();
  BIGNUM *e = BN_new();
  BN_set_word(e, 65537);
  CHECK(RSA_generate_key_ex(rsa, 2048, e, NULL));
  EVP_PKEY *pk = EVP_PKEY_new();
  EVP_PKEY_set1_RSA(pk, rsa);
  unsigned char sig[256];
  size_t slen = sizeof sig;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  EVP_PKEY_CTX *pctx;
  CHECK(EVP_DigestSignInit(ctx, &pctx, EVP_sha256(), NULL, pk));
  EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
  EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1);
  CHECK(EVP_DigestSign(ctx, sig, &slen, (const uint8_t *)MSG, strlen(MSG)));
  EVP_MD_CTX_free(ctx);
  char *pem = pem_of(pk);
  mg_jws_key_t *k = mg_api_jws_key_pem(pem, strlen(pem));
  CHECK(mg_api_jws_key_type(k) == MG_JWS_KEY_RSA);
  CHECK(mg_api_jws_verify(k, MG_JWS_PS256, MSG, strlen(MSG), sig, slen) == 1);
  CHECK(mg_api_jws_verify(k, MG_JWS_RS256, MSG, strlen(MSG), sig, slen) == 0);
  CHECK(mg_api_jws_verify(k, MG_JWS_HS256, MSG, strlen(MSG), sig, slen) == -1);
  /* the same key from its JWK n and e */
  unsigned char n[256], eb[3];
  BN_bn2bin_padded(n, 256, RSA_get0_n(rsa));
  BN_bn2bin_padded(eb, 3, RSA_get0_e(rsa));
  mg_jws_key_t *j = mg_api_jws_key_rsa(n, 256, eb, 3);
  CHECK(mg_api_jws_verify(j, MG_JWS_PS256, MSG, strlen(MSG), sig, slen) == 1);
  CHECK(mg_api_jws_key_rsa(n, 128, eb, 3) == NULL); /* 1024 bits: too short */
  mg_api_jws_key_free(j);
  mg_api_jws_key_free(k);
  free(pem);
  EVP_PKEY_free(pk);
  RSA_free(rsa);
  BN_free(e);
}

int main(void) {
  static const t_case_t cases[] = {
    { "HS384 and the checks around it", test_hmac },
    { "ES256 from PEM and JWK coordinates; off-curve points refused", test_es256 },
    { "EdDSA from raw and PEM keys", test_ed25519 },
    { "PS256 / RS256 from PEM and JWK n,e; short RSA refused", test_rsa },
  };
  return t_run("jws", cases, sizeof cases / sizeof cases[0]);
}
