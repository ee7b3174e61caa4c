/* The byte stream under a connection, client or upstream side: what both read
 * and write through when the stream is TLS. Its output queue (buf.h) takes
 * plaintext; the records are made here, when the queue is flushed. Its input side
 * turns records read from the socket into plaintext. It knows no HTTP.
 *
 * Plain streams need none of this: their queue writes what is appended. */
#ifndef MG_TRANSPORT_H
#define MG_TRANSPORT_H

#include <openssl/ssl.h>

#include "buf.h"
#include "mg.h"

/* A TLS stream's write side, kept beside its queue. */
typedef struct {
  SSL *ssl;
  int close; /* 1: send close_notify after what is pending; 2: sent */
} mg_tp_tls_t;

/* From now on what is appended to q is encrypted with t->ssl when flushed. */
void mg_tp_tls_attach(mg_outq_t *q, mg_tp_tls_t *t, SSL *ssl);
/* Back to plain bytes (a plaintext answer to a client that spoke HTTP to a TLS
 * port): what BoringSSL had queued is dropped. */
void mg_tp_tls_detach(mg_outq_t *q, mg_tp_tls_t *t);
/* close_notify goes after what is pending (once; a no-op when it was asked). */
void mg_tp_tls_close(mg_tp_tls_t *t);

/* What a handshake step gave (mg_tp_tls_handshake). */
enum {
  MG_TP_HS_DONE = 0,    /* the handshake is over */
  MG_TP_HS_MORE = 1,    /* flush what it queued and wait for the peer */
  MG_TP_HS_FAILED = -1, /* failed: *why says why, *kind which way */
};
enum {
  MG_TP_HS_ERROR = 0,      /* a TLS error or the connection failing */
  MG_TP_HS_PLAIN_HTTP = 1, /* the peer spoke plain HTTP to a TLS port */
  MG_TP_HS_CERT = 2,       /* (clients) the peer's certificate was not accepted */
};
/* Advances the handshake with what ssl has been given: the same code for a
 * listener's connections and for upstream ones. On failure `why` gets a short
 * cause for a log line and the error queue is cleared. */
int mg_tp_tls_handshake(SSL *ssl, char *why, size_t whylen, int *kind);

/* TLS 1.3 servers: BoringSSL holds the session tickets until the first write;
 * this queues them now (a zero-byte write), for the next flush. */
void mg_tp_tls_release_tickets(SSL *ssl);

/* What a read of records gave (mg_tp_tls_read). */
enum {
  MG_TP_MORE = 0,       /* all that could be decrypted was delivered; wait for the socket */
  MG_TP_STOPPED = 1,    /* deliver() returned non-zero: stopped there */
  MG_TP_EOF = 2,        /* the peer sent close_notify */
  MG_TP_ERROR = -1,     /* a TLS error (mg_tls_error says which) */
};
/* Feeds ciphertext read from the socket into ssl (0, or -1 out of memory). */
int mg_tp_tls_input(SSL *ssl, const char *p, size_t n);
/* Decrypts what can be, into buf (cap bytes at a time), handing each piece to
 * deliver(arg, p, n); a non-zero return stops. Handshake done before. */
int mg_tp_tls_read(SSL *ssl, char *buf, size_t cap, int (*deliver)(void *arg, const char *p, size_t n),
                   void *arg);

#endif
