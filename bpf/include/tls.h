/* Constants shared by bpf/tls.bpf.c and ext/ (Cython): the OpenSSL capture
 * program emits struct l7_event (include/l7.h) with source L7_SRC_SSL; these
 * index its per-CPU `drops` counters. */
#ifndef DKEBPF_TLS_H
#define DKEBPF_TLS_H

#define TLS_DROP_RING 0     /* events ring buffer full: a record was lost */
#define TLS_DROP_NO_SOCK 1  /* the SSL object's socket is not known yet (no
                             * socket call seen inside any SSL_* call of it) */
#define TLS_DROP_NOT_TCP 2  /* TLS over something else than TCP/IPv4/IPv6
                             * (a unix socket, or IPv6 with ipv6_disabled) */
#define TLS_DROP_PAYLOAD 3  /* plaintext buffer unreadable: record sent
                             * with cap_len 0 (counted, not lost) */
#define TLS_DROP_CALLS 4    /* ssl_calls update failed: an SSL call went unseen */
#define TLS_DROP_SOCKS 5    /* ssl_socks update failed: a socket stays unknown */
#define TLS_DROP_CONNS 6    /* tls_conns update failed: a message went uncounted */
#define TLS_DROP_MAX 7

#endif
