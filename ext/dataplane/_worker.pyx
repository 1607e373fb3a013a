# cython: language_level=3
"""The data-plane loop of one worker process: recvmmsg -> parse -> rules -> rewrite -> egress.

Ownership and invariants:
- A Worker owns its receive arena (`batch` slots of 64 KiB with their mmsghdr/iovec/sockaddr
  arrays) and a scratch arena for rewritten packets, allocated once in __cinit__. `bind()` builds
  the per-plan state aside (destinations, targets with their send queues) and swaps it in one
  step; on any error it frees what it built and the old state keeps running (transactional).
- Egress per target: a UDP target has a connected socket (owned by the Python caller) and a send
  queue of mmsghdr/iovec; a ring target copies the packet into the shared-memory ring its egress
  process reads (ext/egress/hepring.h), published once per batch. A full ring is counted as
  queue_full for the destination and never waited on.
- An unchanged packet is queued as an iovec pointing into the receive arena; a rewritten or
  converted one is built in the scratch arena. Queues are flushed (sendmmsg per target, ring
  publish) before the receive arena is reused and whenever the scratch arena or a queue fills, so
  no iovec outlives the bytes it points to.
- `run()` holds the GIL only between batches; per packet it touches C structs alone (no Python
  object, no allocation). It returns to Python every `slice_ms` so the process can see signals,
  reloads and write its heartbeat.
- Counters are the worker's own row of the shared block (layout and reason codes:
  hepfast/constants.py, generated into ext/generated/constants.pxd), one writer. "forwarded"
  counts what the kernel accepted (UDP) or what entered a ring (the egress process counts what
  the store accepted in its own row); every other copy is counted as a drop of its destination,
  so copies = forwarded + dropped per destination.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memmove
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS, EMSGSIZE
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from hepwire cimport *
from sipscan cimport sip_info, sip_scan_want
from matcher cimport (
    rule_tables, rules_bind, rule_match, pkt_is_sip, rule_sample_keep, sample_key, cidr_match,
    RF_DROP, RF_CONTINUE, RF_HAS_REWRITE, RF_HAS_SAMPLE,
)
from matcher cimport dest_key     # issue 14 A: per-destination call keys
# guard: dedup, rate limits, compressed payloads (issue 14; hepfast.dataplane.guard)
from matcher cimport call_key_hash
from guard cimport (
    hep_guard, hep_guard_attach, hep_dedup, hep_gcra, hep_guard_tat, hep_call, dedup_identity,
    hep_dedup_prefetch, HEP_G_HIT, HEP_G_FULL,
)
from inflate cimport z_stream, hz_init, hz_end, hz_inflate, hz_deflate, HZ_TOO_BIG

cimport cython

from posix.uio cimport iovec
from netsys cimport (
    mmsghdr, sockaddr, sockaddr_storage, sockaddr_in, sockaddr_in6, pollfd, socklen_t,
    epoll_event,
    recvmmsg, sendmmsg, getsockopt, poll, accept4, epoll_create1, epoll_ctl, epoll_wait, read,
    close, MSG_DONTWAIT, MSG_WAITFORONE, SOL_SOCKET, SO_ERROR, SO_TYPE, SOCK_STREAM,
    SOCK_NONBLOCK, SOCK_CLOEXEC, AF_INET, AF_INET6, POLLIN, EPOLLIN, EPOLLOUT, EPOLLRDHUP,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CLOEXEC,
)
from tls cimport *          # OpenSSL: TLS listeners only (nothing here runs for udp or tcp)
from constants cimport *    # reason codes, modes, counter layout, capacities (generated)
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

cdef extern from "hepring.h" nogil:
    ctypedef struct hep_ring:
        uint64_t size
    int hep_ring_attach(hep_ring *r, void *base, size_t maplen)
    int hep_ring_push(hep_ring *r, const uint8_t *data, uint32_t len, uint32_t meta)
    void hep_ring_publish(hep_ring *r)
    uint64_t hep_ring_used(const hep_ring *r)
    int HEP_RING_FULL
    int HEP_RING_TOO_BIG

cdef enum:
    DOWN_NS = 1000000000        # a target that refused is skipped this long, then re-probed
    MAX_UDP4 = 65507            # largest UDP payload over IPv4
    MAX_UDP6 = 65527            # over IPv6 (without jumbograms)
    AUTH_SET = 1
    AUTH_STRIP = 2


cdef struct target_t:
    int kind                    # E_UDP or E_RING
    int fd                      # E_UDP: connected socket (owned by the caller)
    int slot                    # target counter slot
    int dslot                   # its destination's counter slot
    Py_ssize_t max_len          # largest datagram this target can carry
    uint64_t seed
    int64_t down_until
    int check_err               # read SO_ERROR after each send (failover, hash over several)
    unsigned int n
    unsigned int cap
    mmsghdr *msgs
    iovec *iov
    hep_ring ring
    int ring_dirty


cdef struct dest_t:
    int egress                  # E_UDP or E_RING
    int mode
    int version
    int tstart
    int tcount
    int slot
    int auth_mode               # 0, AUTH_SET, AUTH_STRIP
    const uint8_t *auth_blob    # AUTH_SET: the encoded auth-key chunk
    Py_ssize_t auth_len
    uint32_t rr
    int payload                 # P_KEEP, P_INFLATE, P_COMPRESS
    # mode = "hash": the call key (constants.CALL_KEY; CK_CALL_ID without a split is the
    # packet's sample_key, computed once per packet and shared)
    int ck_kind
    uint8_t ck_sep
    int ck_field


cdef struct listener_t:
    int fd
    int stream                  # a TCP listening socket: accept, read, frame
    Py_ssize_t max_message
    int max_reads
    int max_conns               # this worker's share of max_connections
    int64_t message_timeout_ns
    int64_t idle_timeout_ns
    const uint8_t *auth
    Py_ssize_t auth_len
    int has_auth
    const uint64_t *allow      # [n][4]: net_hi, net_lo, mask_hi, mask_lo over v4-mapped v6
    const uint8_t *allow_fam   # [n]: 4 or 6, a row only matches senders of its family
    Py_ssize_t nallow
    SSL_CTX *tls               # a tls listener's context (owned by the bound plan), else NULL
    uint32_t dedup_ms           # dedup before the rules (0: off)


cdef struct bound_t:
    # Everything a plan binds; swapped as one value.
    rule_tables rt
    Py_ssize_t nrules
    const int32_t *rule_slot
    int default_dest
    dest_t *dests
    int ndests
    target_t *targets
    int ntargets
    listener_t listeners[MAX_LISTENERS]
    uint32_t max_chunks
    # guards
    const uint32_t *dedup_ms    # [nrules] dedup window (0: off)
    const uint64_t *rate        # [nrules][4]: packet T, tau, call T, tau (ns; 0: off)
    int needs_inflate           # inflate compressed payloads before routing
    uint64_t dedup_expire_ms
    uint64_t call_idle_ms


cdef struct conn_t:
    # One accepted stream connection. buf holds bytes not yet framed; it is freed whenever it
    # empties, so an idle connection costs this struct only.
    int fd                      # -1: free slot
    int li                      # its listener
    uint8_t *buf
    Py_ssize_t cap
    Py_ssize_t len
    int64_t msg_start           # when the first byte of the pending message came (0: none)
    int reads                   # reads since then
    int64_t last                # last data
    sockaddr_storage peer
    SSL *ssl                    # a TLS connection's session, else NULL (plain TCP)
    int hs                      # TLS: 1 while the handshake is in progress (msg_start: its start)
    uint32_t events             # TLS: the epoll events asked for now (OUT: OpenSSL must write)


cdef enum:
    MAX_CONNS = 65536           # connection slots per worker (struct only; buffers on demand)
    CONN_BUF0 = 8192            # first buffer of a connection; grows to the message's size
    LISTENER_TAG = 1 << 20      # epoll data: LISTENER_TAG + listener index, else a conn slot
    EPOLL_EVENTS = 256
    READS_PER_EVENT = 4         # fairness: a busy connection yields after this many reads
    ZOUT_BYTES = 65536 + 1024   # deflate output: deflateBound(65535) and a chunk header
    # Receive slots are SLOT_BYTES long but SLOT_STRIDE apart: 64 KiB apart, every packet's
    # first bytes would fall into the same L1 and L2 cache sets (a 64-packet batch evicting
    # itself before the parse reads it); 5 lines more per slot spreads them over the sets.
    SLOT_STRIDE = SLOT_BYTES + 5 * 64


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void addr128(const uint8_t *a, int v6, uint64_t *hi, uint64_t *lo) noexcept nogil:
    cdef int i
    cdef uint64_t h = 0, low = 0
    if v6:
        for i in range(8):
            h = (h << 8) | a[i]
            low = (low << 8) | a[8 + i]
    else:
        h = 0
        low = (<uint64_t>0xffff << 32) | (<uint64_t>a[0] << 24) | (<uint64_t>a[1] << 16) \
            | (<uint64_t>a[2] << 8) | a[3]
    hi[0] = h
    lo[0] = low


cdef inline bint ct_equal(const uint8_t *a, const uint8_t *b, Py_ssize_t n) noexcept nogil:
    """Constant-time comparison of two n-byte keys (no early exit on the first difference)."""
    cdef Py_ssize_t i
    cdef uint8_t d = 0
    for i in range(n):
        d |= a[i] ^ b[i]
    return d == 0


cdef void _free_bound(bound_t *b) noexcept nogil:
    cdef int i
    for i in range(MAX_LISTENERS):
        if b.listeners[i].tls != NULL:
            # Connections accepted with it hold their own reference (SSL_new) and keep it
            # until they close: a reload changes the certificate for new connections only.
            SSL_CTX_free(b.listeners[i].tls)
            b.listeners[i].tls = NULL
    if b.targets != NULL:
        for i in range(b.ntargets):
            free(b.targets[i].msgs)
            free(b.targets[i].iov)
        free(b.targets)
    free(b.dests)
    b.targets = NULL
    b.dests = NULL
    b.ntargets = 0
    b.ndests = 0


cdef const void *_ptr(object buf, bint writable) except NULL:
    """Address of a contiguous buffer the caller keeps alive."""
    cdef const uint8_t[::1] ro
    cdef uint8_t[::1] rw
    if writable:
        rw = buf
        if rw.shape[0] == 0:
            raise ValueError("empty buffer")
        return &rw[0]
    ro = buf
    if ro.shape[0] == 0:
        raise ValueError("empty buffer")
    return &ro[0]


# ---------------------------------------------------------------------- TLS listeners (contexts)

cdef int _no_passphrase(char *buf, int size, int rwflag, void *u) noexcept nogil:
    return 0                    # an encrypted key fails to load (never a prompt on a terminal)


cdef str _ssl_errors():
    """The thread's OpenSSL error queue as text (and emptied)."""
    cdef char buf[256]
    cdef unsigned long e
    out = []
    while True:
        e = ERR_get_error()
        if e == 0:
            break
        ERR_error_string_n(e, buf, sizeof(buf))
        out.append(buf.decode("utf-8", "replace"))
    return "; ".join(out) or "unknown OpenSSL error"


cdef SSL_CTX *_tls_context(object lt) except NULL:
    """The server context of a tls listener (hepfast.plan.format.PlanListener fields): its
    certificate chain and key, the CA client certificates are verified against, the verify mode
    and the oldest version. Raises ValueError naming the listener and the file."""
    import os
    cdef SSL_CTX *ctx
    cdef int mode
    cdef void *names
    cdef bytes cert = os.fsencode(lt.tls_cert), key = os.fsencode(lt.tls_key)
    cdef bytes ca = os.fsencode(lt.tls_ca)
    where = f"listener {lt.name}"
    ERR_clear_error()
    ctx = SSL_CTX_new(TLS_server_method())
    if ctx == NULL:
        raise MemoryError(f"{where}: SSL_CTX_new: {_ssl_errors()}")
    try:
        if SSL_CTX_set_min_proto_version(
                ctx, TLS1_3_VERSION if lt.tls_min_version == "1.3" else TLS1_2_VERSION) != 1:
            raise ValueError(f"{where}: tls_min_version {lt.tls_min_version}: {_ssl_errors()}")
        # No renegotiation (a peer cannot make the worker redo handshakes), no compression, no
        # session resumption (workers share no cache; agents keep their connection), buffers
        # released while a connection is idle (10,000 idle agents), an EOF without close_notify
        # is an end like any other (HEP is framed by its own length).
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION
                            | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF)
        SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS)
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
        SSL_CTX_set_num_tickets(ctx, 0)
        SSL_CTX_set_default_passwd_cb(ctx, _no_passphrase)
        if SSL_CTX_use_certificate_chain_file(ctx, cert) != 1:
            raise ValueError(f"{where}: tls_cert {lt.tls_cert}: {_ssl_errors()}")
        if SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1:
            raise ValueError(f"{where}: tls_key {lt.tls_key}: {_ssl_errors()}")
        if SSL_CTX_check_private_key(ctx) != 1:
            raise ValueError(f"{where}: tls_key {lt.tls_key} is not the key of tls_cert: "
                             f"{_ssl_errors()}")
        if ca:
            if SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1:
                raise ValueError(f"{where}: tls_ca {lt.tls_ca}: {_ssl_errors()}")
            names = SSL_load_client_CA_file(ca)      # the CAs named to clients
            if names != NULL:
                SSL_CTX_set_client_CA_list(ctx, names)
        if lt.tls_verify == 2:
            mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        elif lt.tls_verify == 1:
            mode = SSL_VERIFY_PEER
        else:
            mode = SSL_VERIFY_NONE
        if mode != SSL_VERIFY_NONE and not ca:
            raise ValueError(f"{where}: client verification needs tls_ca")
        SSL_CTX_set_verify(ctx, mode, NULL)
    except BaseException:
        SSL_CTX_free(ctx)
        ERR_clear_error()
        raise
    ERR_clear_error()
    return ctx


cdef class Worker:
    """One data-plane loop over a set of listener sockets (fds owned by the caller)."""

    cdef int batch
    cdef int nlisteners
    cdef int listener_fds[MAX_LISTENERS]
    cdef pollfd pfds[MAX_LISTENERS]
    cdef uint8_t *arena
    cdef mmsghdr *rmsgs
    cdef iovec *riov
    cdef sockaddr_storage *raddr
    cdef uint8_t *scratch
    cdef Py_ssize_t scratch_cap
    cdef Py_ssize_t scratch_pos
    cdef int rdirty             # receive headers the last recvmmsg filled
    cdef int64_t now            # clock of the batch being processed
    cdef uint64_t *ctr
    cdef object _row            # keeps the counter row alive
    cdef object _refs           # keeps the bound plan's buffers alive
    cdef bound_t b
    cdef public int bound
    cdef public int blocking    # single listener socket in blocking mode with SO_RCVTIMEO
    # stream listeners (TCP): one epoll set over every listener and connection
    cdef int has_stream
    cdef int is_stream[MAX_LISTENERS]
    cdef int epfd
    cdef conn_t *conns
    cdef int conn_hi            # slots [0, conn_hi) may be in use
    cdef int64_t next_sweep
    # guards: the run's shared tables (set_guard), zlib streams and their buffers
    cdef hep_guard guard
    cdef int has_guard
    cdef object _guard_buf
    cdef z_stream zinf
    cdef z_stream zdef
    cdef int z_ok
    cdef uint8_t *zbuf          # [6 + INFLATE_MAX]: an inflated payload as a 0x000f chunk
    cdef uint8_t *zpkt          # [SLOT_BYTES]: the packet with that chunk (what rules read)
    cdef uint8_t *zout          # [ZOUT_BYTES]: a compressed payload as a 0x0010 chunk
    cdef hep_pkt *pkts          # [batch] listener dedup: the batch parsed ahead,
    cdef int *prc               # [batch]   the parse results,
    cdef uint64_t *dh           # [batch]   the identities,
    cdef int *dhv               # [batch]   which identities are known

    def __cinit__(self, listener_fds, int batch):
        cdef int i
        if not 1 <= len(listener_fds) <= MAX_LISTENERS:
            raise ValueError(f"a worker serves 1..{MAX_LISTENERS} listeners")
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}")
        memset(&self.b, 0, sizeof(bound_t))
        self.batch = batch
        self.nlisteners = len(listener_fds)
        for i, fd in enumerate(listener_fds):
            self.listener_fds[i] = fd
            self.pfds[i].fd = fd
            self.pfds[i].events = POLLIN
        self.arena = <uint8_t *>malloc(<size_t>batch * SLOT_STRIDE)
        self.rmsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.riov = <iovec *>calloc(batch, sizeof(iovec))
        self.raddr = <sockaddr_storage *>calloc(batch, sizeof(sockaddr_storage))
        # Room for a full batch of maximal rewrites plus conversions; flushed when it runs low.
        self.scratch_cap = 6 * SLOT_BYTES + <Py_ssize_t>batch * 2048
        self.scratch = <uint8_t *>malloc(self.scratch_cap)
        if not (self.arena and self.rmsgs and self.riov and self.raddr and self.scratch):
            raise MemoryError()
        # Receive headers point at fixed slots for the worker's life; run() only resets the
        # fields the kernel changed.
        for i in range(batch):
            self.riov[i].iov_base = self.arena + <Py_ssize_t>i * SLOT_STRIDE
            self.riov[i].iov_len = SLOT_BYTES
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
            self.rmsgs[i].msg_hdr.msg_name = &self.raddr[i]
            self.rmsgs[i].msg_hdr.msg_control = NULL
            self.rmsgs[i].msg_hdr.msg_controllen = 0
        self.rdirty = batch
        self.bound = 0
        self.epfd = -1
        self._setup_streams()
        self.zbuf = <uint8_t *>malloc(6 + INFLATE_MAX)
        self.zpkt = <uint8_t *>malloc(SLOT_BYTES)
        self.zout = <uint8_t *>malloc(ZOUT_BYTES)
        if not (self.zbuf and self.zpkt and self.zout) or hz_init(&self.zinf, &self.zdef) != 0:
            raise MemoryError("cannot set up zlib")
        self.z_ok = 1
        self.pkts = <hep_pkt *>calloc(batch, sizeof(hep_pkt))
        self.prc = <int *>calloc(batch, sizeof(int))
        self.dh = <uint64_t *>calloc(batch, sizeof(uint64_t))
        self.dhv = <int *>calloc(batch, sizeof(int))
        if not (self.pkts and self.prc and self.dh and self.dhv):
            raise MemoryError()

    cdef int _setup_streams(self) except -1:
        cdef int i, typ = 0
        cdef socklen_t ln
        cdef epoll_event ev
        for i in range(self.nlisteners):
            ln = sizeof(int)
            if getsockopt(self.listener_fds[i], SOL_SOCKET, SO_TYPE, &typ, &ln) == 0:
                self.is_stream[i] = typ == SOCK_STREAM
            self.has_stream |= self.is_stream[i]
        if not self.has_stream:
            return 0
        self.conns = <conn_t *>calloc(MAX_CONNS, sizeof(conn_t))
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.conns == NULL or self.epfd < 0:
            raise MemoryError("cannot set up the stream listeners (epoll, connection table)")
        for i in range(MAX_CONNS):
            self.conns[i].fd = -1
        for i in range(self.nlisteners):
            ev.events = EPOLLIN
            ev.data.u64 = LISTENER_TAG + i
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.listener_fds[i], &ev) != 0:
                raise OSError("epoll_ctl failed on a listener")
        return 0

    def __dealloc__(self):
        cdef int i
        if self.conns != NULL:
            for i in range(self.conn_hi):
                if self.conns[i].ssl != NULL:
                    SSL_free(self.conns[i].ssl)
                if self.conns[i].fd >= 0:
                    close(self.conns[i].fd)
                free(self.conns[i].buf)
            free(self.conns)
        if self.epfd >= 0:
            close(self.epfd)
        _free_bound(&self.b)
        if self.z_ok:
            hz_end(&self.zinf, &self.zdef)
        free(self.zbuf)
        free(self.zpkt)
        free(self.zout)
        free(self.pkts)
        free(self.prc)
        free(self.dh)
        free(self.dhv)
        free(self.arena)
        free(self.rmsgs)
        free(self.riov)
        free(self.raddr)
        free(self.scratch)

    def set_counters(self, row):
        """The worker's row of the shared counter block (uint64, STRIDE words)."""
        cdef uint64_t[::1] mv = row
        if mv.shape[0] != STRIDE:
            raise ValueError(f"counter row must have {STRIDE} words")
        self._row = row
        self.ctr = &mv[0]

    def set_guard(self, buf):
        """The run's guard tables (a writable shared mapping of the run directory's `guard`
        file: hepfast.dataplane.guard), for the worker's life; plans with dedup or rate limits
        need it."""
        cdef uint8_t[::1] mv = buf
        if mv.shape[0] == 0 or hep_guard_attach(&self.guard, &mv[0], mv.shape[0]) != 0:
            raise ValueError("not a formatted guard table")
        self._guard_buf = buf
        self.has_guard = 1

    def bind(self, plan, target_fds, rings):
        """Swap in a plan (hepfast.plan.format.Plan, or an object with the same attributes).

        target_fds[i] / rings[i] belong to the plan's i-th target, destinations in order: a
        connected UDP socket's fd for udp targets (-1 otherwise), a writable mapping of this
        worker's ring for ring targets (None otherwise). The caller keeps both alive while bound.
        Transactional: on any error nothing changes and the exception says why."""
        cdef bound_t nb
        cdef int i, j, k, t, nt
        cdef const int32_t[::1] rs
        cdef const uint64_t[:, ::1] allow
        cdef const uint8_t[::1] allow_fam
        cdef const uint8_t[::1] blob
        cdef void *base
        if self.ctr == NULL:
            raise RuntimeError("set_counters() first")
        memset(&nb, 0, sizeof(bound_t))
        refs = [plan]
        try:
            rules_bind(&nb.rt, plan)
            nb.nrules = nb.rt.nrules
            import numpy as np
            slots = np.ascontiguousarray(plan.rule_slots, dtype=np.int32)
            refs.append(slots)
            rs = slots
            if rs.shape[0] != nb.nrules:
                raise ValueError("rule slots disagree with the number of rules")
            for i in range(nb.nrules):
                if not 0 <= rs[i] < MAX_RULE_SLOTS:
                    raise ValueError(f"rule slot {rs[i]} out of range")
            nb.rule_slot = &rs[0] if nb.nrules else NULL
            nb.default_dest = nb.rt.default_dest
            nb.max_chunks = int(plan.max_chunks)
            self._bind_guards(&nb, plan, refs)
            dests = list(plan.destinations)
            nb.ndests = len(dests)
            if not -1 <= nb.default_dest < nb.ndests:
                raise ValueError("default destination out of range")
            nt = sum(len(d.targets) for d in dests)
            if len(target_fds) != nt or len(rings) != nt:
                raise ValueError(f"{nt} targets, but {len(target_fds)} fds and {len(rings)} rings")
            nb.dests = <dest_t *>calloc(max(nb.ndests, 1), sizeof(dest_t))
            nb.targets = <target_t *>calloc(max(nt, 1), sizeof(target_t))
            if nb.dests == NULL or nb.targets == NULL:
                raise MemoryError()
            nb.ntargets = nt
            t = 0
            for i, d in enumerate(dests):
                if not d.targets:
                    raise ValueError(f"destination {d.name} has no targets")
                if not 0 <= d.slot < MAX_DEST_SLOTS:
                    raise ValueError(f"destination slot {d.slot} out of range")
                nb.dests[i].mode = d.mode
                nb.dests[i].egress = d.egress
                nb.dests[i].version = d.hep_version
                nb.dests[i].tstart = t
                nb.dests[i].tcount = len(d.targets)
                nb.dests[i].slot = d.slot
                nb.dests[i].ck_kind = getattr(d, "call_key", 0)
                nb.dests[i].ck_sep = getattr(d, "call_key_sep", 0)
                nb.dests[i].ck_field = getattr(d, "call_key_field", 0)
                if d.auth_key:
                    blob_obj = bytes(d.auth_key)
                    auth_chunk = (b"\x00\x00\x00\x0e" + (len(blob_obj) + 6).to_bytes(2, "big")
                                  + blob_obj)
                    refs.append(auth_chunk)
                    blob = auth_chunk
                    nb.dests[i].auth_mode = AUTH_SET
                    nb.dests[i].auth_blob = &blob[0]
                    nb.dests[i].auth_len = len(auth_chunk)
                elif d.strip_auth_key:
                    nb.dests[i].auth_mode = AUTH_STRIP
                nb.dests[i].payload = int(getattr(d, "payload", P_KEEP))
                if not P_KEEP <= nb.dests[i].payload <= P_COMPRESS:
                    raise ValueError(f"destination {d.name}: unknown payload mode")
                for j, tg in enumerate(d.targets):
                    if not 0 <= tg.slot < MAX_TARGET_SLOTS:
                        raise ValueError(f"target slot {tg.slot} out of range")
                    nb.targets[t].kind = d.egress
                    nb.targets[t].slot = tg.slot
                    nb.targets[t].dslot = d.slot
                    nb.targets[t].seed = tg.seed
                    nb.targets[t].max_len = MAX_UDP6 if tg.family == AF_INET6 else MAX_UDP4
                    nb.targets[t].check_err = d.mode == M_FAILOVER or (
                        d.mode == M_HASH and len(d.targets) > 1)
                    if d.egress == E_UDP:
                        nb.targets[t].fd = target_fds[t]
                        if nb.targets[t].fd < 0:
                            raise ValueError(f"target {tg.configured}: no socket")
                        nb.targets[t].cap = 2 * self.batch
                        nb.targets[t].msgs = <mmsghdr *>calloc(nb.targets[t].cap,
                                                               sizeof(mmsghdr))
                        nb.targets[t].iov = <iovec *>calloc(nb.targets[t].cap, sizeof(iovec))
                        if nb.targets[t].msgs == NULL or nb.targets[t].iov == NULL:
                            raise MemoryError()
                        for k in range(nb.targets[t].cap):
                            nb.targets[t].msgs[k].msg_hdr.msg_iov = &nb.targets[t].iov[k]
                            nb.targets[t].msgs[k].msg_hdr.msg_iovlen = 1
                    elif d.egress == E_RING:
                        # One producer handle per ring: the destination's first target holds it.
                        nb.targets[t].fd = -1
                        nb.targets[t].max_len = SLOT_BYTES
                        if j == 0:
                            if rings[t] is None:
                                raise ValueError(f"destination {d.name}: no ring")
                            base = <void *>_ptr(rings[t], True)
                            refs.append(rings[t])
                            if hep_ring_attach(&nb.targets[t].ring, base, len(rings[t])) != 0:
                                raise ValueError(f"destination {d.name}: not a formatted ring")
                    else:
                        raise ValueError(f"destination {d.name}: unknown egress {d.egress}")
                    t += 1
            for i in range(len(plan.fwd)):
                if not 0 <= plan.fwd[i] < nb.ndests:
                    raise ValueError("forward table names an unknown destination")
            if len(plan.listeners) != self.nlisteners:
                raise ValueError(f"the plan has {len(plan.listeners)} listeners, this worker "
                                 f"serves {self.nlisteners}")
            for i in range(self.nlisteners):
                lt = plan.listeners[i]
                nb.listeners[i].fd = self.listener_fds[i]
                nb.listeners[i].stream = 1 if getattr(lt, "stream", False) else 0
                if nb.listeners[i].stream != self.is_stream[i]:
                    raise ValueError(f"listener {lt.name}: the plan says "
                                     f"{'tcp' if nb.listeners[i].stream else 'udp'}, the "
                                     "socket is not")
                if nb.listeners[i].stream:
                    nb.listeners[i].max_message = int(lt.max_message)
                    nb.listeners[i].max_reads = int(lt.max_reads)
                    nb.listeners[i].max_conns = min(int(lt.max_connections), MAX_CONNS)
                    nb.listeners[i].message_timeout_ns = int(lt.message_timeout * 1e9)
                    nb.listeners[i].idle_timeout_ns = int(lt.idle_timeout * 1e9)
                    if getattr(lt, "transport", "tcp") == "tls":
                        nb.listeners[i].tls = _tls_context(lt)
                key = bytes(lt.auth_key)
                nb.listeners[i].has_auth = 1 if key else 0
                if key:
                    refs.append(key)
                    blob = key
                    nb.listeners[i].auth = &blob[0]
                    nb.listeners[i].auth_len = blob.shape[0]
                allow = lt.allow
                allow_fam = lt.allow_fam
                if allow_fam.shape[0] != allow.shape[0]:
                    raise ValueError("listener allow rows and families disagree")
                nb.listeners[i].nallow = allow.shape[0]
                nb.listeners[i].allow = &allow[0, 0] if allow.shape[0] else NULL
                nb.listeners[i].allow_fam = &allow_fam[0] if allow.shape[0] else NULL
                nb.listeners[i].dedup_ms = int(getattr(lt, "dedup_ms", 0))
                if nb.listeners[i].dedup_ms and not self.has_guard:
                    raise ValueError(f"listener {lt.name}: dedup needs the guard table "
                                     "(set_guard)")
        except BaseException:
            _free_bound(&nb)
            raise
        # Commit: nothing below can fail. Queues of the old state are empty (flushed at the end
        # of every run()).
        _free_bound(&self.b)
        self.b = nb
        self._refs = refs
        self.bound = 1

    cdef int _bind_guards(self, bound_t *nb, object plan, list refs) except -1:
        """The rules' guard arrays and the plan's guard settings into nb (cold, in bind)."""
        import numpy as np
        cdef const uint32_t[::1] dm
        cdef const uint64_t[:, ::1] rt
        cdef Py_ssize_t i
        nb.needs_inflate = 1 if getattr(plan, "needs_inflate", False) else 0
        nb.dedup_expire_ms = int(getattr(plan, "dedup_expire_ms", 0))
        nb.call_idle_ms = int(getattr(plan, "call_idle_ms", 300000))
        if nb.nrules == 0:
            return 0
        dms = np.ascontiguousarray(getattr(plan, "dedup_ms", np.zeros(nb.nrules, np.uint32)),
                                   dtype=np.uint32)
        rate = np.ascontiguousarray(getattr(plan, "rate", np.zeros((nb.nrules, 4), np.uint64)),
                                    dtype=np.uint64)
        refs.extend((dms, rate))
        if dms.shape != (nb.nrules,) or rate.shape != (nb.nrules, 4):
            raise ValueError("guard arrays disagree with the number of rules")
        dm = dms
        rt = rate
        for i in range(nb.nrules):
            if (dm[i] or rt[i, 0] or rt[i, 2]) and not self.has_guard:
                raise ValueError("the plan dedups or rate-limits, but the guard table is not "
                                 "mapped (set_guard)")
            if (dm[i] or rt[i, 0] or rt[i, 2]) and not (nb.rt.flags[i] & RF_HAS_GUARD):
                raise ValueError(f"rule {i} has guards but not the has_guard flag")
        nb.dedup_ms = &dm[0]
        nb.rate = &rt[0, 0]
        return 0

    def ring_used(self):
        """Bytes in flight per ring target of the bound plan ({target slot: bytes})."""
        cdef int i
        return {self.b.targets[self.b.dests[i].tstart].slot:
                hep_ring_used(&self.b.targets[self.b.dests[i].tstart].ring)
                for i in range(self.b.ndests) if self.b.dests[i].egress == E_RING}

    # ------------------------------------------------------------------ hot path

    cdef inline void _drop(self, int reason, uint64_t n) noexcept nogil:
        self.ctr[OFF_DROP + reason] += n

    cdef inline void _ddrop(self, int dslot, int reason, uint64_t n) noexcept nogil:
        self.ctr[OFF_DEST_DROP + dslot * N_DROP + reason] += n

    cdef void _target_failed(self, target_t *t, int64_t now, uint64_t n,
                             int err) noexcept nogil:
        self.ctr[OFF_SEND_ERR + t.slot] += n
        self.ctr[OFF_LAST_ERR + t.slot] = now
        if err:
            self.ctr[OFF_LAST_ERRNO + t.slot] = err
        if n:
            self._ddrop(t.dslot, D_SEND_ERROR, n)

    cdef void _flush_target(self, target_t *t, int64_t now) noexcept nogil:
        cdef unsigned int sent = 0
        cdef int r, err, soerr = 0
        cdef socklen_t optlen
        if t.kind == E_RING:
            if t.ring_dirty:
                hep_ring_publish(&t.ring)
                t.ring_dirty = 0
            return
        while sent < t.n:
            r = sendmmsg(t.fd, t.msgs + sent, t.n - sent, MSG_DONTWAIT)
            if r > 0:
                sent += r
                self.ctr[OFF_FORWARDED + t.slot] += r
                self.ctr[OFF_LAST_OK + t.slot] = now
                continue
            err = errno
            if err == EINTR:
                continue
            if err == EAGAIN or err == ENOBUFS:
                # Socket buffer full: drop what is left for this target rather than stall the
                # others.
                self._ddrop(t.dslot, D_QUEUE_FULL, t.n - sent)
                break
            if err == EMSGSIZE:
                # This datagram cannot be carried; it says nothing about the target's health.
                self._ddrop(t.dslot, D_TOO_BIG, 1)
                sent += 1
                continue
            # An ICMP error (connection refused, unreachable) reported for an earlier packet, or
            # a hard error for this one: the target is down for DOWN_NS; what is left of this
            # queue is not sent into the void but counted.
            t.down_until = now + DOWN_NS
            self._target_failed(t, now, t.n - sent, err)
            sent = t.n
            break
        if t.check_err and sent:
            # sendmmsg reports an ICMP error only if it is pending before the first message of
            # the call, so errors caused inside a batch would wait for the next one; failover
            # and hash need to know now. One getsockopt per batch, only for those targets.
            optlen = sizeof(int)
            if getsockopt(t.fd, SOL_SOCKET, SO_ERROR, &soerr, &optlen) == 0 and soerr != 0:
                self._target_failed(t, now, 0, soerr)
                t.down_until = now + DOWN_NS
        t.n = 0

    cdef void _flush_all(self) noexcept nogil:
        cdef int i
        cdef int64_t now = self.now
        for i in range(self.b.ntargets):
            if self.b.targets[i].n or self.b.targets[i].ring_dirty:
                self._flush_target(&self.b.targets[i], now)
        self.scratch_pos = 0

    cdef inline void _queue(self, int ti, const uint8_t *data, Py_ssize_t n) noexcept nogil:
        cdef target_t *t = &self.b.targets[ti]
        self.ctr[H_COPIES] += 1
        if n > t.max_len:
            self._ddrop(t.dslot, D_TOO_BIG, 1)
            return
        if t.down_until > self.now:
            # Known down (refused within DOWN_NS): counted, not sent. The first copy after
            # DOWN_NS goes out again as the re-probe.
            self._target_failed(t, self.now, 1, 0)
            return
        if t.n >= t.cap:
            self._flush_target(t, now_ns())
        t.iov[t.n].iov_base = <void *>data
        t.iov[t.n].iov_len = n
        t.n += 1

    @cython.cdivision(True)     # tcount >= 1: bind() refuses a destination without targets
    cdef inline int _pick(self, dest_t *d, uint64_t key, int64_t now) noexcept nogil:
        cdef int i, best = -1, any_best = d.tstart
        cdef uint64_t w, bw = 0, abw = 0
        if d.tcount == 1:
            return d.tstart
        if d.mode == M_HASH:
            # Rendezvous over the healthy targets: a dead target's calls move to their
            # next-ranked target and come back when it does; every other call stays put.
            for i in range(d.tstart, d.tstart + d.tcount):
                w = hep_mix64(key ^ self.b.targets[i].seed)
                if i == d.tstart or w > abw:
                    any_best = i
                    abw = w
                if self.b.targets[i].down_until <= now and (best < 0 or w > bw):
                    best = i
                    bw = w
            return best if best >= 0 else any_best
        if d.mode == M_ROUNDROBIN:
            d.rr += 1
            return d.tstart + <int>(d.rr % <uint32_t>d.tcount)
        # failover: the first target not marked down, else the first.
        for i in range(d.tstart, d.tstart + d.tcount):
            if self.b.targets[i].down_until <= now:
                return i
        return d.tstart

    cdef inline Py_ssize_t _build(self, const uint8_t *buf, hep_pkt *p, Py_ssize_t r,
                                  dest_t *d, const uint8_t **out) noexcept nogil:
        """Build the packet as rule r (-1: the default route) and destination d want it, into
        scratch. Returns its length, or -1 (too big) / -2 (HEPv2 cannot carry it)."""
        cdef Py_ssize_t n, n2, cap
        cdef uint8_t *dst
        cdef hep_pkt p2
        cdef uint32_t auth_key = CH_AUTH
        cdef int version = d.version
        cdef int rewrite = r >= 0 and (self.b.rt.flags[r] & RF_HAS_REWRITE)
        if self.scratch_cap - self.scratch_pos < 3 * SLOT_BYTES:
            self._flush_all()
        dst = self.scratch + self.scratch_pos
        cap = self.scratch_cap - self.scratch_pos
        if not rewrite and not d.auth_mode and (version == p.version or version == 3 and
                                                p.version == 3) and buf != self.zpkt:
            out[0] = buf
            return p.total
        if version == 2 and not rewrite:
            n = hep_build_v2(buf, p, dst, cap)
            if n < 0:
                return -2
            out[0] = dst
            self.scratch_pos += n
            return n
        if rewrite:
            n = hep_build_v3(buf, p,
                             self.b.rt.set_blob + self.b.rt.set_off[r] if self.b.rt.set_len[r]
                             else NULL,
                             self.b.rt.set_len[r],
                             self.b.rt.skip + self.b.rt.skip_start[r] if self.b.rt.skip_count[r]
                             else NULL,
                             self.b.rt.skip_count[r], dst, cap)
        else:
            n = hep_build_v3(buf, p, NULL, 0, NULL, 0, dst, cap)
        if n < 0:
            return -1
        if d.auth_mode and version == 3:
            # The destination's own auth key (or none) on top of the rule's rewrite.
            if hep_parse_lim(dst, n, &p2, HEP_UNCAPPED) != R_OK:
                return -1
            n2 = hep_build_v3(dst, &p2, d.auth_blob if d.auth_mode == AUTH_SET else NULL,
                              d.auth_len if d.auth_mode == AUTH_SET else 0, &auth_key, 1,
                              dst + n, cap - n)
            if n2 < 0:
                return -1
            out[0] = dst + n
            self.scratch_pos += n + n2
            return n2
        if version == 2:
            if hep_parse_lim(dst, n, &p2, HEP_UNCAPPED) != R_OK:
                return -1
            n2 = hep_build_v2(dst, &p2, dst + n, cap - n)
            if n2 < 0:
                return -2
            out[0] = dst + n
            self.scratch_pos += n + n2
            return n2
        out[0] = dst
        self.scratch_pos += n
        return n

    cdef void _forward(self, const uint8_t *buf, hep_pkt *p, const uint8_t *mbuf, hep_pkt *mp,
                       Py_ssize_t r, int di, uint64_t *key, int *have_key, int64_t now,
                       const uint8_t **built, Py_ssize_t *built_len) noexcept nogil:
        """Queue the packet for destination di as rule r wants it. buf/p: the packet as
        received; mbuf/mp: what the rules read (the same, or its inflated form: a "payload =
        inflate" destination gets that one). built[(v-2) + 2 * inflated]: cache of the packet
        already built for this rule (destinations with their own auth key, or that compress,
        build their own copy)."""
        cdef dest_t *d = &self.b.dests[di]
        cdef int i, vi = 0 if d.version == 2 else 1
        cdef const uint8_t *data
        cdef Py_ssize_t n
        cdef Py_ssize_t before = self.scratch_pos
        cdef uint64_t dkey
        if d.payload == P_INFLATE and mbuf != buf:      # (HEPv2 destinations: always)
            buf = mbuf
            p = mp
            vi += 2
        if d.auth_mode or d.payload == P_COMPRESS:
            n = self._build(buf, p, r, d, &data)
            if n > 0 and d.payload == P_COMPRESS:
                n = self._compress(data, n, &data)
        else:
            if built_len[vi] == 0:
                built_len[vi] = self._build(buf, p, r, d, &built[vi])
                if self.scratch_pos < before:
                    for i in range(4):       # the scratch arena was flushed and reused
                        if i != vi:
                            built_len[i] = 0
            n = built_len[vi]
            data = built[vi]
        if n < 0:
            # Counted once per copy the destination would have received.
            self.ctr[H_COPIES] += 1 if d.mode != M_ALL else d.tcount
            self._ddrop(d.slot, D_UNCONVERTIBLE if n == -2 else D_TOO_BIG,
                        1 if d.mode != M_ALL else d.tcount)
            return
        dkey = key[0]
        if d.mode == M_HASH and d.tcount > 1:
            # Only a choice between targets needs the call key (it may scan the SIP headers).
            if d.ck_kind != CK_CALL_ID or d.ck_sep:
                dkey = dest_key(mp, mbuf, d.ck_kind, d.ck_sep, d.ck_field)
            else:
                if not have_key[0]:
                    key[0] = sample_key(mp, mbuf)
                    have_key[0] = 1
                dkey = key[0]
        if d.egress == E_RING:
            self._queue_ring(d, data, n, dkey)
            return
        if d.mode == M_ALL:
            for i in range(d.tstart, d.tstart + d.tcount):
                self._queue(i, data, n)
            return
        self._queue(self._pick(d, dkey, now), data, n)

    cdef inline void _queue_ring(self, dest_t *d, const uint8_t *data, Py_ssize_t n,
                                 uint64_t key) noexcept nogil:
        """One record per packet and ring-fed destination (its first target's ring handle is
        the destination's ring): the egress process applies the mode among its targets, whose
        health it knows; meta carries the low 32 bits of the call key's hash for hash mode.
        Copies counted as the destination's mode makes them (all: one per target)."""
        cdef target_t *t = &self.b.targets[d.tstart]
        cdef uint64_t copies = 1
        cdef uint32_t meta = 0
        cdef int rc
        if d.mode == M_ALL:
            copies = <uint64_t>d.tcount
        elif d.mode == M_HASH:
            meta = <uint32_t>(key & <uint64_t>0xFFFFFFFF)
        self.ctr[H_COPIES] += copies
        rc = hep_ring_push(&t.ring, data, <uint32_t>n, meta)
        if rc == 0:
            t.ring_dirty = 1
            self.ctr[OFF_QUEUED + t.slot] += copies
        elif rc == HEP_RING_TOO_BIG:
            self._ddrop(d.slot, D_TOO_BIG, copies)
        else:
            self._ddrop(d.slot, D_QUEUE_FULL, copies)

    cdef inline int _allowed(self, listener_t *lst, sockaddr_storage *sa) noexcept nogil:
        cdef uint64_t hi, lo
        cdef uint8_t fam
        if lst.nallow == 0:
            return 1
        if sa.ss_family == AF_INET:
            addr128(<const uint8_t *>&(<sockaddr_in *>sa).sin_addr, 0, &hi, &lo)
            fam = 4
        elif sa.ss_family == AF_INET6:
            addr128((<sockaddr_in6 *>sa).sin6_addr.s6_addr, 1, &hi, &lo)
            # an IPv4 sender on a dual-stack socket shows up as ::ffff:a.b.c.d
            fam = 4 if hi == 0 and (lo >> 32) == 0xffff else 6
        else:
            return 0
        return cidr_match(lst.allow, lst.allow_fam, 0, lst.nallow, hi, lo, fam)

    cdef inline int _check_auth(self, listener_t *lst, const uint8_t *buf,
                                hep_pkt *p) noexcept nogil:
        # Exactly one auth-key chunk: with two, which one "counts" would be a guess (an agent
        # must not be able to smuggle a wrong key past a right one, or the reverse).
        if p.nauth != 1 or p.auth_len != lst.auth_len:
            return 0
        return ct_equal(buf + p.auth_off, lst.auth, lst.auth_len)

    cdef void _process(self, int li, int nmsg) noexcept nogil:
        cdef int i
        cdef const uint8_t *buf
        self.now = now_ns()
        self.ctr[H_DATAGRAMS] += nmsg
        if not self.b.listeners[li].dedup_ms:
            for i in range(nmsg):
                self._one(li, self.arena + <Py_ssize_t>i * SLOT_STRIDE, self.rmsgs[i].msg_len,
                          &self.raddr[i], 1)
            return
        # Listener dedup: parse and hash the whole batch first, then prefetch each identity's
        # bucket in a loop of its own, then process it (the table is larger than the caches:
        # one miss per packet otherwise; issued together, the misses and on 4 KiB pages their
        # page walks overlap, where a prefetch after each hash waited for its walk alone).
        for i in range(nmsg):
            buf = self.arena + <Py_ssize_t>i * SLOT_STRIDE
            self.prc[i] = hep_parse_lim(buf, self.rmsgs[i].msg_len, &self.pkts[i],
                                        self.b.max_chunks)
            self.dhv[i] = self.prc[i] == R_OK and not (
                self.b.needs_inflate and (self.pkts[i].present >> CH_ZPAYLOAD) & 1
                and not (self.pkts[i].present >> CH_PAYLOAD) & 1)
            if self.dhv[i]:
                self.dh[i] = dedup_identity(&self.pkts[i], buf, 0)
        for i in range(nmsg):
            if self.dhv[i]:
                hep_dedup_prefetch(&self.guard, self.dh[i])
        for i in range(nmsg):
            self._one_pre(li, self.arena + <Py_ssize_t>i * SLOT_STRIDE, self.rmsgs[i].msg_len,
                          &self.raddr[i], 1, &self.pkts[i], self.prc[i], self.dh[i],
                          self.dhv[i])

    cdef void _one(self, int li, const uint8_t *buf, Py_ssize_t n, sockaddr_storage *sa,
                   int check_acl) noexcept nogil:
        """One HEP message from listener li: checks, rules, egress. Its bytes (buf) must stay
        until the next _flush_all()."""
        self._one_pre(li, buf, n, sa, check_acl, NULL, 0, 0, 0)

    cdef void _one_pre(self, int li, const uint8_t *buf, Py_ssize_t n, sockaddr_storage *sa,
                       int check_acl, hep_pkt *pre, int pre_rc, uint64_t pre_h,
                       int has_h) noexcept nogil:
        """_one, with the packet already parsed when pre is not NULL (pre_rc: the parse's
        result) and, when has_h, its listener dedup identity pre_h."""
        cdef int rc, forwarded
        cdef Py_ssize_t r, j
        cdef hep_pkt p0
        cdef hep_pkt *pp = pre if pre != NULL else &p0
        cdef listener_t *lst = &self.b.listeners[li]
        cdef uint64_t key = 0
        cdef int have_key
        cdef int64_t now = self.now
        cdef const uint8_t *built[4]
        cdef Py_ssize_t built_len[4]
        cdef uint32_t flags
        cdef sip_info si
        cdef const sip_info *sip
        cdef hep_pkt zp
        cdef const uint8_t *mbuf = buf     # what the rules read: buf, or its inflated form
        cdef hep_pkt *mp = pp
        cdef int g
        # Who may send is decided before what they sent: a refused source is "acl" whatever
        # its packet holds (stream connections are checked once, at accept).
        if check_acl and lst.nallow and not self._allowed(lst, sa):
            self.ctr[OFF_INVALID + li * N_INVALID + R_ACL] += 1
            return
        rc = pre_rc if pre != NULL else hep_parse_lim(buf, n, pp, self.b.max_chunks)
        if rc == R_OK and lst.has_auth and not self._check_auth(lst, buf, pp):
            rc = R_AUTH
        if rc == R_OK and self.b.needs_inflate and (pp.present >> CH_ZPAYLOAD) & 1 \
                and not (pp.present >> CH_PAYLOAD) & 1:
            # Only a compressed payload, and the plan reads payloads: rules, dedup and the call
            # key read its inflated form (built in zpkt), destinations get what they asked for.
            rc = self._inflate(buf, pp, &zp)
            mbuf = self.zpkt
            mp = &zp
        if rc != R_OK:
            self.ctr[OFF_INVALID + li * N_INVALID + rc] += 1
            return
        self.ctr[OFF_RECEIVED + li * 256 + pp.proto_type] += 1
        if lst.dedup_ms:
            g = hep_dedup(&self.guard, pre_h if has_h else dedup_identity(mp, mbuf, 0),
                          <uint64_t>now // 1000000,
                          lst.dedup_ms, self.b.dedup_expire_ms)
            if g == HEP_G_HIT:
                self._drop(D_DUPLICATE, 1)
                return
            if g == HEP_G_FULL:
                self.ctr[OFF_GUARD + G_DEDUP_FULL] += 1
        have_key = 0
        forwarded = 0
        sip = NULL
        if self.b.rt.needs_sip and pkt_is_sip(mp):
            if sip_scan_want(mbuf + mp.payload_off, mp.payload_len, self.b.rt.sip_want,
                             &si) == 0:
                sip = &si
        r = 0
        while r < self.b.nrules:
            if not rule_match(&self.b.rt, r, mp, mbuf, li, sip):
                r += 1
                continue
            flags = self.b.rt.flags[r]
            self.ctr[OFF_RULE + self.b.rule_slot[r]] += 1
            if flags & RF_HAS_SAMPLE:
                if not have_key:
                    key = sample_key(mp, mbuf)
                    have_key = 1
                if not rule_sample_keep(&self.b.rt, r, True, key):
                    if not forwarded:
                        self._drop(D_SAMPLE, 1)
                        forwarded = -1
                    break
            if flags & RF_HAS_GUARD:
                g = self._guard_rule(r, mp, mbuf, now)
                if g >= 0:
                    if not forwarded:
                        self._drop(g, 1)
                        forwarded = -1
                    break
            if flags & RF_DROP:
                if not forwarded:
                    self._drop(D_RULE, 1)
                    forwarded = -1
                break
            memset(built_len, 0, 4 * sizeof(Py_ssize_t))
            for j in range(self.b.rt.fwd_start[r],
                           self.b.rt.fwd_start[r] + self.b.rt.fwd_count[r]):
                self._forward(buf, pp, mbuf, mp, r, self.b.rt.fwd[j], &key, &have_key, now,
                              built, built_len)
            forwarded = 1
            if not (flags & RF_CONTINUE):
                break
            r += 1
        if forwarded == 0:
            if self.b.default_dest >= 0:
                memset(built_len, 0, 4 * sizeof(Py_ssize_t))
                self._forward(buf, pp, mbuf, mp, -1, self.b.default_dest, &key, &have_key, now,
                              built, built_len)
                forwarded = 1
            else:
                self._drop(D_NO_ROUTE, 1)
        if forwarded == 1:
            self.ctr[H_ROUTED] += 1

    # ------------------------------------------------------------------ guards

    cdef int _inflate(self, const uint8_t *buf, hep_pkt *p, hep_pkt *zp) noexcept nogil:
        """The packet with its compressed payload (0x0010) replaced by the inflated one
        (0x000f, in its place) into zpkt, parsed into zp: R_OK, or R_COMPRESSED_TOO_BIG (more
        than INFLATE_MAX bytes, or a packet over 65535 with them), R_COMPRESSED_CORRUPT."""
        cdef Py_ssize_t n
        cdef uint32_t skip = CH_ZPAYLOAD
        n = hz_inflate(&self.zinf, buf + p.payload_off, p.payload_len, self.zbuf + 6,
                       INFLATE_MAX)
        if n < 0:
            return R_COMPRESSED_TOO_BIG if n == HZ_TOO_BIG else R_COMPRESSED_CORRUPT
        if n + 6 > 65535:
            return R_COMPRESSED_TOO_BIG
        hep_wr16(self.zbuf, 0)
        hep_wr16(self.zbuf + 2, CH_PAYLOAD)
        hep_wr16(self.zbuf + 4, <uint16_t>(n + 6))
        n = hep_build_v3(buf, p, self.zbuf, n + 6, &skip, 1, self.zpkt, SLOT_BYTES)
        if n < 0:
            return R_COMPRESSED_TOO_BIG
        if hep_parse_lim(self.zpkt, n, zp, HEP_UNCAPPED) != R_OK:
            return R_COMPRESSED_CORRUPT
        self.ctr[OFF_GUARD + G_INFLATED] += 1
        return R_OK

    cdef Py_ssize_t _compress(self, const uint8_t *data, Py_ssize_t n,
                              const uint8_t **out) noexcept nogil:
        """A built v3 packet with its payload chunk (0x000f) compressed into 0x0010 (zlib), in
        scratch: the new length with out set, or n with out unchanged when there is no plain
        payload or compressing would not make it smaller. Called right after _build, which left
        room for it (3 slots)."""
        cdef hep_pkt p2
        cdef Py_ssize_t z, m
        cdef uint32_t skip = CH_PAYLOAD
        if hep_parse_lim(data, n, &p2, HEP_UNCAPPED) != R_OK or p2.version != 3 \
                or not (p2.present >> CH_PAYLOAD) & 1 or p2.payload_len == 0:
            return n
        z = hz_deflate(&self.zdef, data + p2.payload_off, p2.payload_len, self.zout + 6,
                       ZOUT_BYTES - 6)
        if z < 0 or z >= p2.payload_len:
            return n
        hep_wr16(self.zout, 0)
        hep_wr16(self.zout + 2, CH_ZPAYLOAD)
        hep_wr16(self.zout + 4, <uint16_t>(z + 6))
        m = hep_build_v3(data, &p2, self.zout, z + 6, &skip, 1, self.scratch + self.scratch_pos,
                         self.scratch_cap - self.scratch_pos)
        if m < 0:
            return n
        out[0] = self.scratch + self.scratch_pos
        self.scratch_pos += m
        self.ctr[OFF_GUARD + G_COMPRESSED] += 1
        return m

    cdef int _guard_rule(self, Py_ssize_t r, hep_pkt *p, const uint8_t *buf,
                         int64_t now) noexcept nogil:
        """Rule r's guards for a packet it took: -1 (pass), or the drop reason (duplicate,
        call_rate_limit, rate_limit). A table with no room lets the packet pass, counted."""
        cdef int slot = self.b.rule_slot[r]
        cdef const uint64_t *rt = self.b.rate + 4 * r
        cdef uint32_t w = self.b.dedup_ms[r]
        cdef uint64_t h = 0
        cdef int g
        if w:
            g = hep_dedup(&self.guard, dedup_identity(p, buf, 1 + <uint64_t>slot),
                          <uint64_t>now // 1000000, w, self.b.dedup_expire_ms)
            if g == HEP_G_HIT:
                return D_DUPLICATE
            if g == HEP_G_FULL:
                self.ctr[OFF_GUARD + G_DEDUP_FULL] += 1
        if rt[2] and call_key_hash(p, buf, &h):
            # Calls without a key (no Call-ID, no correlation id) are not counted as calls.
            g = hep_call(&self.guard, slot, hep_mix64(h ^ (0x9E3779B97F4A7C15ULL * (1 + slot))),
                         <uint64_t>now, rt[2], rt[3], self.b.call_idle_ms)
            if g == HEP_G_HIT:
                return D_CALL_RATE_LIMIT
            if g == HEP_G_FULL:
                self.ctr[OFF_GUARD + G_CALLS_FULL] += 1
        if rt[0] and not hep_gcra(hep_guard_tat(&self.guard, slot), <uint64_t>now, rt[0],
                                  rt[1]):
            return D_RATE_LIMIT
        return -1

    # ------------------------------------------------------------------ stream listeners

    cdef inline uint64_t *_cc(self, int li, int what) noexcept nogil:
        return &self.ctr[OFF_CONN + li * N_CONN + what]

    cdef void _close(self, int ci, int reason) noexcept nogil:
        cdef conn_t *c = &self.conns[ci]
        if c.fd < 0:
            return
        if c.ssl != NULL:
            if not c.hs and reason != C_ERROR and reason != C_EOF:
                # We end it (idle, stop, a bad message): one non-blocking try at close_notify,
                # so the agent knows the close was meant. Never after an error (OpenSSL's rule).
                ERR_clear_error()
                SSL_shutdown(c.ssl)
            SSL_free(c.ssl)         # the fd is ours (SSL_set_fd: BIO_NOCLOSE)
            ERR_clear_error()
            c.ssl = NULL
            c.hs = 0
        close(c.fd)                 # also leaves the epoll set
        free(c.buf)
        c.buf = NULL
        c.fd = -1
        c.cap = c.len = 0
        self._cc(c.li, 0)[0] -= 1
        self._cc(c.li, 2 + reason)[0] += 1

    cdef void _accept(self, int li) noexcept nogil:
        cdef listener_t *lst = &self.b.listeners[li]
        cdef sockaddr_storage sa
        cdef socklen_t alen
        cdef int fd, ci, _k
        cdef epoll_event ev
        cdef SSL *ssl
        for _k in range(64):
            alen = sizeof(sockaddr_storage)
            fd = accept4(self.listener_fds[li], <sockaddr *>&sa, &alen,
                         SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                return              # EAGAIN (or an aborted connection): nothing more now
            self._cc(li, 1)[0] += 1
            if lst.nallow and not self._allowed(lst, &sa):
                close(fd)
                self.ctr[H_DATAGRAMS] += 1
                self.ctr[OFF_INVALID + li * N_INVALID + R_ACL] += 1
                self._cc(li, 2 + C_INVALID)[0] += 1
                continue
            ci = -1
            if <int64_t>self._cc(li, 0)[0] < lst.max_conns:
                for ci in range(MAX_CONNS):
                    if self.conns[ci].fd < 0:
                        break
                else:
                    ci = -1
            if ci < 0:
                close(fd)
                self._cc(li, 2 + C_LIMIT)[0] += 1
                continue
            ssl = NULL
            if lst.tls != NULL:
                # The handshake runs in this loop like the reads (_tls_event); it must end
                # within message_timeout (_sweep). The session keeps its context alive.
                ERR_clear_error()
                ssl = SSL_new(lst.tls)
                if ssl == NULL or SSL_set_fd(ssl, fd) != 1:
                    if ssl != NULL:
                        SSL_free(ssl)
                    ERR_clear_error()
                    close(fd)
                    self._cc(li, 2 + C_ERROR)[0] += 1
                    continue
                SSL_set_accept_state(ssl)
            self.conns[ci].fd = fd
            self.conns[ci].li = li
            self.conns[ci].len = 0
            self.conns[ci].msg_start = self.now if ssl != NULL else 0
            self.conns[ci].reads = 0
            self.conns[ci].last = self.now
            self.conns[ci].peer = sa
            self.conns[ci].ssl = ssl
            self.conns[ci].hs = 1 if ssl != NULL else 0
            self.conns[ci].events = EPOLLIN | EPOLLRDHUP
            ev.events = EPOLLIN | EPOLLRDHUP
            ev.data.u64 = ci
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
                if ssl != NULL:
                    SSL_free(ssl)
                    self.conns[ci].ssl = NULL
                    self.conns[ci].hs = 0
                close(fd)
                self.conns[ci].fd = -1
                self._cc(li, 2 + C_ERROR)[0] += 1
                continue
            self._cc(li, 0)[0] += 1
            if ci >= self.conn_hi:
                self.conn_hi = ci + 1

    cdef int _grow(self, conn_t *c, Py_ssize_t need) noexcept nogil:
        cdef Py_ssize_t cap = CONN_BUF0 if c.cap == 0 else c.cap
        cdef uint8_t *nb
        while cap < need:
            cap *= 2
        if cap == c.cap:
            return 0
        nb = <uint8_t *>realloc(c.buf, cap)
        if nb == NULL:
            return -1
        c.buf = nb
        c.cap = cap
        return 0

    cdef void _read(self, int ci) noexcept nogil:
        """Read what a plain TCP connection has and frame it (_frame)."""
        cdef conn_t *c = &self.conns[ci]
        cdef ssize_t r
        cdef int _k
        for _k in range(READS_PER_EVENT):
            if c.len == c.cap and self._grow(c, c.cap + 1 if c.cap else CONN_BUF0) != 0:
                self._close(ci, C_ERROR)
                return
            r = read(c.fd, c.buf + c.len, c.cap - c.len)
            if r == 0:
                self._close(ci, C_EOF)
                return
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    return
                self._close(ci, C_ERROR)
                return
            if self._frame(ci, r):
                return

    cdef int _frame(self, int ci, Py_ssize_t got) noexcept nogil:
        """`got` new bytes at the end of the connection's buffer (read, or decrypted by TLS):
        frame by the HEPv3 length field, process every whole message. Bad framing closes this
        connection only; the others are untouched. Returns 1 when the connection was closed."""
        cdef conn_t *c = &self.conns[ci]
        cdef listener_t *lst = &self.b.listeners[c.li]
        cdef Py_ssize_t pos, ln, want
        cdef int li = c.li
        cdef const uint8_t *q
        c.len += got
        c.last = self.now
        if c.msg_start == 0:
            c.msg_start = self.now
        c.reads += 1
        pos = 0
        while c.len - pos >= 6:
            q = c.buf + pos
            if not (q[0] == 0x48 and q[1] == 0x45 and q[2] == 0x50 and q[3] == 0x33):
                # HEPv1/v2 carry no total length: on a stream they cannot be framed.
                # (A refused message counts as one read, valid or not, like a datagram.)
                self.ctr[H_DATAGRAMS] += 1
                self.ctr[OFF_INVALID + li * N_INVALID +
                         (R_VERSION if q[0] == 1 or q[0] == 2 else R_MAGIC)] += 1
                self._flush_all()
                self._close(ci, C_INVALID)
                return 1
            ln = (<Py_ssize_t>q[4] << 8) | q[5]
            if ln < 6:
                self.ctr[H_DATAGRAMS] += 1
                self.ctr[OFF_INVALID + li * N_INVALID + R_LENGTH] += 1
                self._flush_all()
                self._close(ci, C_INVALID)
                return 1
            if ln > lst.max_message:
                self.ctr[H_DATAGRAMS] += 1
                self.ctr[OFF_INVALID + li * N_INVALID + R_LENGTH] += 1
                self._flush_all()
                self._close(ci, C_TOO_BIG)
                return 1
            if c.len - pos < ln:
                want = pos + ln
                if want > c.cap and pos == 0 and self._grow(c, want) != 0:
                    self._close(ci, C_ERROR)
                    return 1
                break
            self.ctr[H_DATAGRAMS] += 1
            self._one(li, q, ln, &c.peer, 0)
            pos += ln
            c.msg_start = 0
            c.reads = 0
        if pos:
            # The messages' bytes are about to move: send what points into them first.
            self._flush_all()
            c.len -= pos
            if c.len:
                memmove(c.buf, c.buf + pos, c.len)
                c.msg_start = self.now
                c.reads = 1
        if c.len == 0 and c.cap > CONN_BUF0:
            free(c.buf)          # an idle connection keeps no buffer
            c.buf = NULL
            c.cap = 0
        elif c.len and c.reads > lst.max_reads:
            self._close(ci, C_STALLED)
            return 1
        return 0

    # ---------------------------------------------------------- TLS connections (tls listeners)

    cdef void _tls_want(self, int ci, int write) noexcept nogil:
        """Wait for what OpenSSL needs: readable, or (it has bytes to send that the socket did
        not take) writable only, so a peer that writes but does not read cannot spin the loop."""
        cdef conn_t *c = &self.conns[ci]
        cdef epoll_event ev
        cdef uint32_t want = EPOLLOUT if write else EPOLLIN | EPOLLRDHUP
        if want == c.events:
            return
        ev.events = want
        ev.data.u64 = ci
        if epoll_ctl(self.epfd, EPOLL_CTL_MOD, c.fd, &ev) != 0:
            self._close(ci, C_ERROR)
            return
        c.events = want

    cdef int _tls_cert_refused(self, conn_t *c) noexcept nogil:
        """After a failed handshake: was it the client's certificate (missing while required,
        or not verifying against tls_ca)?"""
        cdef int r1 = ERR_GET_REASON(ERR_peek_error())
        cdef int r2 = ERR_GET_REASON(ERR_peek_last_error())
        if SSL_get_verify_result(c.ssl) != X509_V_OK:
            return 1
        return (r1 == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
                or r2 == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
                or r1 == SSL_R_CERTIFICATE_VERIFY_FAILED or r2 == SSL_R_CERTIFICATE_VERIFY_FAILED)

    cdef void _tls_event(self, int ci) noexcept nogil:
        """An epoll event of a TLS connection: the handshake's next step until it is done,
        then the reads."""
        cdef conn_t *c = &self.conns[ci]
        cdef int r, err
        if c.hs:
            ERR_clear_error()
            r = SSL_do_handshake(c.ssl)
            if r != 1:
                err = SSL_get_error(c.ssl, r)
                if err == SSL_ERROR_WANT_READ:
                    self._tls_want(ci, 0)
                elif err == SSL_ERROR_WANT_WRITE:
                    self._tls_want(ci, 1)
                else:
                    # Not TLS, a protocol error, a close in the middle, or a certificate.
                    self._close(ci, C_TLS_VERIFY if self._tls_cert_refused(c) else
                                C_TLS_HANDSHAKE)
                return
            c.hs = 0
            c.msg_start = 0
            c.reads = 0
            c.last = self.now
        self._tls_read(ci)

    cdef void _tls_read(self, int ci) noexcept nogil:
        """Decrypt what a TLS connection has and frame it (_frame). Reads until OpenSSL wants
        more from the socket: bytes it already decrypted do not wake epoll again (fairness:
        after READS_PER_EVENT reads, only what it holds is finished, at most a record)."""
        cdef conn_t *c = &self.conns[ci]
        cdef int r, err, k = 0
        while True:
            if c.len == c.cap and self._grow(c, c.cap + 1 if c.cap else CONN_BUF0) != 0:
                self._close(ci, C_ERROR)
                return
            ERR_clear_error()
            errno_clear()
            r = SSL_read(c.ssl, c.buf + c.len, <int>min(c.cap - c.len, 1 << 30))
            if r <= 0:
                err = SSL_get_error(c.ssl, r)
                if err == SSL_ERROR_WANT_READ:
                    self._tls_want(ci, 0)
                elif err == SSL_ERROR_WANT_WRITE:
                    self._tls_want(ci, 1)       # a key update's answer waits for room
                elif err == SSL_ERROR_ZERO_RETURN or (err == SSL_ERROR_SYSCALL and errno == 0
                                                      and ERR_peek_error() == 0):
                    self._close(ci, C_EOF)      # close_notify, or the peer just closed
                else:
                    self._close(ci, C_ERROR)    # reset, a bad record
                return
            if self._frame(ci, r):
                return
            k += 1
            if k >= READS_PER_EVENT and not SSL_has_pending(c.ssl):
                if c.events != (EPOLLIN | EPOLLRDHUP):
                    self._tls_want(ci, 0)
                return

    cdef void _sweep(self, int64_t now) noexcept nogil:
        """Stalled messages (message_timeout) and idle connections (idle_timeout); TLS
        handshakes not done within message_timeout."""
        cdef int i
        cdef conn_t *c
        cdef listener_t *lst
        for i in range(self.conn_hi):
            c = &self.conns[i]
            if c.fd < 0:
                continue
            lst = &self.b.listeners[c.li]
            if c.hs:
                if now - c.msg_start > lst.message_timeout_ns:
                    self._close(i, C_TLS_HANDSHAKE)
            elif c.len and c.msg_start and now - c.msg_start > lst.message_timeout_ns:
                self._close(i, C_STALLED)
            elif now - c.last > lst.idle_timeout_ns:
                self._close(i, C_IDLE)

    def close_connections(self):
        """At stop: close every stream connection (counted as "stop")."""
        cdef int i
        if self.conns == NULL:
            return 0
        n = 0
        for i in range(self.conn_hi):
            if self.conns[i].fd >= 0:
                self._close(i, C_STOP)
                n += 1
        return n

    cdef int _run_epoll(self, int slice_ms) noexcept nogil:
        """The loop with stream listeners: one epoll set over every listener and connection."""
        cdef epoll_event evs[EPOLL_EVENTS]
        cdef int i, n, li, got, total = 0, timeout
        cdef uint64_t tag
        cdef int64_t deadline = now_ns() + <int64_t>slice_ms * 1000000, t
        while True:
            t = now_ns()
            timeout = 0 if slice_ms <= 0 else <int>min(100, max(0, (deadline - t) // 1000000))
            n = epoll_wait(self.epfd, evs, EPOLL_EVENTS, timeout)
            got = 0
            self.now = now_ns()
            for i in range(n if n > 0 else 0):
                tag = evs[i].data.u64
                if tag >= LISTENER_TAG:
                    li = <int>(tag - LISTENER_TAG)
                    if self.is_stream[li]:
                        self._accept(li)
                    else:
                        got += self._udp_batch(li)
                elif self.conns[tag].fd >= 0:
                    if self.conns[tag].ssl == NULL:
                        self._read(<int>tag)
                    else:
                        self._tls_event(<int>tag)
                    got += 1
            total += got
            t = now_ns()
            self.ctr[H_HEARTBEAT] = t
            if t >= self.next_sweep:
                self.next_sweep = t + 200000000
                self._sweep(t)
            if slice_ms <= 0 or t >= deadline:
                break
        return total

    cdef int _udp_batch(self, int li) noexcept nogil:
        cdef int i, n
        for i in range(self.rdirty):
            self.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            self.rmsgs[i].msg_hdr.msg_flags = 0
        self.rdirty = 0
        n = recvmmsg(self.listener_fds[li], self.rmsgs, self.batch, MSG_DONTWAIT, NULL)
        if n <= 0:
            return 0
        self.rdirty = n
        self.ctr[H_BATCHES] += 1
        self._process(li, n)
        self._flush_all()
        return n

    def run(self, int slice_ms=100, int idle_poll_ms=50):
        """Forward until `slice_ms` has passed; returns the number of datagrams handled.
        slice_ms = 0: one non-blocking pass over every listener (the drain uses it)."""
        cdef int i, n, li, got, total = 0
        cdef int flags
        cdef int64_t deadline, t
        if not self.bound:
            raise RuntimeError("bind() a plan first")
        if self.has_stream:
            with nogil:
                total = self._run_epoll(slice_ms)
            return total
        with nogil:
            deadline = now_ns() + <int64_t>slice_ms * 1000000
            while True:
                got = 0
                for li in range(self.nlisteners):
                    # The kernel only rewrites the lengths and flags of the entries it filled.
                    for i in range(self.rdirty):
                        self.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                        self.rmsgs[i].msg_hdr.msg_flags = 0
                    self.rdirty = 0
                    # One listener: block in the kernel until a datagram comes (the socket has
                    # SO_RCVTIMEO, so idle loops still come back); several, or a drain: never
                    # block on one.
                    flags = MSG_WAITFORONE if (self.nlisteners == 1 and slice_ms > 0) \
                        else MSG_DONTWAIT
                    n = recvmmsg(self.listener_fds[li], self.rmsgs, self.batch, flags, NULL)
                    if n <= 0:
                        continue
                    self.rdirty = n
                    got += n
                    self.ctr[H_BATCHES] += 1
                    self._process(li, n)
                    # The arena is reused by the next recvmmsg: send everything queued now.
                    self._flush_all()
                total += got
                t = now_ns()
                self.ctr[H_HEARTBEAT] = t
                if t >= deadline:
                    break
                if got == 0 and self.nlisteners > 1:
                    poll(self.pfds, self.nlisteners, idle_poll_ms)
                elif got == 0 and self.blocking == 0:
                    poll(self.pfds, 1, idle_poll_ms)
        return total

    def discard(self):
        """Read and count what is left in the sockets without forwarding it (the end of a drain
        that ran out of time). Returns the number of datagrams."""
        cdef int li, n, total = 0
        with nogil:
            for li in range(self.nlisteners):
                while True:
                    for n in range(self.batch):
                        self.rmsgs[n].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                    n = recvmmsg(self.listener_fds[li], self.rmsgs, self.batch, MSG_DONTWAIT,
                                 NULL)
                    if n <= 0:
                        break
                    total += n
        self.ctr[H_DRAIN_LEFT] += total
        return total

    def flush(self):
        with nogil:
            self.now = now_ns()
            self._flush_all()
