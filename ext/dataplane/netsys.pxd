# cython: language_level=3
#
# netsys: the Linux socket, poll and time declarations the data plane and the load tools use
# (recvmmsg/sendmmsg batches, ancillary data, poll). One place, so both loops speak the same
# structs. Declarations only: nothing here runs.

from libc.stdint cimport uint16_t, uint32_t, uint64_t
from posix.time cimport timespec
from posix.uio cimport iovec

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    struct sockaddr_storage:
        unsigned short ss_family
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int vlen, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    cmsghdr *CMSG_FIRSTHDR(msghdr *m)
    cmsghdr *CMSG_NXTHDR(msghdr *m, cmsghdr *c)
    unsigned char *CMSG_DATA(cmsghdr *c)
    size_t CMSG_SPACE(size_t n)
    int MSG_DONTWAIT
    int MSG_WAITFORONE
    int MSG_NOSIGNAL
    int SOL_SOCKET
    int SO_RXQ_OVFL
    int SO_ERROR
    int SO_TYPE
    int SOCK_STREAM
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int AF_INET
    int AF_INET6
    struct sockaddr:
        unsigned short sa_family
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CTL_ADD
    int EPOLL_CTL_DEL
    int EPOLL_CTL_MOD
    uint32_t EPOLLIN
    uint32_t EPOLLOUT
    uint32_t EPOLLRDHUP
    uint32_t EPOLLERR
    uint32_t EPOLLHUP
    int EPOLL_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    int close(int fd)

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT
