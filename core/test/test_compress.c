/* Content codings (compress.h): each encoder's output decoded by its library's
 * decoder and compared byte for byte, fed in pieces of every size from 1 byte to
 * 1 MiB; output pieces bounded; the Accept-Encoding negotiation. */
#include <stdlib.h>

#include <brotli/decode.h>
#include <zlib.h>
#include <zstd.h>

#include "compress.h"
#include "test.h"

typedef struct {
  char *p;
  size_t len, cap;
  size_t biggest; /* the largest piece handed on */
  int pieces;
} sink_t;

static int collect(void *ctx, const char *p, size_t n) {
  sink_t *s = ctx;
  if (n > s->biggest) s->biggest = n;
  s->pieces++;
  if (s->len + n > s->cap) {
    s->cap = (s->len + n) * 2;
    s->p = realloc(s->p, s->cap);
  }
  memcpy(s->p + s->len, p, n);
  s->len += n;
  return 0;
}

/* Decodes s into a malloc'd buffer of *outlen bytes (NULL: it did not decode). */
static char *decode(int coding, const char *p, size_t n, size_t cap, size_t *outlen) {
  char *out = malloc(cap + 1);
  *outlen = 0;
  if (coding == MG_CODING_GZIP) {
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 15 + 16) != Z_OK) return NULL;
    z.next_in = (Bytef *)(uintptr_t)p;
    z.avail_in = (uInt)n;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap + 1;
    int rc = inflate(&z, Z_FINISH);
    *outlen = z.total_out;
    inflateEnd(&z);
    if (rc != Z_STREAM_END || z.avail_in != 0) goto fail;
  } else if (coding == MG_CODING_BR) {
    size_t len = cap + 1;
    if (BrotliDecoderDecompress(n, (const uint8_t *)p, &len, (uint8_t *)out) != BROTLI_DECODER_RESULT_SUCCESS)
      goto fail;
    *outlen = len;
  } else {
    size_t len = ZSTD_decompress(out, cap + 1, p, n);
    if (ZSTD_isError(len)) goto fail;
    *outlen = len;
  }
  return out;
fail:
  free(out);
  return NULL;
}

static char *sample(size_t n) {
  char *p = malloc(n);
  uint32_t x = 12345;
  for (size_t i = 0; i < n; i++) { /* text-like: words from a small alphabet, some noise */
    x = x * 1103515245u + 12345u;
    p[i] = (i % 7 == 6) ? ' ' : (char)('a' + ((x >> 16) % ((i / 4096) % 3 == 0 ? 4 : 26)));
  }
  return p;
}

/* hint >= 0: mg_encoder_size_hint(hint) first; *fed_out (may be NULL) gets how
 * many pieces came out before the finish. */
static int round_trip_hint(int coding, int level, const char *in, size_t n, size_t piece, long long hint,
                           int *fed_out) {
  mg_encoder_t *e = mg_encoder_new(coding, level);
  if (!e) return 0;
  if (hint >= 0) mg_encoder_size_hint(e, (uint64_t)hint);
  sink_t s = { 0 };
  int ok = 1;
  for (size_t off = 0; off < n; off += piece) {
    size_t k = n - off < piece ? n - off : piece;
    if (mg_encoder_feed(e, in + off, k, collect, &s) != 0) ok = 0;
  }
  if (fed_out) *fed_out = s.pieces;
  if (mg_encoder_finish(e, collect, &s) != 0) ok = 0;
  mg_encoder_free(e);
  size_t dlen;
  char *d = decode(coding, s.p, s.len, n, &dlen);
  if (!d || dlen != n || memcmp(d, in, n) != 0) ok = 0;
  if (s.biggest > MG_ENC_PIECE) ok = 0;
  if (n > 4096 && s.len >= n) ok = 0; /* text this regular compresses */
  free(d);
  free(s.p);
  return ok;
}

static int round_trip(int coding, int level, const char *in, size_t n, size_t piece) {
  return round_trip_hint(coding, level, in, n, piece, -1, NULL);
}

/* gzip with the body's length known (<= 1 MiB) is made in one pass at the end:
 * nothing comes out while it is fed, and it decodes to the body. A body longer
 * than its hint (a body hook changed it) goes on as a stream, one shorter is
 * encoded as it is, and a hint past 1 MiB streams from the start. */
static void gzip_of_a_known_length_in_one_pass(void) {
  const size_t n = 1024 * 1024;
  char *in = sample(n);
  const size_t lens[] = { 0, 1, 1000, 65536, 1024 * 1024 };
  for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    int fed = -1;
    CHECK(round_trip_hint(MG_CODING_GZIP, 5, in, lens[i], 4096, (long long)lens[i], &fed));
    CHECK(fed == 0);
  }
  int fed = -1;
  CHECK(round_trip_hint(MG_CODING_GZIP, 5, in, 200000, 1000, 1000, &fed)); /* longer than said */
  CHECK(fed > 0);
  CHECK(round_trip_hint(MG_CODING_GZIP, 1, in, 5000, 7, 100000, &fed)); /* shorter */
  CHECK(fed == 0);
  CHECK(round_trip_hint(MG_CODING_GZIP, 9, in, n, 65536, (long long)n + 1, &fed)); /* past 1 MiB */
  CHECK(fed > 0);
  /* br takes it as a size hint; zstd ignores it */
  CHECK(round_trip_hint(MG_CODING_BR, 4, in, 70000, 4096, 70000, NULL));
  CHECK(round_trip_hint(MG_CODING_ZSTD, 3, in, 70000, 4096, 70000, NULL));
  free(in);
}

/* Encoders one after another on one thread take its spare memory (blocks, the
 * zstd context): each stream is still whole and right, whatever the level or
 * coding before it. */
static void encoders_in_a_row_reuse_the_threads_memory(void) {
  const size_t n = 300000;
  char *in = sample(n);
  const int codings[] = { MG_CODING_ZSTD, MG_CODING_BR, MG_CODING_GZIP };
  const int levels[3][3] = { { 19, 1, 3 }, { 11, 0, 4 }, { 9, 1, 5 } };
  for (int round = 0; round < 3; round++)
    for (int c = 0; c < 3; c++)
      for (int l = 0; l < 3; l++) CHECK(round_trip(codings[c], levels[c][l], in, n, 65536));
  free(in);
}

/* A flush makes everything fed so far decodable from what came out so far (a
 * stream flows through the encoder), the stream goes on after it, and the whole
 * still decodes to the whole. Flushes twice in a row, and before any input, are
 * harmless. A body kept whole for libdeflate is not flushed. */
static void a_flush_lets_a_stream_flow(void) {
  const int codings[] = { MG_CODING_GZIP, MG_CODING_BR, MG_CODING_ZSTD };
  const char *parts[] = { "data: first event\n\n", "data: second, a little longer event\n\n", "x" };
  for (int c = 0; c < 3; c++) {
    mg_encoder_t *e = mg_encoder_new(codings[c], codings[c] == MG_CODING_BR ? 4 : 3);
    mg_decoder_t *d = mg_decoder_new(codings[c]);
    sink_t enc = { 0 }, dec = { 0 };
    CHECK(mg_encoder_flush(e, collect, &enc) == 0); /* nothing fed: nothing needed */
    size_t fed = 0, decoded_to = 0;
    char all[256];
    for (int i = 0; i < 3; i++) {
      size_t n = strlen(parts[i]);
      memcpy(all + fed, parts[i], n);
      fed += n;
      CHECK(mg_encoder_feed(e, parts[i], n, collect, &enc) == 0);
      CHECK(mg_encoder_flush(e, collect, &enc) == 0);
      CHECK(mg_encoder_flush(e, collect, &enc) == 0);
      /* what came out since the last flush decodes to exactly what went in */
      CHECK(mg_decoder_feed(d, enc.p + decoded_to, enc.len - decoded_to, collect, &dec) == 0);
      decoded_to = enc.len;
      CHECK(dec.len == fed && memcmp(dec.p, all, fed) == 0);
    }
    CHECK(mg_encoder_finish(e, collect, &enc) == 0);
    size_t dlen;
    char *whole = decode(codings[c], enc.p, enc.len, fed, &dlen);
    CHECK(whole && dlen == fed && memcmp(whole, all, fed) == 0);
    free(whole);
    mg_encoder_free(e);
    mg_decoder_free(d);
    free(enc.p);
    free(dec.p);
  }
  /* kept whole: a flush hands nothing on */
  mg_encoder_t *e = mg_encoder_new(MG_CODING_GZIP, 5);
  mg_encoder_size_hint(e, 10);
  sink_t s = { 0 };
  CHECK(mg_encoder_feed(e, "0123456789", 10, collect, &s) == 0);
  CHECK(mg_encoder_flush(e, collect, &s) == 0 && s.pieces == 0);
  mg_encoder_free(e);
  free(s.p);
}

static void every_coding_round_trips_in_pieces_of_every_size(void) {
  const size_t n = 1024 * 1024 + 17;
  char *in = sample(n);
  const int codings[] = { MG_CODING_GZIP, MG_CODING_BR, MG_CODING_ZSTD };
  const int levels[] = { 5, 4, 3 };
  const size_t pieces[] = { 1, 7, 1000, 16384, 65536, 1024 * 1024 };
  for (int c = 0; c < 3; c++) {
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
      /* 1-byte pieces over 64 KiB: a million calls per coding would only be slow */
      size_t len = pieces[i] == 1 ? 65536 : n;
      if (!round_trip(codings[c], levels[c], in, len, pieces[i])) {
        fprintf(stderr, "  %s, pieces of %zu: round trip failed\n", mg_coding_name(codings[c]), pieces[i]);
        CHECK(0);
      }
    }
  }
  free(in);
}

static void empty_and_tiny_bodies(void) {
  const int codings[] = { MG_CODING_GZIP, MG_CODING_BR, MG_CODING_ZSTD };
  for (int c = 0; c < 3; c++) {
    CHECK(round_trip(codings[c], 1, "", 0, 1));
    CHECK(round_trip(codings[c], 9, "x", 1, 1));
  }
}

static void levels_checked(void) {
  CHECK(mg_encoder_new(MG_CODING_GZIP, 0) == NULL);
  CHECK(mg_encoder_new(MG_CODING_GZIP, 10) == NULL);
  CHECK(mg_encoder_new(MG_CODING_BR, 12) == NULL);
  CHECK(mg_encoder_new(MG_CODING_ZSTD, 20) == NULL);
  CHECK(mg_encoder_new(MG_CODING_IDENTITY, 1) == NULL);
  mg_encoder_t *e = mg_encoder_new(MG_CODING_BR, 0);
  CHECK(e != NULL);
  mg_encoder_free(e);
  mg_encoder_free(NULL);
}

static int stop(void *ctx, const char *p, size_t n) {
  (void)ctx, (void)p, (void)n;
  return -7;
}

static void the_sink_stops_it(void) {
  mg_encoder_t *e = mg_encoder_new(MG_CODING_GZIP, 1);
  char *in = sample(200000);
  CHECK(mg_encoder_feed(e, in, 200000, stop, NULL) == -7);
  mg_encoder_free(e);
  free(in);
}

/* ---- decoders ---- */

/* in[0..n) encoded with our encoder, into a malloc'd buffer. */
static char *encode_all(int coding, const char *in, size_t n, size_t *len) {
  mg_encoder_t *e = mg_encoder_new(coding, coding == MG_CODING_BR ? 4 : 3);
  sink_t s = { 0 };
  mg_encoder_feed(e, in, n, collect, &s);
  mg_encoder_finish(e, collect, &s);
  mg_encoder_free(e);
  *len = s.len;
  return s.p;
}

/* Decodes enc in pieces of `piece` bytes: 1 when it gives back in[0..n) exactly. */
static int decode_pieces(int coding, const char *enc, size_t elen, const char *in, size_t n, size_t piece) {
  mg_decoder_t *d = mg_decoder_new(coding);
  sink_t s = { 0 };
  int ok = d != NULL;
  for (size_t off = 0; ok && off < elen; off += piece) {
    size_t k = elen - off < piece ? elen - off : piece;
    if (mg_decoder_feed(d, enc + off, k, collect, &s) != 0) ok = 0;
  }
  if (ok && mg_decoder_finish(d) != 0) ok = 0;
  if (ok && (s.len != n || (n && memcmp(s.p, in, n) != 0) || s.biggest > MG_ENC_PIECE)) ok = 0;
  mg_decoder_free(d);
  free(s.p);
  return ok;
}

static void decoders_round_trip(void) {
  const size_t n = 1024 * 1024 + 5;
  char *in = sample(n);
  const int codings[] = { MG_CODING_GZIP, MG_CODING_BR, MG_CODING_ZSTD };
  const size_t pieces[] = { 1, 13, 4096, 65536, 1 << 22 };
  for (int c = 0; c < 3; c++) {
    size_t elen;
    char *enc = encode_all(codings[c], in, n, &elen);
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
      if (!decode_pieces(codings[c], enc, elen, in, n, pieces[i])) {
        fprintf(stderr, "  %s decoder, pieces of %zu: failed\n", mg_coding_name(codings[c]), pieces[i]);
        CHECK(0);
      }
    }
    /* two streams back to back (gzip members, zstd frames) are one body */
    char *two = malloc(2 * elen);
    memcpy(two, enc, elen);
    memcpy(two + elen, enc, elen);
    char *twice = malloc(2 * n);
    memcpy(twice, in, n);
    memcpy(twice + n, in, n);
    if (codings[c] != MG_CODING_BR) CHECK(decode_pieces(codings[c], two, 2 * elen, twice, 2 * n, 65536));
    else CHECK(!decode_pieces(codings[c], two, 2 * elen, twice, 2 * n, 65536)); /* br: one stream only */
    free(two);
    free(twice);
    /* cut short: the end says so */
    mg_decoder_t *d = mg_decoder_new(codings[c]);
    sink_t s = { 0 };
    CHECK(mg_decoder_feed(d, enc, elen / 2, collect, &s) == 0);
    CHECK(mg_decoder_finish(d) == MG_EPARSE);
    mg_decoder_free(d);
    free(s.p);
    free(enc);
    /* not the coding at all */
    d = mg_decoder_new(codings[c]);
    s = (sink_t){ 0 };
    CHECK(mg_decoder_feed(d, "this is not compressed, not at all", 34, collect, &s) == MG_EPARSE);
    mg_decoder_free(d);
    free(s.p);
    /* an empty body is complete */
    d = mg_decoder_new(codings[c]);
    CHECK(mg_decoder_finish(d) == 0);
    mg_decoder_free(d);
  }
  free(in);
}

static int count_only(void *ctx, const char *p, size_t n) {
  (void)p;
  *(size_t *)ctx += n;
  return 0;
}

static void a_bomb_is_stopped(void) {
  const size_t n = 64 * 1024 * 1024; /* zeros: a few KiB encoded */
  char *zeros = calloc(1, n);
  const int codings[] = { MG_CODING_GZIP, MG_CODING_BR, MG_CODING_ZSTD };
  for (int c = 0; c < 3; c++) {
    size_t elen, got = 0;
    char *enc = encode_all(codings[c], zeros, n, &elen);
    CHECK(elen < 1024 * 1024);
    mg_decoder_t *d = mg_decoder_new(codings[c]);
    CHECK(mg_decoder_feed(d, enc, elen, count_only, &got) == MG_ELIMIT);
    CHECK(got <= MG_DEC_MAX_OUT);
    mg_decoder_free(d);
    free(enc);
  }
  free(zeros);
}

/* ---- negotiation ---- */

static const int PREF[] = { MG_CODING_BR, MG_CODING_ZSTD, MG_CODING_GZIP };

static int nego(const char *ae, int *refused) {
  int r;
  int c = mg_coding_negotiate((mg_str_t){ ae ? ae : "", ae ? strlen(ae) : 0 }, ae != NULL, PREF, 3, &r);
  if (refused) *refused = r;
  return c;
}

static void negotiation(void) {
  int refused;
  CHECK(nego(NULL, &refused) == MG_CODING_IDENTITY && !refused);
  CHECK(nego("", &refused) == MG_CODING_IDENTITY && !refused);
  CHECK(nego("gzip", NULL) == MG_CODING_GZIP);
  CHECK(nego("x-gzip", NULL) == MG_CODING_GZIP);
  CHECK(nego("GZIP", NULL) == MG_CODING_GZIP);
  CHECK(nego("gzip, deflate, br", NULL) == MG_CODING_BR);            /* tie: the server's order */
  CHECK(nego("gzip, deflate, br, zstd", NULL) == MG_CODING_BR);
  CHECK(nego("gzip, zstd", NULL) == MG_CODING_ZSTD);
  CHECK(nego("br;q=0.5, gzip;q=0.8", NULL) == MG_CODING_GZIP);        /* q wins over the order */
  CHECK(nego("br;q=0, gzip", NULL) == MG_CODING_GZIP);                 /* q=0 refuses */
  CHECK(nego("br;q=0.000, zstd;q=0", NULL) == MG_CODING_IDENTITY);
  CHECK(nego("*", NULL) == MG_CODING_BR);
  CHECK(nego("*;q=0.1, br;q=0", NULL) == MG_CODING_ZSTD);
  CHECK(nego("gzip;q=1.0, *;q=0", &refused) == MG_CODING_GZIP && refused);
  CHECK(nego("identity;q=0", &refused) == MG_CODING_IDENTITY && refused);
  CHECK(nego("identity", &refused) == MG_CODING_IDENTITY && !refused);
  CHECK(nego("gzip;q=0.5, identity", NULL) == MG_CODING_IDENTITY);     /* identity asked for more */
  CHECK(nego("gzip;q=0.5, identity;q=0.5", NULL) == MG_CODING_GZIP);
  CHECK(nego("*;q=0, identity;q=0.1", &refused) == MG_CODING_IDENTITY && !refused);
  CHECK(nego(" gzip ; q=0.9 ,br ; Q=0.3", NULL) == MG_CODING_GZIP);     /* spaces, Q */
  CHECK(nego("gzip;q=0.9, gzip;q=0.1, br;q=0.5", NULL) == MG_CODING_GZIP); /* the better entry */
  /* malformed elements are skipped, the rest counts */
  CHECK(nego("br;q=2, gzip", NULL) == MG_CODING_GZIP);
  CHECK(nego("br;q=0.5555, gzip;q=0.1", NULL) == MG_CODING_GZIP);
  CHECK(nego("br;q=, zstd;q, gzip;q=x", NULL) == MG_CODING_IDENTITY);
  CHECK(nego("b r, \"gzip\", zstd;level=3", NULL) == MG_CODING_ZSTD);
  CHECK(nego(",,, ;, gzip;;", NULL) == MG_CODING_IDENTITY);
  CHECK(nego(",,, , gzip", NULL) == MG_CODING_GZIP);
  CHECK(nego("compress, deflate", NULL) == MG_CODING_IDENTITY);
  /* the server offers only what it lists */
  int only_gzip[] = { MG_CODING_GZIP };
  CHECK(mg_coding_negotiate((mg_str_t){ "br, zstd", 8 }, 1, only_gzip, 1, &refused) == MG_CODING_IDENTITY);
  int zstd_first[] = { MG_CODING_ZSTD, MG_CODING_GZIP, MG_CODING_BR };
  CHECK(mg_coding_negotiate((mg_str_t){ "br, zstd, gzip", 14 }, 1, zstd_first, 3, &refused) == MG_CODING_ZSTD);
}

int main(void) {
  static const t_case_t cases[] = {
    T(every_coding_round_trips_in_pieces_of_every_size),
    T(empty_and_tiny_bodies),
    T(gzip_of_a_known_length_in_one_pass),
    T(encoders_in_a_row_reuse_the_threads_memory),
    T(a_flush_lets_a_stream_flow),
    T(levels_checked),
    T(the_sink_stops_it),
    T(negotiation),
    T(decoders_round_trip),
    T(a_bomb_is_stopped),
  };
  return t_run("compress", cases, sizeof(cases) / sizeof(cases[0]));
}
