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
#define TLS_DROP_MAX (HTTP_DROP_MAX + 4)

#endif
