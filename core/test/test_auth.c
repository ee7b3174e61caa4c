/* core/auth.c: SHA-256, constant-time comparison, password hashes through libxcrypt. */
#include <stdlib.h>

#include "../api.h"
#include "test.h"

#define S(x) x, strlen(x)

/* made with: openssl passwd -5 -salt saltsalt pw5; python3 crypt (libxcrypt) for the others */
static const char *H5 = "$5$saltsalt$zOFVkp0Kz29x0a6a4dSx8FZisA8Iwb0KzzvoRDFTN/8";
static const char *H6R = "$6$rounds=5000$abcdefgh$AmG/p6USYTDnD0i9OnzSKPHywtVj65aAr9wlivj4RTvOTk7KtUVA.oTYWoSPriFBc8/GpWmBT82/SO.3ziVE2/";
static const char *B2B = "$2b$04$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R."; /* b-secret */
static const char *B2Y = "$2y$04$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R.";

static void sha256_known_vector(void) {
  unsigned char d[32];
  CHECK(mg_api_sha256(S("abc"), d) == 0);
  static const unsigned char want[4] = { 0xba, 0x78, 0x16, 0xbf };
  CHECK(memcmp(d, want, 4) == 0);
  CHECK(d[31] == 0xad);
}

static void ct_equal(void) {
  CHECK(mg_api_ct_equal("abcd", "abcd", 4) == 1);
  CHECK(mg_api_ct_equal("abcd", "abce", 4) == 0);
  CHECK(mg_api_ct_equal("xbcd", "abcd", 4) == 0);
  CHECK(mg_api_ct_equal("", "", 0) == 1);
}

static void supported_forms(void) {
  CHECK(mg_api_crypt_supported(S(H5)) == 0);
  CHECK(mg_api_crypt_supported(S(H6R)) == 0);
  CHECK(mg_api_crypt_supported(S(B2B)) == 0);
  CHECK(mg_api_crypt_supported(S(B2Y)) == 0);
  CHECK(mg_api_crypt_supported(S("$1$gPT8bms7$qJexFlC2RJyvpOa5hsQPL0")) == MG_API_EINVAL); /* MD5 */
  CHECK(mg_api_crypt_supported(S("$apr1$x$y")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("abJnggxhB/yWI")) == MG_API_EINVAL); /* DES */
  CHECK(mg_api_crypt_supported(S("$2a$04$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R.")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("$2b$04$short")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("$2b$03$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R.")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("$2b$04$3ARMqkERPWQI4VNUm0Qc3Oeq8p2U0/4tTu1TE4UOCkGs91REzP8R!")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("$6$abcdefgh$tooshort")) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(H5, strlen(H5) - 1) == MG_API_EINVAL);
  CHECK(mg_api_crypt_supported(S("")) == MG_API_EINVAL);
}

static void check_passwords(void) {
  CHECK(mg_api_crypt_check(S("pw5"), S(H5)) == 1);
  CHECK(mg_api_crypt_check(S("pw6"), S(H5)) == 0);
  CHECK(mg_api_crypt_check(S("pw6"), S(H6R)) == 1);
  CHECK(mg_api_crypt_check(S("pw6 "), S(H6R)) == 0);
  CHECK(mg_api_crypt_check(S("b-secret"), S(B2B)) == 1);
  CHECK(mg_api_crypt_check(S("b-secret"), S(B2Y)) == 1);
  CHECK(mg_api_crypt_check(S("b-Secret"), S(B2B)) == 0);
  CHECK(mg_api_crypt_check(S(""), S(B2B)) == 0);
  CHECK(mg_api_crypt_check("b-secret\0x", 10, S(B2B)) == 0); /* a NUL never matches */
  CHECK(mg_api_crypt_check(S("x"), S("$1$gPT8bms7$qJexFlC2RJyvpOa5hsQPL0")) == MG_API_EINVAL);
}

int main(void) {
  static const t_case_t cases[] = {
    T(sha256_known_vector),
    T(ct_equal),
    T(supported_forms),
    T(check_passwords),
  };
  return t_run("auth", cases, sizeof(cases) / sizeof(cases[0]));
}
