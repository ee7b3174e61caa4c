/* mg_head_scan (core/http.h): the line framing check that runs over every message
 * head before llhttp. Reads arrive cut anywhere, so the verdict may not depend on
 * where: over the input in one piece, one byte at a time, and cut at points the
 * input chooses, it must say the same thing, in the piece that holds the byte that
 * decides it. That byte and the verdict are those of a byte-by-byte model written
 * from the contract in http.h (the real scan goes line by line with memchr).
 *
 * Input: byte 0 = flags (bits 0-2: how many cut points, bit 3: scan a trailer
 * section, as after mg_head_scan_trailers), then a 16-bit LE position per cut
 * point (modulo the data length), then the data.
 *
 * fuzz-options: -max_len=4096 -dict=spec/fuzz/http.dict */
#include "fuzz.h"
#include "http.h"

/* The contract, one byte at a time: every line ends in CRLF, a CR is followed by
 * LF, no line after the start line begins with SP or HT, empty lines before the
 * start line are skipped, and the first empty line after it ends the head. Returns
 * the verdict; *at is the index of the byte that decided it (n when MORE). */
static int model(const uint8_t *p, size_t n, int trailers, size_t *at) {
  size_t lines = trailers ? 1 : 0, line_len = 0;
  int cr = 0;
  for (size_t i = 0; i < n; i++) {
    *at = i;
    uint8_t c = p[i];
    if (cr) {
      if (c != '\n') return MG_SCAN_BARE_CR;
      cr = 0;
      if (line_len == 0) {
        if (lines == 0) continue;
        return MG_SCAN_END;
      }
      lines++;
      line_len = 0;
    } else if (c == '\r') {
      cr = 1;
    } else if (c == '\n') {
      return MG_SCAN_BARE_LF;
    } else if (line_len == 0 && lines > 0 && (c == ' ' || c == '\t')) {
      return MG_SCAN_FOLD;
    } else {
      line_len++;
    }
  }
  *at = n;
  return MG_SCAN_MORE;
}

static void start(mg_head_scan_t *s, int trailers) {
  if (trailers) mg_head_scan_trailers(s);
  else mg_head_scan_reset(s);
}

static int cmp_size(const void *a, const void *b) {
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  return x < y ? -1 : x > y;
}

/* Feeds data cut at cuts[0..k) (sorted): checks the first verdict other than MORE
 * is `want` and comes in the piece that holds byte `at`, and that a scan that ended
 * keeps saying END. */
static void pieces(const uint8_t *data, size_t n, const size_t *cuts, size_t k, int trailers,
                   int want, size_t at) {
  mg_head_scan_t s;
  start(&s, trailers);
  size_t from = 0;
  int got = MG_SCAN_MORE;
  for (size_t j = 0; j <= k && got == MG_SCAN_MORE; j++) {
    size_t to = j < k ? cuts[j] : n;
    char *piece = fz_dup(data + from, to - from);
    got = mg_head_scan(&s, piece, to - from);
    free(piece);
    if (got != MG_SCAN_MORE) {
      FUZZ_CHECK(got == want);
      FUZZ_CHECK(at >= from && at < to);
    }
    from = to;
  }
  FUZZ_CHECK(got == want);
  if (got == MG_SCAN_END) {
    FUZZ_CHECK(mg_head_scan(&s, "\n\r x", 4) == MG_SCAN_END); /* the body is not scanned */
    FUZZ_CHECK(mg_head_scan(&s, "", 0) == MG_SCAN_END);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *p, size_t n) {
  fz_in_t in = { p, n };
  uint8_t flags = fz_u8(&in);
  size_t k = flags & 7;
  int trailers = (flags >> 3) & 1;
  uint16_t raw[7];
  for (size_t j = 0; j < k; j++) raw[j] = fz_u16(&in);
  const uint8_t *data = in.p;
  size_t len = in.n;
  size_t cuts[7];
  for (size_t j = 0; j < k; j++) cuts[j] = raw[j] % (len + 1);
  qsort(cuts, k, sizeof(cuts[0]), cmp_size);

  size_t at;
  int want = model(data, len, trailers, &at);

  /* in one piece */
  mg_head_scan_t s;
  start(&s, trailers);
  char *whole = fz_dup(data, len);
  FUZZ_CHECK(mg_head_scan(&s, whole, len) == want);
  free(whole);

  /* one byte at a time: the verdict comes with exactly the deciding byte */
  start(&s, trailers);
  for (size_t i = 0; i < len; i++) {
    char b = (char)data[i];
    int got = mg_head_scan(&s, &b, 1);
    if (got == MG_SCAN_MORE) {
      FUZZ_CHECK(i != at);
      continue;
    }
    FUZZ_CHECK(got == want && i == at);
    break;
  }

  pieces(data, len, cuts, k, trailers, want, at);
  return 0;
}
