/* Content codings: streaming encoders (gzip, br, zstd) and the negotiation of
 * one from a request's Accept-Encoding (RFC 9110 12.5.3). Knows no proxy and no
 * socket: an encoder takes pieces of body and hands what it makes, in pieces of
 * at most MG_ENC_PIECE bytes, to a callback; proxy.c wraps it in a response
 * filter (filter.h). docs/compression.md says how it is used.
 *
 * Memory per stream is bounded whatever the body's size: the compressor's state
 * (its window and the level's tables) plus one output buffer of MG_ENC_PIECE bytes.
 * Measured peaks (docs/compression.md has more levels):
 *   gzip: zlib, 32 KiB window (windowBits 15), memLevel 8: 261 KiB at any level
 *   br:   window 2^MG_ENC_BR_LGWIN (256 KiB): 3.5 MiB at quality 4
 *   zstd: window 2^MG_ENC_ZSTD_WLOG (256 KiB): 1.8 MiB at level 3 */
#ifndef MG_COMPRESS_H
#define MG_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

#include "mg.h"

/* The codings moongate knows; the order of the default server preference. */
enum { MG_CODING_IDENTITY = 0, MG_CODING_BR = 1, MG_CODING_ZSTD = 2, MG_CODING_GZIP = 3, MG_CODING_MAX = 4 };

#define MG_ENC_PIECE (16 * 1024) /* the largest piece an encoder hands on */
#define MG_ENC_BR_LGWIN 18
#define MG_ENC_ZSTD_WLOG 18

/* "gzip", "br", "zstd" ("identity" for 0). */
const char *mg_coding_name(int coding);
/* The coding named (any case; "x-gzip" is gzip), or -1. */
int mg_coding_parse(mg_str_t name);
/* The levels each coding takes: gzip 1-9, br 0-11, zstd 1-19. */
int mg_coding_level_ok(int coding, int level);

/* What an encoder makes goes here: 0, or < 0 to stop (the encoder returns it). */
typedef int (*mg_enc_out_cb)(void *ctx, const char *p, size_t n);

typedef struct mg_encoder_s mg_encoder_t;

/* A new encoder (malloc'd, the caller's: mg_encoder_free), or NULL (no memory,
 * or a coding or level it does not know). */
mg_encoder_t *mg_encoder_new(int coding, int level);
void mg_encoder_free(mg_encoder_t *e);
/* The body's length when it is known, before the first piece. gzip of a body of
 * at most 1 MiB is then kept and made in one pass at the end (libdeflate: half
 * zlib's time, a smaller stream); a body that grows past len after all goes on as
 * a stream. br takes it as its size hint. The others ignore it. */
void mg_encoder_size_hint(mg_encoder_t *e, uint64_t len);
/* Compresses p[0..n): what comes out goes to out (0 or more pieces; the encoder
 * may keep all of it for later). 0, MG_ENOMEM / MG_EINVAL (the library failed),
 * or what out returned. */
int mg_encoder_feed(mg_encoder_t *e, const char *p, size_t n, mg_enc_out_cb out, void *ctx);
/* The end of the body: everything held back, and the coding's trailer, goes out. */
int mg_encoder_finish(mg_encoder_t *e, mg_enc_out_cb out, void *ctx);
/* What the encoder holds goes out now, so a decoder can give back every byte fed
 * so far (gzip: a sync flush, br and zstd: a flushed block); the stream goes on.
 * A little ratio is lost each time. A body kept whole (size hint) is not flushed:
 * its length is known, it is not a stream. 0, or as mg_encoder_feed. */
int mg_encoder_flush(mg_encoder_t *e, mg_enc_out_cb out, void *ctx);

/* Decoders (decode = true on a route): the same shape. Windows are bounded: gzip
 * 32 KiB; br what the stream says, at most 16 MiB (no large-window streams); zstd
 * at most 2^MG_DEC_ZSTD_WLOG_MAX (a frame asking more fails). One call hands on at
 * most MG_DEC_MAX_OUT bytes: a piece that would decode to more fails (MG_ELIMIT)
 * -- the output goes to a queue, and a few KiB of a "bomb" must not fill memory. */
#define MG_DEC_ZSTD_WLOG_MAX 23
#define MG_DEC_MAX_OUT (16 * 1024 * 1024)
typedef struct mg_decoder_s mg_decoder_t;
mg_decoder_t *mg_decoder_new(int coding);
void mg_decoder_free(mg_decoder_t *d);
/* 0, MG_EPARSE (not a valid stream, or data after its end), MG_ELIMIT, MG_ENOMEM,
 * or what out returned. */
int mg_decoder_feed(mg_decoder_t *d, const char *p, size_t n, mg_enc_out_cb out, void *ctx);
/* The end of the body: 0 when the stream was complete, MG_EPARSE when cut short. */
int mg_decoder_finish(mg_decoder_t *d);

/* The negotiation. `ae` is the Accept-Encoding field value (several fields joined
 * with ", "), `has_ae` 0 when the request had none. `prefer` lists the codings
 * the server offers, best first (npref of them). Returns the coding to use
 * (MG_CODING_IDENTITY: none). *identity_refused is set when the client refused
 * identity (identity;q=0, or *;q=0 with no identity entry).
 *
 * Rules: a coding's weight is its own entry's q, else the q of `*`, else 0 (not
 * acceptable); q=0 refuses. The highest weight wins; ties go to the server's
 * preference. Identity wins over them only when the client gave identity (or *)
 * a q above the best coding's. No header, or an empty one: identity. Elements
 * that do not parse (a bad q, a bad token) are skipped, the rest counts. */
int mg_coding_negotiate(mg_str_t ae, int has_ae, const int *prefer, int npref, int *identity_refused);

#endif
