/* Constants shared by bpf/tls.bpf.c and ext/ (Cython): the OpenSSL capture
 * program reports struct http_exchange (include/http.h) with source
 * HTTP_SRC_SSL; these index its per-CPU `drops` counters. */
#ifndef DKEBPF_TLS_H
#define DKEBPF_TLS_H

#include "http.h"

/* after the pairing's own counters (include/http.h, HTTP_DROP_*) */
#define TLS_DROP_NO_SOCK (HTTP_DROP_MAX + 0) /* the SSL object's socket is not known yet (no
                                              * socket call seen inside any SSL_* call of it) */
#define TLS_DROP_NOT_TCP (HTTP_DROP_MAX + 1) /* TLS over something else than TCP/IPv4/IPv6
                                              * (a unix socket, or IPv6 with ipv6_disabled) */
#define TLS_DROP_CALLS (HTTP_DROP_MAX + 2)   /* no ssl_calls task storage for the thread (out of
                                              * memory): an SSL call went unseen */
#define TLS_DROP_SOCKS (HTTP_DROP_MAX + 3)   /* ssl_socks update failed: a socket stays unknown */
/* with trace_spans (ebpf-trace's TLS spans, include/trace_span.bpf.h): */
#define TLS_DROP_SPAN_RING (HTTP_DROP_MAX + 4)  /* trace events ring full: a message start was lost */
#define TLS_DROP_SPAN_CONNS (HTTP_DROP_MAX + 5) /* trace_conns or tls_recs update failed */
#define TLS_DROP_MAX (HTTP_DROP_MAX + 6)

/* ebpf-trace's key of the plaintext of a socket's TLS in trace_conns and
 * span_msg.sk: the struct sock * (8-byte aligned: bit 0 free) with bit 0
 * set, so that the ciphertext bpf/trace.bpf.c sees on the socket and the
 * plaintext seen here are two connections to user space, never mixed. */
#define TLS_SK_TAG 1

#endif
