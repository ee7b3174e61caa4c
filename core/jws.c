/* JWS signature checks through BoringSSL: see jws.h. */
#include "jws.h"
#include "api.h" /* the same prototypes, declared for the FFI: the compiler checks they agree */
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/curve25519.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

struct mg_jws_key_s {
  int type;
  EVP_PKEY *pkey;            /* RSA */
  EC_KEY *ec;                /* P-256, P-384 (its own reference) */
  unsigned char *secret;     /* HMAC */
  size_t slen;
  unsigned char ed[32];      /* Ed25519 public key */
};

static mg_jws_key_t *key_new(int type) {
  mg_jws_key_t *k = calloc(1, sizeof *k);
  if (k) k->type = type;
  return k;
}

void mg_api_jws_key_free(mg_jws_key_t *k) {
  if (!k) return;
  EVP_PKEY_free(k->pkey);
  EC_KEY_free(k->ec);
  if (k->secret) {
    OPENSSL_cleanse(k->secret, k->slen);
    free(k->secret);
  }
  free(k);
}

int mg_api_jws_key_type(const mg_jws_key_t *k) { return k ? k->type : 0; }

mg_jws_key_t *mg_api_jws_key_hmac(const char *secret, size_t len) {
  if (len == 0 || len > 4096) return NULL;
  mg_jws_key_t *k = key_new(MG_JWS_KEY_HMAC);
  if (!k) return NULL;
  k->secret = malloc(len);
  if (!k->secret) {
    free(k);
    return NULL;
  }
  memcpy(k->secret, secret, len);
  k->slen = len;
  return k;
}

/* k from an EVP_PKEY (taken: freed here on failure). */
static mg_jws_key_t *from_pkey(EVP_PKEY *pk) {
  mg_jws_key_t *k = NULL;
  switch (EVP_PKEY_id(pk)) {
  case EVP_PKEY_RSA:
    if (EVP_PKEY_bits(pk) < 2048) break;
    if ((k = key_new(MG_JWS_KEY_RSA))) {
      k->pkey = pk;
      return k;
    }
    break;
  case EVP_PKEY_EC: {
    EC_KEY *ec = EVP_PKEY_get1_EC_KEY(pk);
    if (!ec) break;
    int nid = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
    int type = nid == NID_X9_62_prime256v1 ? MG_JWS_KEY_P256 : nid == NID_secp384r1 ? MG_JWS_KEY_P384 : 0;
    if (type && (k = key_new(type))) {
      k->ec = ec;
      EVP_PKEY_free(pk);
      return k;
    }
    EC_KEY_free(ec);
    break;
  }
  case EVP_PKEY_ED25519: {
    size_t n = 32;
    if ((k = key_new(MG_JWS_KEY_ED25519)) && EVP_PKEY_get_raw_public_key(pk, k->ed, &n) && n == 32) {
      EVP_PKEY_free(pk);
      return k;
    }
    free(k);
    k = NULL;
    break;
  }
  default:
    break;
  }
  EVP_PKEY_free(pk);
  return NULL;
}

mg_jws_key_t *mg_api_jws_key_pem(const char *pem, size_t len) {
  if (len == 0 || len > 65536) return NULL;
  BIO *b = BIO_new_mem_buf(pem, (int)len);
  if (!b) return NULL;
  EVP_PKEY *pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
  if (!pk) {
    BIO_free(b);
    b = BIO_new_mem_buf(pem, (int)len);
    RSA *rsa = b ? PEM_read_bio_RSAPublicKey(b, NULL, NULL, NULL) : NULL;
    if (rsa && (pk = EVP_PKEY_new()) && !EVP_PKEY_assign_RSA(pk, rsa)) {
      EVP_PKEY_free(pk);
      pk = NULL;
    } else if (rsa && !pk) {
      RSA_free(rsa);
    }
  }
  BIO_free(b);
  ERR_clear_error();
  return pk ? from_pkey(pk) : NULL;
}

mg_jws_key_t *mg_api_jws_key_rsa(const unsigned char *n, size_t nlen, const unsigned char *e, size_t elen) {
  if (nlen == 0 || nlen > 2048 || elen == 0 || elen > 8) return NULL;
  RSA *rsa = RSA_new();
  BIGNUM *bn = BN_bin2bn(n, nlen, NULL), *be = BN_bin2bn(e, elen, NULL);
  EVP_PKEY *pk = NULL;
  if (!rsa || !bn || !be || !RSA_set0_key(rsa, bn, be, NULL)) {
    BN_free(bn);
    BN_free(be);
    RSA_free(rsa);
    return NULL;
  }
  if (!(pk = EVP_PKEY_new()) || !EVP_PKEY_assign_RSA(pk, rsa)) {
    EVP_PKEY_free(pk);
    RSA_free(rsa);
    return NULL;
  }
  return from_pkey(pk);
}

mg_jws_key_t *mg_api_jws_key_ec(int crv, const unsigned char *x, size_t xlen, const unsigned char *y,
                                size_t ylen) {
  size_t flen = crv == 256 ? 32 : crv == 384 ? 48 : 0;
  if (!flen || xlen != flen || ylen != flen) return NULL;
  EC_KEY *ec = EC_KEY_new_by_curve_name(crv == 256 ? NID_X9_62_prime256v1 : NID_secp384r1);
  BIGNUM *bx = BN_bin2bn(x, xlen, NULL), *by = BN_bin2bn(y, ylen, NULL);
  mg_jws_key_t *k = NULL;
  if (ec && bx && by && EC_KEY_set_public_key_affine_coordinates(ec, bx, by) && EC_KEY_check_key(ec) &&
      (k = key_new(crv == 256 ? MG_JWS_KEY_P256 : MG_JWS_KEY_P384))) {
    k->ec = ec;
    ec = NULL;
  }
  BN_free(bx);
  BN_free(by);
  EC_KEY_free(ec);
  ERR_clear_error();
  return k;
}

mg_jws_key_t *mg_api_jws_key_ed25519(const unsigned char *x, size_t xlen) {
  if (xlen != 32) return NULL;
  mg_jws_key_t *k = key_new(MG_JWS_KEY_ED25519);
  if (k) memcpy(k->ed, x, 32);
  return k;
}

static int verify_hmac(const mg_jws_key_t *k, const EVP_MD *md, const char *in, size_t ilen,
                       const unsigned char *sig, size_t slen) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mlen = 0;
  if (!HMAC(md, k->secret, k->slen, (const unsigned char *)in, ilen, mac, &mlen)) return 0;
  return slen == mlen && CRYPTO_memcmp(mac, sig, mlen) == 0;
}

static int verify_rsa(const mg_jws_key_t *k, int pss, const char *in, size_t ilen, const unsigned char *sig,
                      size_t slen) {
  EVP_MD_CTX ctx;
  EVP_PKEY_CTX *pctx = NULL;
  int ok = 0;
  EVP_MD_CTX_init(&ctx);
  if (EVP_DigestVerifyInit(&ctx, &pctx, EVP_sha256(), NULL, k->pkey) &&
      (!pss || (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) &&
                EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, -1) && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()))))
    ok = EVP_DigestVerify(&ctx, sig, slen, (const unsigned char *)in, ilen) == 1;
  EVP_MD_CTX_cleanup(&ctx);
  ERR_clear_error();
  return ok;
}

static int verify_ec(const mg_jws_key_t *k, size_t flen, const char *in, size_t ilen, const unsigned char *sig,
                     size_t slen) {
  unsigned char d[SHA384_DIGEST_LENGTH];
  size_t dlen;
  if (slen != 2 * flen) return 0;
  if (flen == 32) {
    SHA256((const unsigned char *)in, ilen, d);
    dlen = SHA256_DIGEST_LENGTH;
  } else {
    SHA384((const unsigned char *)in, ilen, d);
    dlen = SHA384_DIGEST_LENGTH;
  }
  ECDSA_SIG *s = ECDSA_SIG_new();
  BIGNUM *r = BN_bin2bn(sig, flen, NULL), *ss = BN_bin2bn(sig + flen, flen, NULL);
  int ok = 0;
  if (s && r && ss && ECDSA_SIG_set0(s, r, ss)) {
    r = ss = NULL;
    ok = ECDSA_do_verify(d, dlen, s, k->ec) == 1;
  }
  BN_free(r);
  BN_free(ss);
  ECDSA_SIG_free(s);
  ERR_clear_error();
  return ok;
}

int mg_api_jws_verify(const mg_jws_key_t *k, int alg, const char *input, size_t ilen, const unsigned char *sig,
                      size_t slen) {
  if (!k) return -1;
  switch (alg) {
  case MG_JWS_HS256:
  case MG_JWS_HS384:
  case MG_JWS_HS512:
    if (k->type != MG_JWS_KEY_HMAC) return -1;
    return verify_hmac(k, alg == MG_JWS_HS256 ? EVP_sha256() : alg == MG_JWS_HS384 ? EVP_sha384() : EVP_sha512(),
                       input, ilen, sig, slen);
  case MG_JWS_RS256:
  case MG_JWS_PS256:
    if (k->type != MG_JWS_KEY_RSA) return -1;
    return verify_rsa(k, alg == MG_JWS_PS256, input, ilen, sig, slen);
  case MG_JWS_ES256:
    if (k->type != MG_JWS_KEY_P256) return -1;
    return verify_ec(k, 32, input, ilen, sig, slen);
  case MG_JWS_ES384:
    if (k->type != MG_JWS_KEY_P384) return -1;
    return verify_ec(k, 48, input, ilen, sig, slen);
  case MG_JWS_EDDSA:
    if (k->type != MG_JWS_KEY_ED25519) return -1;
    return slen == 64 && ED25519_verify((const uint8_t *)input, ilen, sig, k->ed) == 1;
  default:
    return -1;
  }
}
