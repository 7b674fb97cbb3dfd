# The one declaration of each system header the extensions share beyond
# Cython's own libc/posix .pxd files: sockets (AF_PACKET capture in
# packets.pyx, netlink in nfct.pyx), byte order, poll (rings and capture).
from libc.stdint cimport uint16_t, uint32_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    enum:
        AF_INET
        AF_INET6
        AF_PACKET
        SOCK_RAW
        SOCK_CLOEXEC
        SOCK_NONBLOCK
        SOL_SOCKET
        SO_ATTACH_FILTER
        SOL_PACKET
        MSG_DONTWAIT
        MSG_TRUNC
    int socket(int domain, int type, int protocol)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int bind(int fd, const sockaddr *addr, socklen_t len)
    ssize_t recvfrom(int fd, void *buf, size_t n, int flags, sockaddr *addr, socklen_t *addrlen)

cdef extern from "<arpa/inet.h>" nogil:
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    enum:
        POLLIN
    int poll(pollfd *fds, unsigned long nfds, int timeout)
