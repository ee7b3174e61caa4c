/* i14-auth: what the authentication policies need from C (core/api.h, the
 * "i14-auth" block): SHA-256 of a key, a constant-time comparison, password hash
 * verification through the system's crypt (libxcrypt: bcrypt $2b$/$2y$, SHA-2
 * crypt $5$/$6$), and the client certificate's common name and DNS names. */
#include <crypt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "api.h"
#include "luavm.h"
#include "worker.h"

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

/* crypt's base64 alphabet */
static int b64_run(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (!(c == '.' || c == '/' || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
      return 0;
  }
  return 1;
}

/* 0: a hash this build verifies; MG_API_EINVAL: not one (scheme, or malformed).
 * Checked by its form, without hashing (a config may list thousands of bcrypt
 * entries): bcrypt "$2b$NN$" + 53 characters; SHA-2 crypt "$5$" / "$6$", an
 * optional "rounds=N$", a salt, "$" and 43 / 86 characters; the setting must
 * pass libxcrypt's crypt_checksalt. Hashing happens only in mg_api_crypt_check. */
int mg_api_crypt_supported(const char *hash, size_t hlen) {
  if (hlen == 0 || hlen >= CRYPT_OUTPUT_SIZE || memchr(hash, '\0', hlen) || !scheme_ok(hash, hlen))
    return MG_API_EINVAL;
  char h[CRYPT_OUTPUT_SIZE];
  memcpy(h, hash, hlen);
  h[hlen] = '\0';
  if (h[1] == '2') {
    if (hlen != 60 || h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9' || h[6] != '$' ||
        !b64_run(h + 7, 53))
      return MG_API_EINVAL;
    int cost = (h[4] - '0') * 10 + (h[5] - '0');
    if (cost < 4 || cost > 31) return MG_API_EINVAL;
  } else {
    const char *last = strrchr(h, '$');
    size_t want = h[1] == '5' ? 43 : 86;
    if (last <= h + 2 || strlen(last + 1) != want || !b64_run(last + 1, want)) return MG_API_EINVAL;
  }
  /* LEGACY: libxcrypt's word for schemes it supports but does not pick for new
   * hashes ($5$ on Debian); the schemes themselves are chosen by scheme_ok */
  int cs = crypt_checksalt(h);
  return cs == CRYPT_SALT_OK || cs == CRYPT_SALT_METHOD_LEGACY ? 0 : MG_API_EINVAL;
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

/* ---- the check on libuv's thread pool, the hook waiting (mg_lua_wait_io) ----
 * A job belongs to the run that started it (an mg_lres_t of it) until Lua takes
 * its result. It is freed by whichever comes last of the pool's after_work and
 * its owner letting it go (the result taken, or the run ended: `done`). */
struct mg_crypt_job_s {
  uv_work_t work;
  mg_lwait_t lw;      /* what the hook waits on */
  mg_lres_t res;      /* ends with the run */
  mg_lreq_t *waiter;  /* the run waiting, NULL when none */
  int in_pool;        /* the pool has not handed it back yet */
  int owned;          /* the run (or Lua) still holds it */
  int rc;             /* mg_api_crypt_check's answer, once out of the pool */
  size_t pwlen, hlen;
  char *pw, *hash;    /* one allocation after the struct */
};

static void job_free(mg_crypt_job_t *j) {
  OPENSSL_cleanse(j->pw, j->pwlen + 1);
  free(j);
}

static void job_work(uv_work_t *w) {
  mg_crypt_job_t *j = (mg_crypt_job_t *)((char *)w - offsetof(mg_crypt_job_t, work));
  j->rc = mg_api_crypt_check(j->pw, j->pwlen, j->hash, j->hlen);
}

static void job_after(uv_work_t *w, int status) {
  mg_crypt_job_t *j = (mg_crypt_job_t *)((char *)w - offsetof(mg_crypt_job_t, work));
  j->in_pool = 0;
  if (status != 0) j->rc = MG_API_ENOMEM; /* cancelled: never happens, we never cancel */
  if (!j->owned) {
    job_free(j);
    return;
  }
  if (j->waiter) {
    mg_lreq_t *r = j->waiter;
    j->waiter = NULL;
    mg_lua_wake(r, &j->lw);
  }
}

/* The hook stops waiting (dropped, timeouts.hook): the job stays in the run's
 * resources, freed when the run ends. */
static void job_cancel(mg_lwait_t *op) {
  mg_crypt_job_t *j = (mg_crypt_job_t *)((char *)op - offsetof(mg_crypt_job_t, lw));
  j->waiter = NULL;
}

static void job_done(mg_lres_t *res) {
  mg_crypt_job_t *j = (mg_crypt_job_t *)((char *)res - offsetof(mg_crypt_job_t, res));
  j->waiter = NULL;
  j->owned = 0;
  if (!j->in_pool) job_free(j);
}

int mg_api_crypt_begin(const char *pw, size_t pwlen, const char *hash, size_t hlen, mg_crypt_job_t **out) {
  *out = NULL;
  mg_worker_t *w = mg_current_worker;
  mg_lreq_t *r = mg_lua_running(w);
  if (!r || r->io || !r->co) return MG_API_EPHASE;
  mg_crypt_job_t *j = calloc(1, sizeof(*j) + pwlen + 1 + hlen + 1);
  if (!j) return MG_API_ENOMEM;
  j->pw = (char *)(j + 1);
  j->hash = j->pw + pwlen + 1;
  memcpy(j->pw, pw, pwlen);
  memcpy(j->hash, hash, hlen);
  j->pwlen = pwlen;
  j->hlen = hlen;
  j->lw.cancel = job_cancel;
  j->res.done = job_done;
  if (uv_queue_work(&w->loop, &j->work, job_work, job_after) != 0) {
    job_free(j);
    return MG_API_ENOMEM;
  }
  j->in_pool = 1;
  j->owned = 1;
  mg_lua_res_add(r, &j->res);
  j->waiter = r;
  mg_lua_wait_io(r, &j->lw); /* cannot fail: checked above */
  *out = j;
  return MG_API_EAGAIN;
}

int mg_api_crypt_result(mg_crypt_job_t *j) {
  if (j->in_pool) { /* a wake that was not ours: wait again */
    mg_lreq_t *r = mg_lua_running(mg_current_worker);
    if (!r || mg_lua_wait_io(r, &j->lw) < 0) return MG_API_EPHASE;
    j->waiter = r;
    return MG_API_EAGAIN;
  }
  int rc = j->rc;
  mg_lua_res_remove(&j->res);
  job_free(j);
  return rc;
}
