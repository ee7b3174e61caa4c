#include "compress.h"

#include <stdlib.h>
#include <string.h>

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>

#include "http.h"

const char *mg_coding_name(int coding) {
  switch (coding) {
  case MG_CODING_GZIP: return "gzip";
  case MG_CODING_BR: return "br";
  case MG_CODING_ZSTD: return "zstd";
  default: return "identity";
  }
}

int mg_coding_parse(mg_str_t n) {
  if (MG_NAME_IS(n, "gzip") || MG_NAME_IS(n, "x-gzip")) return MG_CODING_GZIP;
  if (MG_NAME_IS(n, "br")) return MG_CODING_BR;
  if (MG_NAME_IS(n, "zstd")) return MG_CODING_ZSTD;
  if (MG_NAME_IS(n, "identity")) return MG_CODING_IDENTITY;
  return -1;
}

int mg_coding_level_ok(int coding, int level) {
  switch (coding) {
  case MG_CODING_GZIP: return level >= 1 && level <= 9;
  case MG_CODING_BR: return level >= 0 && level <= 11;
  case MG_CODING_ZSTD: return level >= 1 && level <= 19;
  default: return 0;
  }
}

/* ---------------- encoders ---------------- */

struct mg_encoder_s {
  int coding;
  union {
    z_stream z;
    BrotliEncoderState *br;
    ZSTD_CCtx *zstd;
  } u;
  char out[MG_ENC_PIECE]; /* what the library writes into, handed on when full or done */
};

mg_encoder_t *mg_encoder_new(int coding, int level) {
  if (!mg_coding_level_ok(coding, level)) return NULL;
  mg_encoder_t *e = malloc(sizeof(*e));
  if (!e) return NULL;
  memset(&e->u, 0, sizeof(e->u));
  e->coding = coding;
  switch (coding) {
  case MG_CODING_GZIP:
    /* windowBits 15 + 16: a gzip wrapper (header and CRC-32 trailer), not zlib's */
    if (deflateInit2(&e->u.z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) goto fail;
    return e;
  case MG_CODING_BR:
    e->u.br = BrotliEncoderCreateInstance(NULL, NULL, NULL);
    if (!e->u.br) goto fail;
    if (!BrotliEncoderSetParameter(e->u.br, BROTLI_PARAM_QUALITY, (uint32_t)level) ||
        !BrotliEncoderSetParameter(e->u.br, BROTLI_PARAM_LGWIN, MG_ENC_BR_LGWIN)) {
      BrotliEncoderDestroyInstance(e->u.br);
      goto fail;
    }
    return e;
  case MG_CODING_ZSTD:
    e->u.zstd = ZSTD_createCCtx();
    if (!e->u.zstd) goto fail;
    if (ZSTD_isError(ZSTD_CCtx_setParameter(e->u.zstd, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(e->u.zstd, ZSTD_c_windowLog, MG_ENC_ZSTD_WLOG)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(e->u.zstd, ZSTD_c_checksumFlag, 1))) {
      ZSTD_freeCCtx(e->u.zstd);
      goto fail;
    }
    return e;
  }
fail:
  free(e);
  return NULL;
}

void mg_encoder_free(mg_encoder_t *e) {
  if (!e) return;
  switch (e->coding) {
  case MG_CODING_GZIP: deflateEnd(&e->u.z); break;
  case MG_CODING_BR: BrotliEncoderDestroyInstance(e->u.br); break;
  case MG_CODING_ZSTD: ZSTD_freeCCtx(e->u.zstd); break;
  }
  free(e);
}

/* One loop for the three libraries: run the compressor over the input with the
 * output buffer, hand on the buffer each time it fills, until the input is
 * taken (feed) or the library says the stream is complete (finish). */
static int run(mg_encoder_t *e, const char *p, size_t n, int finish, mg_enc_out_cb out, void *ctx) {
  for (;;) {
    size_t made = 0;
    int done; /* nothing more to do for this call */
    switch (e->coding) {
    case MG_CODING_GZIP: {
      z_stream *z = &e->u.z;
      /* avail_in is an unsigned int: a huge piece goes in several turns */
      uInt take = n > 0x40000000u ? 0x40000000u : (uInt)n;
      z->next_in = (Bytef *)(uintptr_t)p;
      z->avail_in = take;
      z->next_out = (Bytef *)e->out;
      z->avail_out = sizeof(e->out);
      int rc = deflate(z, finish && take == n ? Z_FINISH : Z_NO_FLUSH);
      if (rc == Z_STREAM_ERROR) return MG_EINVAL;
      made = sizeof(e->out) - z->avail_out;
      size_t used = take - z->avail_in;
      p += used;
      n -= used;
      done = finish ? rc == Z_STREAM_END : (n == 0 && z->avail_out != 0);
      break;
    }
    case MG_CODING_BR: {
      size_t in = n, avail = sizeof(e->out);
      const uint8_t *next_in = (const uint8_t *)p;
      uint8_t *next_out = (uint8_t *)e->out;
      if (!BrotliEncoderCompressStream(e->u.br, finish ? BROTLI_OPERATION_FINISH : BROTLI_OPERATION_PROCESS,
                                       &in, &next_in, &avail, &next_out, NULL))
        return MG_EINVAL;
      made = sizeof(e->out) - avail;
      p = (const char *)next_in;
      n = in;
      done = finish ? BrotliEncoderIsFinished(e->u.br)
                    : (n == 0 && !BrotliEncoderHasMoreOutput(e->u.br));
      break;
    }
    case MG_CODING_ZSTD: {
      ZSTD_inBuffer ib = { p, n, 0 };
      ZSTD_outBuffer ob = { e->out, sizeof(e->out), 0 };
      size_t left = ZSTD_compressStream2(e->u.zstd, &ob, &ib, finish ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(left)) return MG_EINVAL;
      made = ob.pos;
      p += ib.pos;
      n -= ib.pos;
      done = finish ? left == 0 : (n == 0 && ob.pos < ob.size);
      break;
    }
    default:
      return MG_EINVAL;
    }
    if (made) {
      int rc = out(ctx, e->out, made);
      if (rc < 0) return rc;
    }
    if (done) return 0;
  }
}

int mg_encoder_feed(mg_encoder_t *e, const char *p, size_t n, mg_enc_out_cb out, void *ctx) {
  return n ? run(e, p, n, 0, out, ctx) : 0;
}

int mg_encoder_finish(mg_encoder_t *e, mg_enc_out_cb out, void *ctx) {
  return run(e, "", 0, 1, out, ctx);
}

/* ---------------- decoders ---------------- */

struct mg_decoder_s {
  int coding;
  int fed;  /* some input came (an empty body is a complete one) */
  int done; /* gzip, br: the stream (gzip: its last member so far) ended */
  int open; /* zstd: a frame is begun and not ended */
  union {
    z_stream z;
    BrotliDecoderState *br;
    ZSTD_DCtx *zstd;
  } u;
  char out[MG_ENC_PIECE];
};

mg_decoder_t *mg_decoder_new(int coding) {
  mg_decoder_t *d = malloc(sizeof(*d));
  if (!d) return NULL;
  memset(&d->u, 0, sizeof(d->u));
  d->coding = coding;
  d->fed = d->done = d->open = 0;
  switch (coding) {
  case MG_CODING_GZIP:
    if (inflateInit2(&d->u.z, 15 + 16) != Z_OK) break; /* gzip only, 32 KiB window */
    return d;
  case MG_CODING_BR:
    if (!(d->u.br = BrotliDecoderCreateInstance(NULL, NULL, NULL))) break;
    return d;
  case MG_CODING_ZSTD:
    if (!(d->u.zstd = ZSTD_createDCtx())) break;
    if (ZSTD_isError(ZSTD_DCtx_setParameter(d->u.zstd, ZSTD_d_windowLogMax, MG_DEC_ZSTD_WLOG_MAX))) {
      ZSTD_freeDCtx(d->u.zstd);
      break;
    }
    return d;
  }
  free(d);
  return NULL;
}

void mg_decoder_free(mg_decoder_t *d) {
  if (!d) return;
  switch (d->coding) {
  case MG_CODING_GZIP: inflateEnd(&d->u.z); break;
  case MG_CODING_BR: BrotliDecoderDestroyInstance(d->u.br); break;
  case MG_CODING_ZSTD: ZSTD_freeDCtx(d->u.zstd); break;
  }
  free(d);
}

int mg_decoder_feed(mg_decoder_t *d, const char *p, size_t n, mg_enc_out_cb out, void *ctx) {
  size_t total = 0;
  if (n) d->fed = 1;
  for (;;) {
    size_t made = 0, used = 0;
    int more = 0; /* the output buffer filled: more may be pending */
    switch (d->coding) {
    case MG_CODING_GZIP: {
      z_stream *z = &d->u.z;
      if (d->done) { /* RFC 1952: another member may follow */
        if (n == 0) return 0;
        if (inflateReset(z) != Z_OK) return MG_EPARSE;
        d->done = 0;
      }
      uInt take = n > 0x40000000u ? 0x40000000u : (uInt)n;
      z->next_in = (Bytef *)(uintptr_t)p;
      z->avail_in = take;
      z->next_out = (Bytef *)d->out;
      z->avail_out = sizeof(d->out);
      int rc = inflate(z, Z_NO_FLUSH);
      if (rc == Z_MEM_ERROR) return MG_ENOMEM;
      if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) return MG_EPARSE;
      made = sizeof(d->out) - z->avail_out;
      used = take - z->avail_in;
      if (rc == Z_STREAM_END) d->done = 1;
      more = z->avail_out == 0;
      break;
    }
    case MG_CODING_BR: {
      if (d->done) return n ? MG_EPARSE : 0; /* bytes after the end of the stream */
      size_t in = n, avail = sizeof(d->out);
      const uint8_t *next_in = (const uint8_t *)p;
      uint8_t *next_out = (uint8_t *)d->out;
      BrotliDecoderResult rc = BrotliDecoderDecompressStream(d->u.br, &in, &next_in, &avail, &next_out, NULL);
      if (rc == BROTLI_DECODER_RESULT_ERROR) return MG_EPARSE;
      made = sizeof(d->out) - avail;
      used = n - in;
      if (rc == BROTLI_DECODER_RESULT_SUCCESS) d->done = 1;
      more = rc == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT;
      break;
    }
    case MG_CODING_ZSTD: {
      ZSTD_inBuffer ib = { p, n, 0 };
      ZSTD_outBuffer ob = { d->out, sizeof(d->out), 0 };
      size_t rc = ZSTD_decompressStream(d->u.zstd, &ob, &ib);
      if (ZSTD_isError(rc)) return MG_EPARSE;
      made = ob.pos;
      used = ib.pos;
      d->open = rc != 0; /* 0: a frame ended and is all handed out; several may follow */
      more = ob.pos == ob.size;
      break;
    }
    default:
      return MG_EINVAL;
    }
    p += used;
    n -= used;
    total += made;
    if (total > MG_DEC_MAX_OUT) return MG_ELIMIT;
    if (made) {
      int rc = out(ctx, d->out, made);
      if (rc < 0) return rc;
    }
    if (n == 0 && !more) return 0;
    if (!made && !used && !more) return MG_EPARSE; /* no progress: a stream that cannot go on */
  }
}

int mg_decoder_finish(mg_decoder_t *d) {
  if (!d->fed) return 0;
  if (d->coding == MG_CODING_ZSTD) return d->open ? MG_EPARSE : 0;
  return d->done ? 0 : MG_EPARSE;
}

/* ---------------- negotiation ---------------- */

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* A qvalue (RFC 9110 12.4.2: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")]) in
 * thousandths, or -1. */
static int parse_q(mg_str_t v) {
  if (v.len == 0 || v.len > 5 || (v.p[0] != '0' && v.p[0] != '1')) return -1;
  int q = (v.p[0] - '0') * 1000;
  if (v.len == 1) return q;
  if (v.p[1] != '.') return -1;
  int scale = 100;
  for (size_t i = 2; i < v.len; i++, scale /= 10) {
    if (v.p[i] < '0' || v.p[i] > '9') return -1;
    q += (v.p[i] - '0') * scale;
  }
  return q > 1000 ? -1 : q;
}

static mg_str_t trim(mg_str_t s) {
  while (s.len && is_ows(s.p[0])) s.p++, s.len--;
  while (s.len && is_ows(s.p[s.len - 1])) s.len--;
  return s;
}

/* One element "coding *( OWS ; OWS param )": its coding and q (1000 when none),
 * 0 when it parses, -1 when not. */
static int parse_element(mg_str_t el, mg_str_t *coding, int *q) {
  const char *semi = memchr(el.p, ';', el.len);
  *coding = trim((mg_str_t){ el.p, semi ? (size_t)(semi - el.p) : el.len });
  if (!mg_http_is_token(*coding)) return -1;
  *q = 1000;
  while (semi) {
    const char *start = semi + 1, *end = el.p + el.len;
    semi = memchr(start, ';', (size_t)(end - start));
    mg_str_t param = trim((mg_str_t){ start, (size_t)((semi ? semi : end) - start) });
    const char *eq = memchr(param.p, '=', param.len);
    if (!eq) return -1;
    mg_str_t name = trim((mg_str_t){ param.p, (size_t)(eq - param.p) });
    mg_str_t value = trim((mg_str_t){ eq + 1, (size_t)(param.p + param.len - eq - 1) });
    if (MG_NAME_IS(name, "q")) {
      *q = parse_q(value);
      if (*q < 0) return -1;
    }
  }
  return 0;
}

int mg_coding_negotiate(mg_str_t ae, int has_ae, const int *prefer, int npref, int *identity_refused) {
  *identity_refused = 0;
  if (!has_ae) return MG_CODING_IDENTITY;
  int q[MG_CODING_MAX], star = -1;
  for (int i = 0; i < MG_CODING_MAX; i++) q[i] = -1; /* -1: no entry */
  size_t pos = 0;
  mg_str_t el;
  while (mg_http_next_token(ae, &pos, &el)) {
    mg_str_t name;
    int eq;
    if (parse_element(el, &name, &eq) < 0) continue;
    if (name.len == 1 && name.p[0] == '*') {
      if (eq > star) star = eq;
      continue;
    }
    int c = mg_coding_parse(name);
    if (c >= 0 && eq > q[c]) q[c] = eq; /* listed twice: the better one counts */
  }
  int id_q = q[MG_CODING_IDENTITY] >= 0 ? q[MG_CODING_IDENTITY] : star;
  *identity_refused = id_q == 0;
  int best = MG_CODING_IDENTITY, best_q = 0;
  for (int i = 0; i < npref; i++) {
    int c = prefer[i];
    if (c <= MG_CODING_IDENTITY || c >= MG_CODING_MAX) continue;
    int w = q[c] >= 0 ? q[c] : (star >= 0 ? star : 0);
    if (w > best_q) { /* strictly better: on a tie the earlier (preferred) stays */
      best = c;
      best_q = w;
    }
  }
  if (best != MG_CODING_IDENTITY && id_q > best_q) return MG_CODING_IDENTITY;
  return best;
}
