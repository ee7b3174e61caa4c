/* The PROXY protocol (HAProxy's spec, versions 1 and 2): a load balancer in front of
 * us sends one header before the client's bytes saying who the client is; toward an
 * upstream we may send one ourselves.
 *
 * Parsing is for bytes read from an accepted connection, which may arrive split at
 * any byte: call mg_pp_parse on everything read so far until it answers. It keeps
 * no state between calls (the header is at most 107 or 16 + 4096 bytes, so parsing
 * it again from the start is cheap and there is nothing to resume or free).
 * Writing builds the header into the caller's buffer.
 *
 * A leaf: only mg.h and libc; no allocation, nothing kept between calls,
 * thread-safe. Whether a listener expects a header, and whom it trusts to send one,
 * is the caller's policy: a header is believed only from a trusted peer. */
#ifndef MG_PROXYPROTO_H
#define MG_PROXYPROTO_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "mg.h"

/* The longest v1 header, CRLF included (the spec's limit). */
#define MG_PP_V1_MAX 107
/* The fixed part of a v2 header (signature, version/command, family, length). */
#define MG_PP_V2_FIXED 16
/* The largest v2 length field accepted: the address block plus TLVs. A bigger one
 * is refused at once rather than buffered (HAProxy's own TLVs stay far below). */
#define MG_PP_V2_LEN_MAX 4096
/* Room for any header mg_pp_write_v1 or mg_pp_write_v2 writes. */
#define MG_PP_WRITE_MAX 108
/* Room for mg_pp_format_client: "[" 45-byte IPv6 text "]:65535" and a NUL. */
#define MG_PP_CLIENT_MAX 54

/* What a header says. */
typedef struct {
  int version; /* 1 or 2 */
  /* 1: the header carries no client address, so use the connection's real peer:
   * v1 "UNKNOWN"; v2 LOCAL (the balancer's own connection, a health check); v2
   * PROXY over UNSPEC or over AF_UNIX (a socket path is no client address). Then
   * family is AF_UNSPEC and src/dst are zeroed. */
  int local;
  int family; /* AF_INET or AF_INET6 when !local (as received: an IPv4-mapped
                 IPv6 address stays AF_INET6) */
  /* The client (src) and the address it connected to (dst): sockaddr_in or
   * sockaddr_in6 with the port in network order, as a socket call fills them. */
  struct sockaddr_storage src, dst;
  /* v2 PROXY over INET/INET6: where the TLVs lie in the parsed bytes (offset from
   * the start of the header and total length, every TLV bounds-checked); 0 and 0
   * otherwise. Offsets, so they stay true for as long as the caller keeps the
   * bytes. */
  size_t tlv_off, tlv_len;
} mg_pp_addr_t;

/* Parses the PROXY header at the start of p[0..len).
 *
 * Returns > 0: the header is complete and valid; the number of bytes it took (what
 * follows is the client's data, not consumed), and *out is filled.
 * 0: what is there is a valid beginning of a header but not all of it: read more
 * and call again with everything (len 0 answers 0). A header never needs more than
 * MG_PP_V1_MAX or MG_PP_V2_FIXED + MG_PP_V2_LEN_MAX bytes.
 * -1: not a valid header, nor the beginning of one: close the connection. `why`
 * (when not NULL and whylen > 0) gets a short NUL-terminated phrase for the log line,
 * truncated to whylen. Refused as early as the bytes allow: a first byte that
 * starts neither signature, a v2 length over the cap or a bad v2 version on its
 * own byte; a v1 IPv4 address as soon as it cannot become one (an IPv6 address
 * is checked whole when its token ends).
 * *out is written only on > 0.
 *
 * v1 is the spec's grammar, strictly: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n"
 * (TCP6 likewise) with exactly one space between fields, addresses as inet_pton
 * accepts them for that family (dotted quads without leading zeros for TCP4),
 * ports 0-65535 in decimal without sign or leading zero; "PROXY UNKNOWN\r\n", or
 * "PROXY UNKNOWN " followed by anything but CR/LF and then CRLF (the spec says the
 * rest is ignored). The whole line, CRLF included, fits in 107 bytes.
 *
 * v2: the 12-byte signature, version 2, command LOCAL or PROXY.
 * LOCAL: the spec says accept it and discard the address block, family byte
 * included: so nothing after the length is looked at (local = 1).
 * PROXY: the family byte must be one the spec defines (UNSPEC, or INET, INET6,
 * UNIX over STREAM or DGRAM); DGRAM is refused (a datagram's header on a stream
 * connection is a misconfigured sender); UNSPEC and UNIX are accepted as
 * local = 1. The length must hold the family's address block (12, 36, 216 bytes)
 * and at most MG_PP_V2_LEN_MAX; what follows the block is TLVs, each of which must
 * end inside the header. A PP2_TYPE_CRC32C TLV, when present, must be 4 bytes and
 * match the header's checksum. Other TLVs are skipped (see tlv_off). */
int mg_pp_parse(const char *p, size_t len, mg_pp_addr_t *out, char *why, size_t whylen);

/* Writes the source address as "ip:port" or "[ip6]:port" (the form the connection
 * logs its client in), NUL-terminated, into buf. Returns its length, or 0 (buf
 * untouched) when the header carried no address (local) or cap is too small
 * (MG_PP_CLIENT_MAX is always enough). When `ip` is not NULL it is set to the bare
 * address inside buf (no brackets, no port). */
size_t mg_pp_format_client(const mg_pp_addr_t *a, char *buf, size_t cap, mg_str_t *ip);

/* Write a header for a connection from `src` (the client) to `dst` (the address it
 * reached) into buf. Returns the bytes written (no NUL), or 0 when cap is too small
 * (buf untouched; MG_PP_WRITE_MAX is always enough).
 *
 * Both AF_INET: TCP4 / INET. Both AF_INET6: TCP6 / INET6. One of each: the IPv4
 * one is written as its IPv4-mapped IPv6 address (::ffff:a.b.c.d) and both go as
 * TCP6 / INET6, so the client's address still reaches the upstream (v1 "UNKNOWN"
 * would lose it). Any other family: v1 "PROXY UNKNOWN\r\n", v2 PROXY over UNSPEC
 * with no address. src or dst NULL means a connection of our own with no client
 * behind it (a health check): v1 "PROXY UNKNOWN\r\n", v2 LOCAL. v2 writes no TLV. */
size_t mg_pp_write_v1(char *buf, size_t cap, const struct sockaddr *src, const struct sockaddr *dst);
size_t mg_pp_write_v2(char *buf, size_t cap, const struct sockaddr *src, const struct sockaddr *dst);

#endif
