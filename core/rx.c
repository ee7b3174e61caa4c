/* core/rx.h: PCRE2 behind four calls. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "rx.h"

#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mg_rx_s {
  pcre2_code *code;
  pcre2_match_data *md;
  int groups;
  int jit;
};

mg_rx_t *mg_rx_new(const char *pat, size_t len, unsigned flags, char *err, size_t errlen, size_t *erroff) {
  if (errlen) err[0] = '\0';
  *erroff = 0;
  mg_rx_t *rx = calloc(1, sizeof *rx);
  if (!rx) {
    if (errlen) snprintf(err, errlen, "out of memory");
    return NULL;
  }
  uint32_t opts = (flags & MG_RX_CASELESS) ? PCRE2_CASELESS : 0;
  int ec = 0;
  PCRE2_SIZE off = 0;
  rx->code = pcre2_compile((PCRE2_SPTR)pat, len, opts, &ec, &off, NULL);
  if (!rx->code) {
    if (errlen) {
      PCRE2_UCHAR buf[256];
      if (pcre2_get_error_message(ec, buf, sizeof buf) < 0) snprintf((char *)buf, sizeof buf, "error %d", ec);
      snprintf(err, errlen, "%s", (char *)buf);
    }
    *erroff = off;
    free(rx);
    return NULL;
  }
  uint32_t n = 0;
  pcre2_pattern_info(rx->code, PCRE2_INFO_CAPTURECOUNT, &n);
  rx->groups = (int)n;
  rx->jit = pcre2_jit_compile(rx->code, PCRE2_JIT_COMPLETE) == 0;
  rx->md = pcre2_match_data_create_from_pattern(rx->code, NULL);
  if (!rx->md) {
    if (errlen) snprintf(err, errlen, "out of memory");
    pcre2_code_free(rx->code);
    free(rx);
    return NULL;
  }
  return rx;
}

void mg_rx_free(mg_rx_t *rx) {
  if (!rx) return;
  pcre2_match_data_free(rx->md);
  pcre2_code_free(rx->code);
  free(rx);
}

int mg_rx_groups(const mg_rx_t *rx) { return rx ? rx->groups : 0; }
int mg_rx_jit(const mg_rx_t *rx) { return rx ? rx->jit : 0; }

int mg_rx_match(mg_rx_t *rx, const char *s, size_t len, size_t *ovec, size_t n_pairs) {
  if (!rx) return -1;
  /* pcre2_match takes the JIT path by itself when the code was JIT-compiled */
  int rc = pcre2_match(rx->code, (PCRE2_SPTR)(s ? s : ""), len, 0, 0, rx->md, NULL);
  if (rc == PCRE2_ERROR_NOMATCH) return 0;
  if (rc < 0) return rc;
  PCRE2_SIZE *ov = pcre2_get_ovector_pointer(rx->md);
  uint32_t have = pcre2_get_ovector_count(rx->md);
  size_t want = (size_t)rx->groups + 1;
  if (want > n_pairs) want = n_pairs;
  for (size_t i = 0; i < want; i++) {
    if (i < have && i < (size_t)rc && ov[2 * i] != PCRE2_UNSET) {
      ovec[2 * i] = ov[2 * i];
      ovec[2 * i + 1] = ov[2 * i + 1];
    } else {
      ovec[2 * i] = SIZE_MAX;
      ovec[2 * i + 1] = SIZE_MAX;
    }
  }
  return rc == 0 ? (int)have : rc;
}
