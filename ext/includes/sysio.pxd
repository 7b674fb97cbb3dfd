# The one declaration of each system header the extensions share beyond
# Cython's own libc/posix .pxd files: sockets (AF_PACKET capture in
# packets.pyx, netlink in nfct.pyx, TCP/UDP in loadgen.pyx), byte order
# and address text, poll (rings and capture), epoll and eventfd (loadgen.pyx).
from libc.stdint cimport uint16_t, uint32_t, uint64_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    enum:
        AF_INET
        AF_INET6
        AF_PACKET
        SOCK_RAW
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_CLOEXEC
        SOCK_NONBLOCK
        SOL_SOCKET
        SO_ATTACH_FILTER
        SO_REUSEADDR
        SO_ERROR
        SO_RCVBUF
        SOL_PACKET
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_NOSIGNAL
    int socket(int domain, int type, int protocol)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    int listen(int fd, int backlog)
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t sendto(int fd, const void *buf, size_t n, int flags, const sockaddr *addr, socklen_t len)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *addrlen)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<arpa/inet.h>" nogil:
    enum:
        INET6_ADDRSTRLEN
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)
    int inet_pton(int af, const char *src, void *dst)
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)

cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)
