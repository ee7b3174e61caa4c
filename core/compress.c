#include "compress.h"

#include <stdlib.h>
#include <string.h>

#include <pthread.h>

#include <brotli/decode.h>
#include <brotli/encode.h>
#include <libdeflate.h>
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

/* ---------------- the thread's spare memory ----------------
 * A compressor's state is large (zlib 261 KiB, brotli 3.5 MiB at quality 4):
 * malloc hands such blocks out as fresh mappings, and the kernel then faults in
 * every page of them, response after response (brotli: some 157 faults, a third
 * of its time on a 64 KiB body). Each thread keeps the blocks its encoders freed
 * (at most TC_BLOCKS, TC_BYTES in all) and gives them out again for the same
 * size, and keeps one zstd context and one libdeflate compressor per level. All
 * of it is freed when the thread ends (a pthread key's destructor). Under
 * AddressSanitizer the blocks go back to malloc at once, so a use after free is
 * still seen. */
#define TC_BLOCKS 12
#define TC_BYTES (24u << 20)
#define TC_HDR 16 /* the block's size before it, keeping malloc's alignment */

typedef struct {
  void *blk[TC_BLOCKS];
  size_t size[TC_BLOCKS];
  int n;
  size_t bytes;
  ZSTD_CCtx *zstd;                          /* a spare context (reset when taken) */
  struct libdeflate_compressor *ld[10];     /* by gzip level */
} tcache_t;

static pthread_key_t tc_key;
static pthread_once_t tc_once = PTHREAD_ONCE_INIT;

static void tc_destroy(void *v) {
  tcache_t *tc = v;
  for (int i = 0; i < tc->n; i++) free(tc->blk[i]);
  ZSTD_freeCCtx(tc->zstd);
  for (int i = 0; i < 10; i++)
    if (tc->ld[i]) libdeflate_free_compressor(tc->ld[i]);
  free(tc);
}

static void tc_key_make(void) {
  if (pthread_key_create(&tc_key, tc_destroy) != 0) abort();
}

/* The thread's cache, made on first use; NULL when out of memory (the callers
 * then allocate as usual). */
static tcache_t *tc_get(void) {
  pthread_once(&tc_once, tc_key_make);
  tcache_t *tc = pthread_getspecific(tc_key);
  if (tc) return tc;
  tc = calloc(1, sizeof(*tc));
  if (tc && pthread_setspecific(tc_key, tc) != 0) {
    free(tc);
    return NULL;
  }
  return tc;
}

static void *blk_alloc(size_t n) {
  if (n > SIZE_MAX - TC_HDR) return NULL;
#ifndef __SANITIZE_ADDRESS__
  tcache_t *tc = tc_get();
  if (tc)
    for (int i = 0; i < tc->n; i++) {
      if (tc->size[i] != n) continue;
      char *b = tc->blk[i];
      tc->bytes -= n;
      tc->n--;
      tc->blk[i] = tc->blk[tc->n], tc->size[i] = tc->size[tc->n];
      return b + TC_HDR;
    }
#endif
  char *b = malloc(n + TC_HDR);
  if (!b) return NULL;
  memcpy(b, &n, sizeof(n));
  return b + TC_HDR;
}

static void blk_free(void *p) {
  if (!p) return;
  char *b = (char *)p - TC_HDR;
#ifndef __SANITIZE_ADDRESS__
  size_t n;
  memcpy(&n, b, sizeof(n));
  tcache_t *tc = tc_get();
  if (tc && n <= TC_BYTES && tc->bytes + n <= TC_BYTES) {
    if (tc->n == TC_BLOCKS) { /* the oldest spare goes */
      tc->bytes -= tc->size[0];
      free(tc->blk[0]);
      tc->n--;
      memmove(tc->blk, tc->blk + 1, (size_t)tc->n * sizeof(tc->blk[0]));
      memmove(tc->size, tc->size + 1, (size_t)tc->n * sizeof(tc->size[0]));
    }
    tc->blk[tc->n] = b, tc->size[tc->n] = n, tc->n++;
    tc->bytes += n;
    return;
  }
#endif
  free(b);
}

/* The libraries' allocator hooks over blk_alloc / blk_free. */
static voidpf z_alloc(voidpf opaque, uInt items, uInt size) {
  (void)opaque;
  if (size && items > SIZE_MAX / size) return Z_NULL;
  return blk_alloc((size_t)items * size);
}
static void z_free(voidpf opaque, voidpf p) {
  (void)opaque;
  blk_free(p);
}
static void *br_alloc(void *opaque, size_t n) {
  (void)opaque;
  return blk_alloc(n);
}
static void br_free(void *opaque, void *p) {
  (void)opaque;
  blk_free(p);
}

/* ---------------- encoders ---------------- */

/* gzip of a body known to be at most this long is made in one pass, by
 * libdeflate, at the end: the body is kept until then (MG_ENC_WHOLE_MAX plus
 * libdeflate's output bound at most). libdeflate at the same level makes a
 * smaller stream than zlib's in about half its time. */
#define MG_ENC_WHOLE_MAX (1024 * 1024)

struct mg_encoder_s {
  int coding, level;
  int z_open;   /* gzip: deflateInit2 done (streaming) */
  int whole;    /* gzip: the body is kept for one pass (mg_encoder_size_hint) */
  char *wbuf;   /* whole: the body so far (blk_alloc'd, wcap bytes) */
  size_t wlen, wcap;
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
  e->level = level;
  e->z_open = e->whole = 0;
  e->wbuf = NULL;
  e->wlen = e->wcap = 0;
  tcache_t *tc;
  switch (coding) {
  case MG_CODING_GZIP:
    return e; /* the stream is opened at the first piece, unless kept whole */
  case MG_CODING_BR:
    e->u.br = BrotliEncoderCreateInstance(br_alloc, br_free, NULL);
    if (!e->u.br) goto fail;
    if (!BrotliEncoderSetParameter(e->u.br, BROTLI_PARAM_QUALITY, (uint32_t)level) ||
        !BrotliEncoderSetParameter(e->u.br, BROTLI_PARAM_LGWIN, MG_ENC_BR_LGWIN)) {
      BrotliEncoderDestroyInstance(e->u.br);
      goto fail;
    }
    return e;
  case MG_CODING_ZSTD:
    tc = tc_get();
    if (tc && tc->zstd) { /* the thread's spare, as new */
      e->u.zstd = tc->zstd;
      tc->zstd = NULL;
      ZSTD_CCtx_reset(e->u.zstd, ZSTD_reset_session_and_parameters);
    } else {
      e->u.zstd = ZSTD_createCCtx();
    }
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

void mg_encoder_size_hint(mg_encoder_t *e, uint64_t len) {
  if (e->coding == MG_CODING_GZIP && !e->z_open && e->wlen == 0 && len <= MG_ENC_WHOLE_MAX) {
    e->whole = 1;
    e->wcap = (size_t)len;
  } else if (e->coding == MG_CODING_BR && len <= UINT32_MAX) {
    BrotliEncoderSetParameter(e->u.br, BROTLI_PARAM_SIZE_HINT, (uint32_t)len);
  }
}

void mg_encoder_free(mg_encoder_t *e) {
  if (!e) return;
  tcache_t *tc;
  switch (e->coding) {
  case MG_CODING_GZIP:
    if (e->z_open) deflateEnd(&e->u.z);
    blk_free(e->wbuf);
    break;
  case MG_CODING_BR: BrotliEncoderDestroyInstance(e->u.br); break;
  case MG_CODING_ZSTD:
#ifndef __SANITIZE_ADDRESS__
    tc = tc_get();
    if (tc && !tc->zstd) {
      tc->zstd = e->u.zstd; /* kept for the thread's next zstd response */
      break;
    }
#else
    (void)tc;
#endif
    ZSTD_freeCCtx(e->u.zstd);
    break;
  }
  free(e);
}

/* gzip's streaming state, opened on first need. */
static int z_open(mg_encoder_t *e) {
  if (e->z_open) return 0;
  e->u.z.zalloc = z_alloc;
  e->u.z.zfree = z_free;
  /* windowBits 15 + 16: a gzip wrapper (header and CRC-32 trailer), not zlib's */
  int rc = deflateInit2(&e->u.z, e->level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  if (rc != Z_OK) return rc == Z_MEM_ERROR ? MG_ENOMEM : MG_EINVAL;
  e->z_open = 1;
  return 0;
}

/* One loop for the three libraries: run the compressor over the input with the
 * output buffer, hand on the buffer each time it fills, until the input is
 * taken (feed) or the library says the stream is complete (finish). */
enum { RUN_CONTINUE, RUN_FINISH, RUN_FLUSH };

static int run(mg_encoder_t *e, const char *p, size_t n, int mode, mg_enc_out_cb out, void *ctx) {
  int finish = mode == RUN_FINISH, flush = mode == RUN_FLUSH;
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
      int rc = deflate(z, finish && take == n ? Z_FINISH : flush && take == n ? Z_SYNC_FLUSH : Z_NO_FLUSH);
      if (rc == Z_STREAM_ERROR) return MG_EINVAL;
      made = sizeof(e->out) - z->avail_out;
      size_t used = take - z->avail_in;
      p += used;
      n -= used;
      done = finish ? rc == Z_STREAM_END : (n == 0 && z->avail_out != 0); /* (a flush's output fitted) */
      break;
    }
    case MG_CODING_BR: {
      size_t in = n, avail = sizeof(e->out);
      const uint8_t *next_in = (const uint8_t *)p;
      uint8_t *next_out = (uint8_t *)e->out;
      if (!BrotliEncoderCompressStream(e->u.br, finish  ? BROTLI_OPERATION_FINISH
                                                : flush ? BROTLI_OPERATION_FLUSH
                                                        : BROTLI_OPERATION_PROCESS,
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
      size_t left = ZSTD_compressStream2(e->u.zstd, &ob, &ib, finish ? ZSTD_e_end : flush ? ZSTD_e_flush : ZSTD_e_continue);
      if (ZSTD_isError(left)) return MG_EINVAL;
      made = ob.pos;
      p += ib.pos;
      n -= ib.pos;
      done = finish || flush ? left == 0 : (n == 0 && ob.pos < ob.size);
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

/* The whole body in one libdeflate pass, handed on in pieces. */
static int whole_finish(mg_encoder_t *e, mg_enc_out_cb out, void *ctx) {
  tcache_t *tc = tc_get();
  struct libdeflate_compressor *c = tc ? tc->ld[e->level] : NULL;
  if (!c) {
    c = libdeflate_alloc_compressor(e->level);
    if (!c) return MG_ENOMEM;
    if (tc) tc->ld[e->level] = c; /* the thread's from now on */
  }
  size_t bound = libdeflate_gzip_compress_bound(c, e->wlen);
  char *z = blk_alloc(bound);
  size_t made = z ? libdeflate_gzip_compress(c, e->wbuf ? e->wbuf : "", e->wlen, z, bound) : 0;
  if (!tc) libdeflate_free_compressor(c);
  int rc = made ? 0 : z ? MG_EINVAL : MG_ENOMEM;
  for (size_t off = 0; rc == 0 && off < made; off += MG_ENC_PIECE)
    rc = out(ctx, z + off, made - off < MG_ENC_PIECE ? made - off : MG_ENC_PIECE);
  blk_free(z);
  return rc;
}

/* A whole body grew past its hint (a body hook changed it): streaming from here,
 * the kept bytes first. */
static int whole_to_stream(mg_encoder_t *e, mg_enc_out_cb out, void *ctx) {
  e->whole = 0;
  int rc = z_open(e);
  if (rc == 0 && e->wlen) rc = run(e, e->wbuf, e->wlen, RUN_CONTINUE, out, ctx);
  blk_free(e->wbuf);
  e->wbuf = NULL;
  e->wlen = e->wcap = 0;
  return rc;
}

int mg_encoder_feed(mg_encoder_t *e, const char *p, size_t n, mg_enc_out_cb out, void *ctx) {
  if (!n) return 0;
  if (e->whole) {
    if (n <= e->wcap - e->wlen) {
      if (!e->wbuf && !(e->wbuf = blk_alloc(e->wcap))) return MG_ENOMEM;
      memcpy(e->wbuf + e->wlen, p, n);
      e->wlen += n;
      return 0;
    }
    int rc = whole_to_stream(e, out, ctx);
    if (rc < 0) return rc;
  }
  if (e->coding == MG_CODING_GZIP) {
    int rc = z_open(e);
    if (rc < 0) return rc;
  }
  return run(e, p, n, RUN_CONTINUE, out, ctx);
}

int mg_encoder_finish(mg_encoder_t *e, mg_enc_out_cb out, void *ctx) {
  if (e->whole) return whole_finish(e, out, ctx);
  if (e->coding == MG_CODING_GZIP) {
    int rc = z_open(e);
    if (rc < 0) return rc;
  }
  return run(e, "", 0, RUN_FINISH, out, ctx);
}

int mg_encoder_flush(mg_encoder_t *e, mg_enc_out_cb out, void *ctx) {
  if (e->whole) return 0;
  if (e->coding == MG_CODING_GZIP && !e->z_open) return 0; /* nothing fed yet */
  return run(e, "", 0, RUN_FLUSH, out, ctx);
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

/* One element "coding *( OWS ; OWS param )": its coding and q (1000 when none),
 * 0 when it parses, -1 when not. */
static int parse_element(mg_str_t el, mg_str_t *coding, int *q) {
  const char *semi = memchr(el.p, ';', el.len);
  *coding = mg_http_trim((mg_str_t){ el.p, semi ? (size_t)(semi - el.p) : el.len });
  if (!mg_http_is_token(*coding)) return -1;
  *q = 1000;
  while (semi) {
    const char *start = semi + 1, *end = el.p + el.len;
    semi = memchr(start, ';', (size_t)(end - start));
    mg_str_t param = mg_http_trim((mg_str_t){ start, (size_t)((semi ? semi : end) - start) });
    const char *eq = memchr(param.p, '=', param.len);
    if (!eq) return -1;
    mg_str_t name = mg_http_trim((mg_str_t){ param.p, (size_t)(eq - param.p) });
    mg_str_t value = mg_http_trim((mg_str_t){ eq + 1, (size_t)(param.p + param.len - eq - 1) });
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
