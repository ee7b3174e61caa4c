#include "transport.h"

#include <stdio.h>

#include <openssl/err.h>

#include "tls.h"

/* Moves what BoringSSL wants to send into the queue. */
static int drain(SSL *ssl, mg_outq_t *q) {
  const uint8_t *p;
  size_t n = mg_tls_out_peek(ssl, &p);
  if (n == 0) return 0;
  if (mg_outq_append(q, p, n) < 0) return MG_ENOMEM;
  mg_tls_out_taken(ssl);
  return 0;
}

/* The pending plaintext becomes records (one SSL_write per block, so small
 * appends end up in few records), queued with whatever else BoringSSL has to
 * send (handshake, alerts, tickets) in front. */
static int encode(mg_outq_t *q) {
  mg_tp_tls_t *t = q->enc_data;
  mg_block_t *b = mg_outq_take(q);
  if (drain(t->ssl, q) < 0) {
    mg_outq_free_blocks(b);
    return MG_ENOMEM;
  }
  int rc = 0;
  while (b) {
    mg_block_t *next = b->next;
    if (rc == 0 && b->len > b->off && SSL_write(t->ssl, b->data + b->off, (int)(b->len - b->off)) <= 0)
      rc = UV_EPROTO;
    /* the records of this block move out at once: the BIO stays one block big */
    if (rc == 0 && drain(t->ssl, q) < 0) rc = MG_ENOMEM;
    b->next = NULL;
    mg_outq_free_blocks(b);
    b = next;
  }
  if (rc < 0) return rc;
  if (t->close == 1) { /* after the last plaintext */
    SSL_shutdown(t->ssl);
    t->close = 2;
  }
  return drain(t->ssl, q);
}

static int more(const mg_outq_t *q) {
  const mg_tp_tls_t *t = q->enc_data;
  return t->close == 1 || BIO_pending(SSL_get_wbio(t->ssl)) > 0;
}

static const mg_outq_enc_t tls_enc = { .encode = encode, .more = more };

void mg_tp_tls_attach(mg_outq_t *q, mg_tp_tls_t *t, SSL *ssl) {
  t->ssl = ssl;
  t->close = 0;
  q->enc = &tls_enc;
  q->enc_data = t;
}

void mg_tp_tls_detach(mg_outq_t *q, mg_tp_tls_t *t) {
  if (t->ssl) BIO_reset(SSL_get_wbio(t->ssl));
  q->enc = NULL;
  q->enc_data = NULL;
}

void mg_tp_tls_close(mg_tp_tls_t *t) {
  if (!t->close) t->close = 1;
}

int mg_tp_tls_handshake(SSL *ssl, char *why, size_t whylen, int *kind) {
  int rc = SSL_do_handshake(ssl);
  if (rc == 1) return MG_TP_HS_DONE;
  int e = SSL_get_error(ssl, rc);
  if (e == SSL_ERROR_WANT_READ) return MG_TP_HS_MORE;
  *kind = MG_TP_HS_ERROR;
  long v = SSL_is_server(ssl) ? X509_V_OK : SSL_get_verify_result(ssl);
  if (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_HTTP_REQUEST)
    *kind = MG_TP_HS_PLAIN_HTTP;
  if (v != X509_V_OK) {
    *kind = MG_TP_HS_CERT;
    snprintf(why, whylen, "%s", X509_verify_cert_error_string(v));
  } else if (e == SSL_ERROR_SSL) {
    mg_tls_error(why, whylen);
  } else {
    snprintf(why, whylen, "connection error");
  }
  ERR_clear_error();
  return MG_TP_HS_FAILED;
}

void mg_tp_tls_release_tickets(SSL *ssl) {
  SSL_write(ssl, "", 0);
  ERR_clear_error();
}

int mg_tp_tls_input(SSL *ssl, const char *p, size_t n) {
  return BIO_write(SSL_get_rbio(ssl), p, (int)n) == (int)n ? 0 : -1;
}

int mg_tp_tls_read(SSL *ssl, char *buf, size_t cap, int (*deliver)(void *arg, const char *p, size_t n),
                   void *arg) {
  for (;;) {
    int k = SSL_read(ssl, buf, (int)cap);
    if (k > 0) {
      if (deliver(arg, buf, (size_t)k)) return MG_TP_STOPPED;
      continue;
    }
    int e = SSL_get_error(ssl, k);
    if (e == SSL_ERROR_WANT_READ) return MG_TP_MORE;
    if (e == SSL_ERROR_ZERO_RETURN) return MG_TP_EOF;
    return MG_TP_ERROR;
  }
}
