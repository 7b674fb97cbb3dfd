"""The load of `dkebpf bench`: an epoll client and an epoll server, each one
loop in C with the GIL released, so that the harness needs no tool besides
the package.

Kinds of load (``KIND_*``):
  http  HTTP/1.1 keep-alive requests, one in flight per connection
  conn  a new TCP connection per request (``Connection: close``: the server
        closes first, so TIME_WAIT stays on its side, not on the client's
        ephemeral ports)
  udp   a new UDP flow per datagram: a fresh connected socket (a new source
        port), one datagram, its echo, close
  dns   DNS A queries over UDP, one in flight per socket, to the server's
        tiny responder (every A question gets 127.0.0.1)
  https HTTP/1.1 keep-alive requests inside TLS (OpenSSL; the server's
        certificate is self-signed at start, the client does not verify it:
        loopback, and the handshake cost is not what is measured)
  pkt   one-way UDP datagrams (packets/s) to a discard socket, from one
        connected socket per slot; an operation is one send

HTTP responses must carry a Content-Length (ours and nginx's do; no
chunked bodies). The client is open loop at a target rate (0 = as fast as the connections
go): an operation starts when the schedule says so and a slot is free; a
backlog larger than one round of slots is forgotten (counted as skipped,
not started), so a stalled server shows as a lower achieved rate, not as a
burst afterwards. Latency is from the start of an operation (connect
included for conn/udp) to its complete answer, kept as a sum (exact mean)
and a log histogram (percentiles, ~6 % wide buckets).
"""
from libc.errno cimport errno, EAGAIN, ECONNRESET, EINPROGRESS, EMSGSIZE, ENOMEM, EPROTO
from libc.math cimport log, exp, ceil
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memmove, memset, strerror

import numpy as np
cimport numpy as cnp

from dkebpf.errors import DkebpfError, kernel_error

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport close, read, write

from dk_common cimport be16
from openssl cimport *
from sysio cimport *

cnp.import_array()

cdef enum:
    KIND_HTTP = 0
    KIND_CONN = 1
    KIND_UDP = 2
    KIND_DNS = 3
    KIND_HTTPS = 4
    KIND_PKT = 5
KINDS = {"http": KIND_HTTP, "conn": KIND_CONN, "udp": KIND_UDP, "dns": KIND_DNS, "https": KIND_HTTPS,
         "pkt": KIND_PKT}

cdef enum:
    NBUCKETS = 256
    BUCKETS_PER_E = 16      # bucket i >= 1 holds [exp((i-1)/16), exp(i/16)) microseconds
    RESP_BUF = 2048
    MAX_EVENTS = 256
    OP_TIMEOUT_MS = 2000    # an operation unanswered this long counts as a timeout
    SRV_MAXFD = 65536
    SRV_BUF = 4096
    DNS_QUERY_LEN = 28
    UDP_PAYLOAD_LEN = 32
    DNS_ANSWER_LEN = 16

HIST_BUCKETS = NBUCKETS


def bucket_upper_us(cnp.ndarray idx):
    """Upper bound in microseconds of histogram buckets ``idx``."""
    return np.exp(idx.astype(np.float64) / BUCKETS_PER_E)


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int cstrlen(const char *s) noexcept nogil:
    cdef int n = 0
    while s[n]:
        n += 1
    return n


cdef const char *HTTP_KEEPALIVE_REQ = b"GET /ok HTTP/1.1\r\nHost: bench\r\nUser-Agent: dkebpf-bench\r\n\r\n"
cdef const char *HTTP_CLOSE_REQ = (b"GET /ok HTTP/1.1\r\nHost: bench\r\nUser-Agent: dkebpf-bench\r\n"
                                   b"Connection: close\r\n\r\n")
# a DNS query for bench.test A (RFC 1035 4.1): id (2 bytes, set per query),
# flags RD, one question
cdef const uint8_t *DNS_QUERY = (b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                                  b"\x05bench\x04test\x00\x00\x01\x00\x01")

# ---------------------------------------------------------------- client

cdef enum:
    SLOT_IDLE = 0
    SLOT_CONNECTING = 1
    SLOT_WAITING = 2
    SLOT_HANDSHAKE = 3

cdef struct slot_t:
    int fd
    SSL *ssl
    int state
    uint64_t t0
    int got
    int need
    uint16_t dns_id
    char buf[RESP_BUF]

cdef struct client_t:
    int kind
    sockaddr_in addr
    int nslots
    double rate
    uint64_t duration_ns
    int epfd
    SSL_CTX *tls
    slot_t *slots
    int *free_stack
    int nfree
    uint64_t started    # operations begun: each is then done, an error, a timeout or in flight
    uint64_t skipped    # operations of the schedule forgotten, never begun (the client was behind)
    uint64_t done
    uint64_t errors
    uint64_t timeouts
    uint64_t lat_sum_ns
    uint64_t elapsed_ns
    int first_errno
    uint64_t hist[NBUCKETS]


cdef inline bint persistent(int kind) noexcept nogil:
    return kind == KIND_HTTP or kind == KIND_DNS or kind == KIND_HTTPS or kind == KIND_PKT


cdef inline bint over_tcp(int kind) noexcept nogil:
    return kind == KIND_HTTP or kind == KIND_CONN or kind == KIND_HTTPS


cdef inline void note_errno(client_t *c, int err) noexcept nogil:
    if c.first_errno == 0:
        c.first_errno = err


cdef void slot_close(client_t *c, slot_t *s) noexcept nogil:
    if s.ssl != NULL:
        SSL_free(s.ssl)
        s.ssl = NULL
    if s.fd >= 0:
        close(s.fd)  # also leaves the epoll set
        s.fd = -1


cdef void slot_release(client_t *c, int i) noexcept nogil:
    c.slots[i].state = SLOT_IDLE
    c.free_stack[c.nfree] = i
    c.nfree += 1


cdef void slot_fail(client_t *c, int i, int err) noexcept nogil:
    c.errors += 1
    note_errno(c, err)
    slot_close(c, &c.slots[i])
    slot_release(c, i)


cdef void slot_done(client_t *c, int i, uint64_t t) noexcept nogil:
    cdef slot_t *s = &c.slots[i]
    cdef uint64_t lat = t - s.t0
    cdef double us = lat / 1000.0
    cdef int b = 0
    if us >= 1.0:
        b = <int>(log(us) * BUCKETS_PER_E) + 1
        if b >= NBUCKETS:
            b = NBUCKETS - 1
    c.hist[b] += 1
    c.lat_sum_ns += lat
    c.done += 1
    if not persistent(c.kind):
        slot_close(c, s)
    slot_release(c, i)


cdef int slot_send(client_t *c, int i) noexcept nogil:
    """Send the operation's request on a connected socket; 0 or an errno."""
    cdef slot_t *s = &c.slots[i]
    cdef const char *req
    cdef size_t n
    cdef uint8_t q[DNS_QUERY_LEN]
    cdef uint8_t payload[UDP_PAYLOAD_LEN]
    if c.kind == KIND_HTTP or c.kind == KIND_HTTPS:
        req = HTTP_KEEPALIVE_REQ
        n = cstrlen(req)
    elif c.kind == KIND_CONN:
        req = HTTP_CLOSE_REQ
        n = cstrlen(req)
    elif c.kind == KIND_DNS:
        memcpy(q, DNS_QUERY, DNS_QUERY_LEN)
        s.dns_id += 1
        q[0] = s.dns_id >> 8
        q[1] = s.dns_id & 0xff
        req = <const char *>q
        n = DNS_QUERY_LEN
    else:
        memset(payload, 0x61, UDP_PAYLOAD_LEN)
        req = <const char *>payload
        n = UDP_PAYLOAD_LEN
    s.got = 0
    s.need = -1
    if s.ssl != NULL:  # a small record on an idle connection: written at once
        if SSL_write(s.ssl, req, <int>n) != <int>n:
            return EPROTO
    elif send(s.fd, req, n, MSG_NOSIGNAL) != <ssize_t>n:
        return errno if errno else EAGAIN
    s.state = SLOT_WAITING
    return 0


cdef void set_events(client_t *c, int i, uint32_t events) noexcept nogil:
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = <uint64_t>i
    epoll_ctl(c.epfd, EPOLL_CTL_MOD, c.slots[i].fd, &ev)


cdef void tls_step(client_t *c, int i) noexcept nogil:
    """Advance the client handshake; once done, send the request."""
    cdef slot_t *s = &c.slots[i]
    cdef int rc = SSL_do_handshake(s.ssl), err
    if rc == 1:
        set_events(c, i, EPOLLIN)
        err = slot_send(c, i)
        if err != 0:
            slot_fail(c, i, err)
        return
    err = SSL_get_error(s.ssl, rc)
    if err == SSL_ERROR_WANT_READ:
        set_events(c, i, EPOLLIN)
    elif err == SSL_ERROR_WANT_WRITE:
        set_events(c, i, EPOLLOUT)
    else:
        slot_fail(c, i, EPROTO)


cdef void sent(client_t *c, int i, int err) noexcept nogil:
    """After slot_send: a failure, or for pkt the whole operation."""
    if err != 0:
        slot_fail(c, i, err)
    elif c.kind == KIND_PKT:
        slot_done(c, i, now_ns())


cdef void connected(client_t *c, int i) noexcept nogil:
    """The socket is connected: start TLS, or send the request."""
    cdef slot_t *s = &c.slots[i]
    cdef int err
    if c.kind == KIND_HTTPS:
        s.ssl = SSL_new(c.tls)
        if s.ssl == NULL or SSL_set_fd(s.ssl, s.fd) != 1:
            slot_fail(c, i, ENOMEM)
            return
        SSL_set_connect_state(s.ssl)
        s.state = SLOT_HANDSHAKE
        tls_step(c, i)
        return
    set_events(c, i, EPOLLIN)
    sent(c, i, slot_send(c, i))


cdef int slot_open(client_t *c, slot_t *s) noexcept nogil:
    """A new nonblocking socket connecting to the server, in the epoll set
    with the slot's index; 0 (connected) or EINPROGRESS, or an errno."""
    cdef int stype = SOCK_STREAM if over_tcp(c.kind) else SOCK_DGRAM
    cdef int one = 1
    cdef epoll_event ev
    s.fd = socket(AF_INET, stype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if s.fd < 0:
        return errno
    if stype == SOCK_STREAM:
        setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    cdef int rc = connect(s.fd, <sockaddr *>&c.addr, sizeof(c.addr))
    cdef int err = 0 if rc == 0 else errno
    if err != 0 and err != EINPROGRESS:
        close(s.fd)
        s.fd = -1
        return err
    ev.events = EPOLLOUT if err == EINPROGRESS else EPOLLIN
    ev.data.u64 = <uint64_t>(s - c.slots)
    if epoll_ctl(c.epfd, EPOLL_CTL_ADD, s.fd, &ev) != 0:
        err = errno
        close(s.fd)
        s.fd = -1
        return err
    return err


cdef void start_op(client_t *c, uint64_t t) noexcept nogil:
    c.nfree -= 1
    cdef int i = c.free_stack[c.nfree]
    cdef slot_t *s = &c.slots[i]
    cdef int err
    c.started += 1
    s.t0 = t
    if s.fd < 0:
        err = slot_open(c, s)
        if err == EINPROGRESS:
            s.state = SLOT_CONNECTING
        elif err != 0:
            slot_fail(c, i, err)
        else:
            connected(c, i)
        return
    sent(c, i, slot_send(c, i))


cdef int http_need(const char *b, int n) noexcept nogil:
    """Length of the response in b[:n] (headers + Content-Length), or -1
    while its headers are incomplete."""
    cdef int h = -1, i, j, clen = 0
    cdef const char *name = b"content-length:"
    for i in range(n - 3):
        if b[i] == 13 and b[i + 1] == 10 and b[i + 2] == 13 and b[i + 3] == 10:
            h = i
            break
    if h < 0:
        return -1
    i = 0
    while i < h:
        if b[i] == 10:  # a header line starts at i + 1
            j = 0
            while j < 15 and i + 1 + j < h and (b[i + 1 + j] | 0x20) == name[j]:
                j += 1
            if j == 15:
                i += 16
                while i < h and b[i] == 32:
                    i += 1
                while i < h and 48 <= b[i] <= 57:
                    clen = clen * 10 + (b[i] - 48)
                    i += 1
                break
        i += 1
    return h + 4 + clen


cdef ssize_t tls_recv(SSL *ssl, void *buf, int n) noexcept nogil:
    """SSL_read with recv()'s contract: bytes, 0 at the peer's close, or -1
    with errno (EAGAIN: nothing more for now)."""
    cdef int r = SSL_read(ssl, buf, n), err
    if r > 0:
        return r
    err = SSL_get_error(ssl, r)
    if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
        errno = EAGAIN
        return -1
    if err == SSL_ERROR_ZERO_RETURN:
        return 0
    errno = EPROTO
    return -1


cdef void on_event(client_t *c, int i, uint64_t t) noexcept nogil:
    cdef slot_t *s = &c.slots[i]
    cdef int err = 0
    cdef socklen_t elen = sizeof(err)
    cdef ssize_t r
    cdef char scratch[RESP_BUF]
    if s.state == SLOT_CONNECTING:
        getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &elen)
        if err != 0:
            slot_fail(c, i, err)
        else:
            connected(c, i)
        return
    if s.state == SLOT_HANDSHAKE:
        tls_step(c, i)
        return
    if s.state == SLOT_IDLE:
        # a kept-alive peer closed or reset: reopen on the next op (TLS:
        # also session tickets arriving after the handshake, read and dropped)
        r = tls_recv(s.ssl, scratch, RESP_BUF) if s.ssl != NULL else recv(s.fd, scratch, RESP_BUF, 0)
        if r == 0 or (r < 0 and errno != EAGAIN):
            slot_close(c, s)
        return
    while True:
        if c.kind == KIND_HTTP or c.kind == KIND_HTTPS:
            if s.got >= RESP_BUF:
                slot_fail(c, i, EMSGSIZE)
                return
            if s.ssl != NULL:
                r = tls_recv(s.ssl, s.buf + s.got, RESP_BUF - s.got)
            else:
                r = recv(s.fd, s.buf + s.got, RESP_BUF - s.got, 0)
        else:
            r = recv(s.fd, scratch, RESP_BUF, 0)
        if r < 0:
            if errno == EAGAIN:
                return
            slot_fail(c, i, errno)
            return
        if r == 0:
            if c.kind == KIND_CONN:
                slot_done(c, i, t)
            else:
                slot_fail(c, i, ECONNRESET)
            return
        if c.kind == KIND_HTTP or c.kind == KIND_HTTPS:
            s.got += r
            if s.need < 0:
                s.need = http_need(s.buf, s.got)
            if s.need >= 0 and s.got >= s.need:
                slot_done(c, i, t)
                return
        elif c.kind == KIND_UDP:
            slot_done(c, i, t)
            return
        elif c.kind == KIND_DNS:
            if r >= 12 and be16(<const uint8_t *>scratch) == s.dns_id:
                slot_done(c, i, t)
                return
        # KIND_CONN: read on until EOF


cdef void expire(client_t *c, uint64_t t) noexcept nogil:
    cdef int i
    for i in range(c.nslots):
        if c.slots[i].state != SLOT_IDLE and t - c.slots[i].t0 > <uint64_t>OP_TIMEOUT_MS * 1000000:
            c.timeouts += 1
            slot_close(c, &c.slots[i])
            slot_release(c, i)


cdef void client_loop(client_t *c) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef uint64_t start = now_ns(), t, next_expire = start + 100000000
    cdef uint64_t end = start + c.duration_ns
    cdef int64_t allowed, backlog
    cdef double due
    cdef int n, k, wait_ms
    while True:
        t = now_ns()
        if t >= end:
            break
        if c.rate > 0:
            # behind by more than a round of slots or 10 ms of the schedule,
            # whichever is more: forget the backlog (skipped, not started:
            # no socket ever carried those operations)
            backlog = max(c.nslots, <int64_t>(c.rate / 100))
            allowed = <int64_t>(c.rate * (t - start) / 1e9) - <int64_t>(c.started + c.skipped)
            if allowed > backlog:
                c.skipped += allowed - backlog
                allowed = backlog
        else:
            allowed = MAX_EVENTS  # then a look at the events, as when paced
        while c.nfree > 0 and allowed > 0:
            start_op(c, t)
            allowed -= 1
        wait_ms = 0 if c.rate == 0 and c.nfree > 0 else 10
        if c.rate > 0 and c.nfree > 0:
            due = (c.started + c.skipped + 1) / c.rate * 1e9 - (t - start)
            wait_ms = <int>ceil(due / 1e6)
            if wait_ms < 0:
                wait_ms = 0
            if wait_ms > 10:
                wait_ms = 10
        if <uint64_t>wait_ms * 1000000 > end - t:
            wait_ms = <int>((end - t) / 1000000) + 1
        n = epoll_wait(c.epfd, events, MAX_EVENTS, wait_ms)
        t = now_ns()
        for k in range(n):
            on_event(c, <int>events[k].data.u64, t)
        if t >= next_expire:
            expire(c, t)
            next_expire = t + 100000000
    c.elapsed_ns = now_ns() - start


cdef int parse_addr(str host, int port, sockaddr_in *out) except -1:
    memset(out, 0, sizeof(sockaddr_in))
    out.sin_family = AF_INET
    out.sin_port = htons(<uint16_t>port)
    if inet_pton(AF_INET, host.encode(), &out.sin_addr) != 1:
        raise ValueError(f"not an IPv4 address: {host!r}")
    return 0


def run_client(kind, str host, int port, int conns, double rate, double seconds):
    """Drive one kind of load at ``rate`` operations/s (0: unpaced) with
    ``conns`` slots for ``seconds``; returns a dict of counts, the latency
    sum and histogram. Blocks (GIL released) for ``seconds``.

    Counts: ``started`` = ``done`` + ``errors`` + ``timeouts`` +
    ``in_flight`` (unanswered when the time was up, at most one per slot);
    ``skipped`` operations of the schedule were never started because the
    client was behind it by more than the backlog it keeps."""
    cdef int k = KINDS[kind] if isinstance(kind, str) else int(kind)
    if conns < 1 or conns > 60000:
        raise ValueError(f"conns must be 1..60000, got {conns}")
    if seconds <= 0 or rate < 0:
        raise ValueError("seconds must be > 0 and rate >= 0")
    cdef client_t *c = <client_t *>calloc(1, sizeof(client_t))
    if c == NULL:
        raise MemoryError()
    cdef int i
    try:
        c.kind = k
        parse_addr(host, port, &c.addr)
        c.nslots = conns
        c.rate = rate
        c.duration_ns = <uint64_t>(seconds * 1e9)
        c.slots = <slot_t *>calloc(conns, sizeof(slot_t))
        c.free_stack = <int *>calloc(conns, sizeof(int))
        if c.slots == NULL or c.free_stack == NULL:
            raise MemoryError()
        for i in range(conns):
            c.slots[i].fd = -1
            c.slots[i].dns_id = <uint16_t>(i * 977)
            c.free_stack[i] = conns - 1 - i
        c.nfree = conns
        c.epfd = epoll_create1(EPOLL_CLOEXEC)
        if c.epfd < 0:
            raise kernel_error("bench client: epoll_create1", errno)
        if k == KIND_HTTPS:
            c.tls = SSL_CTX_new(TLS_client_method())
            if c.tls == NULL:
                raise MemoryError()
            SSL_CTX_set_verify(c.tls, SSL_VERIFY_NONE, NULL)
        with nogil:
            client_loop(c)
        hist = np.empty(NBUCKETS, dtype=np.uint64)
        for i in range(NBUCKETS):
            hist[i] = c.hist[i]
        return {"started": c.started, "skipped": c.skipped, "in_flight": c.nslots - c.nfree, "done": c.done,
                "errors": c.errors, "timeouts": c.timeouts,
                "elapsed_s": c.elapsed_ns / 1e9, "latency_sum_s": c.lat_sum_ns / 1e9, "hist": hist,
                "first_error": strerror(c.first_errno).decode() if c.first_errno else ""}
    finally:
        if c.slots != NULL:
            for i in range(c.nslots):
                slot_close(c, &c.slots[i])
        if c.epfd > 0:
            close(c.epfd)
        if c.tls != NULL:
            SSL_CTX_free(c.tls)
        free(c.slots)
        free(c.free_stack)
        free(c)

# ---------------------------------------------------------------- server

cdef const char *HTTP_OK = (b"HTTP/1.1 200 OK\r\nServer: dkebpf-bench\r\nContent-Type: text/plain\r\n"
                            b"Content-Length: 3\r\n\r\nok\n")
cdef const char *HTTP_OK_CLOSE = (b"HTTP/1.1 200 OK\r\nServer: dkebpf-bench\r\nContent-Type: text/plain\r\n"
                                  b"Content-Length: 3\r\nConnection: close\r\n\r\nok\n")
# the answer record appended to a question for bench.test: a pointer to the
# question's name (0xc00c), type A, class IN, TTL 60, 127.0.0.1
cdef const uint8_t *DNS_ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"


cdef struct srv_conn_t:
    SSL *ssl    # NULL: plain HTTP
    int len
    char buf[SRV_BUF]


cdef struct server_t:
    int epfd
    int stop_fd
    int tcp_fd
    int udp_fd
    int dns_fd
    int tls_fd
    int discard_fd
    SSL_CTX *tls
    srv_conn_t **conns   # by fd
    uint64_t http_requests
    uint64_t tls_handshakes
    uint64_t tcp_accepted
    uint64_t udp_echoed
    uint64_t discarded
    uint64_t dns_answered
    uint64_t bad


cdef bint has_close(const char *b, int n) noexcept nogil:
    """A `Connection: close` header among the request's header lines."""
    cdef const char *name = b"\nconnection: close"
    cdef int i, j
    for i in range(n - 17):
        j = 0
        while j < 18 and (b[i + j] | (0x20 if j > 0 else 0)) == name[j]:
            j += 1
        if j == 18:
            return True
    return False


cdef void srv_close(server_t *s, int fd) noexcept nogil:
    if s.conns[fd].ssl != NULL:
        SSL_free(s.conns[fd].ssl)
    free(s.conns[fd])
    s.conns[fd] = NULL
    close(fd)


cdef void srv_accept(server_t *s, int listen_fd) noexcept nogil:
    cdef int fd, one = 1
    cdef epoll_event ev
    while True:
        fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            return
        if fd >= SRV_MAXFD:
            close(fd)
            s.bad += 1
            continue
        s.conns[fd] = <srv_conn_t *>malloc(sizeof(srv_conn_t))
        if s.conns[fd] == NULL:
            close(fd)
            continue
        s.conns[fd].len = 0
        s.conns[fd].ssl = NULL
        if listen_fd == s.tls_fd:
            s.conns[fd].ssl = SSL_new(s.tls)
            if s.conns[fd].ssl == NULL or SSL_set_fd(s.conns[fd].ssl, fd) != 1:
                srv_close(s, fd)
                continue
            SSL_set_accept_state(s.conns[fd].ssl)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        ev.events = EPOLLIN
        ev.data.u64 = <uint64_t>fd
        epoll_ctl(s.epfd, EPOLL_CTL_ADD, fd, &ev)
        s.tcp_accepted += 1


cdef void srv_http(server_t *s, int fd) noexcept nogil:
    cdef srv_conn_t *c = s.conns[fd]
    cdef ssize_t r
    cdef int i, end
    cdef bint closing
    cdef const char *answer
    while True:
        if c.len >= SRV_BUF:  # a request head larger than the buffer: not ours
            s.bad += 1
            srv_close(s, fd)
            return
        if c.ssl != NULL:
            if not SSL_is_init_finished(c.ssl):
                r = SSL_do_handshake(c.ssl)
                if r != 1:
                    r = SSL_get_error(c.ssl, <int>r)
                    if r != SSL_ERROR_WANT_READ and r != SSL_ERROR_WANT_WRITE:
                        s.bad += 1
                        srv_close(s, fd)
                    return
                s.tls_handshakes += 1
            r = tls_recv(c.ssl, c.buf + c.len, SRV_BUF - c.len)
        else:
            r = recv(fd, c.buf + c.len, SRV_BUF - c.len, 0)
        if r < 0 and errno == EAGAIN:
            return
        if r <= 0:
            srv_close(s, fd)
            return
        c.len += r
        while True:  # every complete request head (GET: no body) in the buffer
            end = -1
            for i in range(c.len - 3):
                if c.buf[i] == 13 and c.buf[i + 1] == 10 and c.buf[i + 2] == 13 and c.buf[i + 3] == 10:
                    end = i + 4
                    break
            if end < 0:
                break
            closing = has_close(c.buf, end)
            answer = HTTP_OK_CLOSE if closing else HTTP_OK
            s.http_requests += 1  # before the answer: see srv_udp
            if c.ssl != NULL:
                SSL_write(c.ssl, answer, cstrlen(answer))
            else:
                send(fd, answer, cstrlen(answer), MSG_NOSIGNAL)
            if closing:
                srv_close(s, fd)
                return
            memmove(c.buf, c.buf + end, c.len - end)
            c.len -= end


ctypedef int (*udp_answer_fn)(const uint8_t *q, int n, uint8_t *out) noexcept nogil


cdef int echo_answer(const uint8_t *q, int n, uint8_t *out) noexcept nogil:
    memcpy(out, q, n)
    return n


cdef void srv_udp(int fd, udp_answer_fn answer, uint64_t *answered, uint64_t *bad) noexcept nogil:
    """Answer every datagram waiting on fd (non-blocking) with answer(); a
    datagram it refuses (-1) is counted in bad."""
    cdef uint8_t q[2048]
    cdef uint8_t a[2048 + DNS_ANSWER_LEN]
    cdef sockaddr_in peer
    cdef socklen_t plen
    cdef ssize_t r
    cdef int alen
    while True:
        plen = sizeof(peer)
        r = recvfrom(fd, q, sizeof(q), 0, <sockaddr *>&peer, &plen)
        if r < 0:
            return
        alen = answer(q, <int>r, a)
        if alen < 0:
            bad[0] += 1
            continue
        # counted before the answer leaves: a client that reads the
        # counters after its answer must see it
        answered[0] += 1
        sendto(fd, a, alen, 0, <sockaddr *>&peer, plen)


cdef void srv_discard(server_t *s) noexcept nogil:
    cdef char buf[2048]
    while recv(s.discard_fd, buf, sizeof(buf), 0) >= 0:
        s.discarded += 1


cdef int dns_answer(const uint8_t *q, int n, uint8_t *out) noexcept nogil:
    """The answer to query q[:n] in out (at least n + 16 bytes), or -1 when
    it is not a one-question query (RFC 1035 4.1)."""
    cdef int pos = 12
    if n < 17 or (q[2] & 0x80) or q[4] != 0 or q[5] != 1:
        return -1
    while pos < n and q[pos] != 0:  # the question's labels
        if q[pos] & 0xc0:
            return -1
        pos += q[pos] + 1
    pos += 5  # the root label, QTYPE, QCLASS
    if pos > n:
        return -1
    memcpy(out, q, pos)
    out[2] = 0x80 | (q[2] & 0x79)   # QR, the opcode and RD asked
    out[3] = 0x80                   # RA, NOERROR
    out[6] = 0
    out[8] = 0
    out[9] = 0
    out[10] = 0
    out[11] = 0                     # no authority, no additional (EDNS dropped)
    if q[pos - 4] == 0 and q[pos - 3] == 1 and q[pos - 2] == 0 and q[pos - 1] == 1:
        out[7] = 1
        memcpy(out + pos, DNS_ANSWER, DNS_ANSWER_LEN)
        return pos + DNS_ANSWER_LEN
    out[7] = 0
    return pos


cdef void server_loop(server_t *s) noexcept nogil:
    cdef epoll_event events[MAX_EVENTS]
    cdef int n, k, fd
    cdef uint64_t v
    while True:
        n = epoll_wait(s.epfd, events, MAX_EVENTS, -1)
        for k in range(n):
            fd = <int>events[k].data.u64
            if fd == s.stop_fd:
                read(s.stop_fd, &v, 8)
                return
            elif fd == s.tcp_fd or fd == s.tls_fd:
                srv_accept(s, fd)
            elif fd == s.udp_fd:
                srv_udp(fd, echo_answer, &s.udp_echoed, &s.bad)
            elif fd == s.discard_fd:
                srv_discard(s)
            elif fd == s.dns_fd:
                srv_udp(fd, dns_answer, &s.dns_answered, &s.bad)
            elif s.conns[fd] != NULL:
                srv_http(s, fd)


cdef SSL_CTX *tls_server_context() except NULL:
    """A server context with a fresh P-256 key and a self-signed certificate
    for CN=dkebpf-bench, valid for a day."""
    cdef EVP_PKEY *key = EVP_EC_gen(b"P-256")
    cdef X509 *cert = X509_new()
    cdef SSL_CTX *ctx = SSL_CTX_new(TLS_server_method())
    cdef X509_NAME *name
    cdef bint ok = key != NULL and cert != NULL and ctx != NULL
    if ok:
        X509_set_version(cert, 2)
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 1)
        X509_gmtime_adj(X509_getm_notBefore(cert), -3600)
        X509_gmtime_adj(X509_getm_notAfter(cert), 86400)
        name = X509_get_subject_name(cert)
        ok = (X509_set_pubkey(cert, key) == 1
              and X509_NAME_add_entry_by_txt(name, b"CN", MBSTRING_ASC, <const unsigned char *>b"dkebpf-bench",
                                             -1, -1, 0) == 1
              and X509_set_issuer_name(cert, name) == 1 and X509_sign(cert, key, EVP_sha256()) > 0
              and SSL_CTX_use_certificate(ctx, cert) == 1 and SSL_CTX_use_PrivateKey(ctx, key) == 1)
    EVP_PKEY_free(key)  # the context holds its own references
    X509_free(cert)
    if not ok:
        if ctx != NULL:
            SSL_CTX_free(ctx)
        raise DkebpfError("bench server: OpenSSL could not make the HTTPS key and certificate")
    return ctx


cdef class Server:
    """HTTP (keep-alive and Connection: close), HTTPS, UDP echo, UDP discard and DNS on
    ``host`` (DNS on ``dns_host`` when given), on the given ports or free
    ones (``ports``). ``serve()`` runs
    the loop in the calling thread with the GIL released until ``stop()``
    is called from another thread; ``close()`` frees everything."""

    cdef server_t *s
    cdef readonly dict ports

    def __cinit__(self, str host="127.0.0.1", int http_port=0, int udp_port=0, int dns_port=0,
                  str dns_host=None, int https_port=0, int pkt_port=0):
        self.s = <server_t *>calloc(1, sizeof(server_t))
        if self.s == NULL:
            raise MemoryError()
        self.s.epfd = self.s.stop_fd = self.s.tcp_fd = self.s.udp_fd = self.s.dns_fd = self.s.tls_fd = -1
        self.s.discard_fd = -1
        self.s.conns = <srv_conn_t **>calloc(SRV_MAXFD, sizeof(srv_conn_t *))
        if self.s.conns == NULL:
            raise MemoryError()
        cdef sockaddr_in addr, dns_addr
        parse_addr(host, 0, &addr)
        parse_addr(dns_host or host, 0, &dns_addr)
        self.s.epfd = self._check(epoll_create1(EPOLL_CLOEXEC), "epoll_create1")
        self.s.stop_fd = self._check(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd")
        self._watch(self.s.stop_fd)
        self.s.tcp_fd = self._bind(&addr, SOCK_STREAM, http_port, "HTTP")
        self._check(listen(self.s.tcp_fd, 4096), "listen")
        self.s.udp_fd = self._bind(&addr, SOCK_DGRAM, udp_port, "UDP echo")
        self.s.dns_fd = self._bind(&dns_addr, SOCK_DGRAM, dns_port, "DNS")
        self.s.tls = tls_server_context()
        self.s.tls_fd = self._bind(&addr, SOCK_STREAM, https_port, "HTTPS")
        self._check(listen(self.s.tls_fd, 4096), "listen")
        self.s.discard_fd = self._bind(&addr, SOCK_DGRAM, pkt_port, "UDP discard")
        self.ports = {"http": self._port(self.s.tcp_fd), "udp": self._port(self.s.udp_fd),
                      "dns": self._port(self.s.dns_fd), "https": self._port(self.s.tls_fd),
                      "pkt": self._port(self.s.discard_fd)}

    cdef int _check(self, int rc, str what) except -1:
        if rc < 0:
            raise kernel_error(f"bench server: {what}", errno)
        return rc

    cdef void _watch(self, int fd):
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = <uint64_t>fd
        epoll_ctl(self.s.epfd, EPOLL_CTL_ADD, fd, &ev)

    cdef int _bind(self, sockaddr_in *addr, int stype, int port, str what) except -1:
        cdef int one = 1, bufsz = 4 << 20
        cdef int fd = self._check(socket(AF_INET, stype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), what + " socket")
        if stype == SOCK_STREAM:  # a fixed port again while connections of a run before are in TIME_WAIT
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))
        else:
            # no SO_REUSEADDR on UDP: there it lets sockets share a port
            # (even one the kernel picks for port 0), and another
            # process's socket on ours would take our datagrams
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz))  # bursts of many flows at once
        addr.sin_port = htons(<uint16_t>port)
        if bind(fd, <sockaddr *>addr, sizeof(sockaddr_in)) != 0:
            err = errno
            close(fd)
            raise kernel_error(f"bench server: bind the {what} port {port}", err)
        self._watch(fd)
        return fd

    cdef int _port(self, int fd):
        cdef sockaddr_in a
        cdef socklen_t n = sizeof(a)
        getsockname(fd, <sockaddr *>&a, &n)
        return ntohs(a.sin_port)

    def serve(self):
        if self.s == NULL or self.s.epfd < 0:
            raise ValueError("bench server is closed")
        with nogil:
            server_loop(self.s)

    def stop(self):
        cdef uint64_t one = 1
        if self.s != NULL and self.s.stop_fd >= 0:
            write(self.s.stop_fd, &one, 8)

    def counters(self):
        return {"http_requests": self.s.http_requests, "tcp_accepted": self.s.tcp_accepted,
                "tls_handshakes": self.s.tls_handshakes,
                "udp_echoed": self.s.udp_echoed, "udp_discarded": self.s.discarded,
                "dns_answered": self.s.dns_answered,
                "bad_requests": self.s.bad}

    def close(self):
        """Only after serve() has returned."""
        cdef int fd
        if self.s == NULL:
            return
        for fd in range(SRV_MAXFD):
            if self.s.conns[fd] != NULL:
                srv_close(self.s, fd)
        for fd in (self.s.tcp_fd, self.s.udp_fd, self.s.dns_fd, self.s.tls_fd, self.s.discard_fd,
                   self.s.stop_fd, self.s.epfd):
            if fd >= 0:
                close(fd)
        self.s.tcp_fd = self.s.udp_fd = self.s.dns_fd = self.s.tls_fd = self.s.discard_fd = -1
        self.s.stop_fd = self.s.epfd = -1
        if self.s.tls != NULL:
            SSL_CTX_free(self.s.tls)
            self.s.tls = NULL

    def __dealloc__(self):
        if self.s != NULL:
            self.close()
            free(self.s.conns)
            free(self.s)
            self.s = NULL
