# cython: language_level=3
"""The data-plane loop of one worker process: recvmmsg -> parse -> rules -> rewrite -> sendmmsg.

Ownership and invariants:
- A Worker owns its receive arena (`batch` slots of 64 KiB with their mmsghdr/iovec/sockaddr/cmsg
  arrays), a scratch arena for rewritten packets, and one send queue (mmsghdr+iovec) per target.
  All are allocated once, in __cinit__/bind, never per packet.
- An unchanged packet is queued as an iovec pointing into the receive arena; a rewritten or
  converted one is built in the scratch arena. Queues are flushed (sendmmsg per target) before the
  receive arena is reused and whenever the scratch arena or a queue fills, so no iovec outlives
  the bytes it points to.
- `run()` holds the GIL only between batches; per packet it touches C structs alone (no Python
  object, no allocation). It returns to Python every `slice_ms` so the process can see signals,
  reloads and write its heartbeat.
- Counters are the worker's own row of the shared block (layout: hepfast/constants.py), one
  writer.
- Tables (rules, destinations) are swapped by `bind()` between two `run()` calls; the listening
  sockets are not touched, so the kernel queues packets while a reload compiles.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int32_t, int64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy, memcmp
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from hepwire cimport *
from sipscan cimport sip_info, sip_scan
from matcher cimport (
    rule_tables, rules_bind, rule_match, pkt_is_sip, rule_sample_keep, sample_key, cidr_match,
    RF_DROP, RF_CONTINUE, RF_HAS_REWRITE, RF_HAS_SAMPLE,
)

cimport cython

from posix.uio cimport iovec
from netsys cimport (
    mmsghdr, cmsghdr, sockaddr_storage, sockaddr_in, sockaddr_in6, pollfd, socklen_t,
    recvmmsg, sendmmsg, getsockopt, poll, CMSG_FIRSTHDR, CMSG_NXTHDR, CMSG_DATA,
    MSG_DONTWAIT, MSG_WAITFORONE, SOL_SOCKET, SO_RXQ_OVFL, SO_ERROR, AF_INET, AF_INET6, POLLIN,
)

from constants cimport *    # reason codes, modes, counter layout, capacities (generated)
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

DEF CTRL = 64

DEF DOWN_NS = 1000000000


cdef struct target_t:
    int fd
    int slot
    uint64_t seed
    int64_t down_until
    int check_err       # failover targets: read SO_ERROR after each send (see _flush_target)
    unsigned int n
    unsigned int cap
    mmsghdr *msgs
    iovec *iov


cdef struct dest_t:
    int mode
    int version
    int tstart
    int tcount
    uint32_t rr


cdef struct listener_t:
    int fd
    const uint8_t *auth
    Py_ssize_t auth_len
    int has_auth
    const uint64_t *allow      # [n][4]: net_hi, net_lo, mask_hi, mask_lo over v4-mapped v6
    const uint8_t *allow_fam   # [n]: 4 or 6, a row only matches senders of its family
    Py_ssize_t nallow
    uint64_t ovfl_base
    uint32_t ovfl_seen


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


cdef class Worker:
    """One data-plane loop over a set of listener sockets (fds owned by the caller)."""

    cdef int batch
    cdef int nlisteners
    cdef listener_t listeners[MAX_LISTENERS]
    cdef pollfd pfds[MAX_LISTENERS]
    cdef uint8_t *arena
    cdef mmsghdr *rmsgs
    cdef iovec *riov
    cdef sockaddr_storage *raddr
    cdef uint8_t *rctrl
    cdef uint8_t *scratch
    cdef Py_ssize_t scratch_cap
    cdef Py_ssize_t scratch_pos
    cdef int rdirty             # receive headers the last recvmmsg filled
    cdef int64_t now            # clock of the batch being processed
    cdef uint64_t *ctr
    cdef object _row            # keeps the counter row alive
    cdef object _tables         # keeps the numpy tables alive while bound
    cdef object _listener_refs
    # bound tables
    cdef rule_tables rt
    cdef Py_ssize_t nrules
    cdef const int32_t *rule_slot
    cdef int default_dest
    cdef dest_t *dests
    cdef int ndests
    cdef target_t *targets
    cdef int ntargets
    cdef public int bound
    cdef public int blocking    # single listener socket in blocking mode with SO_RCVTIMEO

    def __cinit__(self, listener_fds, int batch):
        cdef int i
        if not 1 <= len(listener_fds) <= MAX_LISTENERS:
            raise ValueError(f"a worker serves 1..{MAX_LISTENERS} listeners")
        if not 1 <= batch <= 1024:
            raise ValueError("batch must be 1..1024")
        self.batch = batch
        self.nlisteners = len(listener_fds)
        memset(self.listeners, 0, sizeof(self.listeners))
        for i, fd in enumerate(listener_fds):
            self.listeners[i].fd = fd
            self.pfds[i].fd = fd
            self.pfds[i].events = POLLIN
        self.arena = <uint8_t *>malloc(<size_t>batch * SLOT_BYTES)
        self.rmsgs = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        self.riov = <iovec *>calloc(batch, sizeof(iovec))
        self.raddr = <sockaddr_storage *>calloc(batch, sizeof(sockaddr_storage))
        self.rctrl = <uint8_t *>calloc(batch, CTRL)
        # Room for a full batch of maximal rewrites plus conversions; flushed when it runs low.
        self.scratch_cap = 4 * SLOT_BYTES + <Py_ssize_t>batch * 2048
        self.scratch = <uint8_t *>malloc(self.scratch_cap)
        if not (self.arena and self.rmsgs and self.riov and self.raddr and self.rctrl
                and self.scratch):
            raise MemoryError()
        # Receive headers point at fixed slots for the worker's life; run() only resets the
        # fields the kernel changed.
        for i in range(batch):
            self.riov[i].iov_base = self.arena + <Py_ssize_t>i * SLOT_BYTES
            self.riov[i].iov_len = SLOT_BYTES
            self.rmsgs[i].msg_hdr.msg_iov = &self.riov[i]
            self.rmsgs[i].msg_hdr.msg_iovlen = 1
            self.rmsgs[i].msg_hdr.msg_name = &self.raddr[i]
            self.rmsgs[i].msg_hdr.msg_control = self.rctrl + i * CTRL
        self.rdirty = batch
        self.bound = 0

    def __dealloc__(self):
        self._free_targets()
        free(self.arena)
        free(self.rmsgs)
        free(self.riov)
        free(self.raddr)
        free(self.rctrl)
        free(self.scratch)
        free(self.dests)

    cdef void _free_targets(self):
        cdef int i
        if self.targets != NULL:
            for i in range(self.ntargets):
                free(self.targets[i].msgs)
                free(self.targets[i].iov)
            free(self.targets)
            self.targets = NULL
        self.ntargets = 0

    def set_counters(self, row):
        """The worker's row of the shared counter block (uint64, STRIDE words)."""
        cdef uint64_t[::1] mv = row
        if mv.shape[0] != STRIDE:
            raise ValueError(f"counter row must have {STRIDE} words")
        self._row = row
        self.ctr = &mv[0]

    def bind(self, tables):
        """Swap in compiled tables (hepfast.dataplane.worker.BoundTables), between run() calls."""
        cdef int i, j, k
        cdef const int32_t[::1] rs = tables.rule_slot
        cdef rule_tables rt
        cdef const uint64_t[:, ::1] allow
        cdef const uint8_t[::1] allow_fam
        cdef const uint8_t[::1] auth
        cdef dest_t *dests
        cdef target_t *targets
        if self.ctr == NULL:
            raise RuntimeError("set_counters() first")
        rules_bind(&rt, tables.compiled)
        nrules = rt.nrules
        if rs.shape[0] != nrules:
            raise ValueError("rule slots disagree with the number of rules")
        # Destinations and their targets (sockets created and owned by the caller).
        ndests = len(tables.dest_modes)
        ntargets = len(tables.target_fds)
        dests = <dest_t *>calloc(max(ndests, 1), sizeof(dest_t))
        targets = <target_t *>calloc(max(ntargets, 1), sizeof(target_t))
        if dests == NULL or targets == NULL:
            free(dests)
            free(targets)
            raise MemoryError()
        for i in range(ndests):
            dests[i].mode = tables.dest_modes[i]
            dests[i].version = tables.dest_versions[i]
            dests[i].tstart = tables.dest_tstart[i]
            dests[i].tcount = tables.dest_tcount[i]
            if dests[i].mode == M_FAILOVER:
                for j in range(dests[i].tstart, dests[i].tstart + dests[i].tcount):
                    if 0 <= j < ntargets:
                        targets[j].check_err = 1
            if dests[i].tcount < 1 or dests[i].tstart + dests[i].tcount > ntargets:
                free(dests)
                free(targets)
                raise ValueError(f"destination {i} has a bad target range")
        for i in range(ntargets):
            targets[i].fd = tables.target_fds[i]
            targets[i].slot = tables.target_slots[i]
            targets[i].seed = tables.target_seeds[i]
            targets[i].cap = 2 * self.batch
            targets[i].msgs = <mmsghdr *>calloc(targets[i].cap, sizeof(mmsghdr))
            targets[i].iov = <iovec *>calloc(targets[i].cap, sizeof(iovec))
            if targets[i].msgs == NULL or targets[i].iov == NULL:
                for j in range(i + 1):
                    free(targets[j].msgs)
                    free(targets[j].iov)
                free(dests)
                free(targets)
                raise MemoryError()
            for k in range(targets[i].cap):
                targets[i].msgs[k].msg_hdr.msg_iov = &targets[i].iov[k]
                targets[i].msgs[k].msg_hdr.msg_iovlen = 1
        for j in range(len(tables.compiled.fwd)):
            if not 0 <= tables.compiled.fwd[j] < ndests:
                raise ValueError("forward table names an unknown destination")
        if not -1 <= rt.default_dest < ndests:
            raise ValueError("default destination out of range")
        # Listener checks.
        refs = []
        for i in range(self.nlisteners):
            lt = tables.listeners[i]
            self.listeners[i].has_auth = 1 if lt.auth_key else 0
            if lt.auth_key:
                auth = lt.auth_key
                refs.append(lt.auth_key)
                self.listeners[i].auth = &auth[0]
                self.listeners[i].auth_len = auth.shape[0]
            else:
                self.listeners[i].auth = NULL
                self.listeners[i].auth_len = 0
            allow = lt.allow
            allow_fam = lt.allow_fam
            if allow_fam.shape[0] != allow.shape[0]:
                raise ValueError("listener allow rows and families disagree")
            refs.append(lt.allow)
            refs.append(lt.allow_fam)
            self.listeners[i].nallow = allow.shape[0]
            self.listeners[i].allow = &allow[0, 0] if allow.shape[0] else NULL
            self.listeners[i].allow_fam = &allow_fam[0] if allow.shape[0] else NULL
        # Commit: nothing below can fail.
        self._free_targets()
        free(self.dests)
        self.dests = dests
        self.ndests = ndests
        self.targets = targets
        self.ntargets = ntargets
        self.rt = rt
        self.default_dest = rt.default_dest
        self.nrules = nrules
        self.rule_slot = &rs[0] if nrules else NULL
        self._tables = tables
        self._listener_refs = refs
        self.bound = 1

    def set_overflow_base(self, int listener, uint64_t base):
        self.listeners[listener].ovfl_base = base

    # ------------------------------------------------------------------ hot path

    cdef inline void _count_drop(self, int reason, uint64_t n) noexcept nogil:
        self.ctr[OFF_DROP + reason] += n

    cdef void _flush_target(self, target_t *t, int64_t now) noexcept nogil:
        cdef unsigned int sent = 0
        cdef int r, err, refused = 0, soerr = 0
        cdef socklen_t optlen
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
                self._count_drop(D_QUEUE_FULL, t.n - sent)
                break
            # An ICMP error (connection refused, unreachable) reported for an earlier packet, or
            # a hard error for this one: count it, mark the target down for failover, retry the
            # packet once, then give it up.
            self.ctr[OFF_SEND_ERR + t.slot] += 1
            self.ctr[OFF_LAST_ERR + t.slot] = now
            t.down_until = now + DOWN_NS
            if refused:
                self._count_drop(D_SEND_ERROR, 1)
                sent += 1
                refused = 0
            else:
                refused = 1
        if t.check_err and sent:
            # sendmmsg reports an ICMP error only if it is pending before the first message of
            # the call, so errors caused inside a batch would wait for the next one; failover
            # needs to know now. One getsockopt per batch, for failover targets only.
            optlen = sizeof(int)
            if getsockopt(t.fd, SOL_SOCKET, SO_ERROR, &soerr, &optlen) == 0 and soerr != 0:
                self.ctr[OFF_SEND_ERR + t.slot] += 1
                self.ctr[OFF_LAST_ERR + t.slot] = now
                t.down_until = now + DOWN_NS
        t.n = 0

    cdef void _flush_all(self) noexcept nogil:
        cdef int i
        cdef int64_t now = self.now
        for i in range(self.ntargets):
            if self.targets[i].n:
                self._flush_target(&self.targets[i], now)
        self.scratch_pos = 0

    cdef inline void _queue(self, int ti, const uint8_t *data, Py_ssize_t n) noexcept nogil:
        cdef target_t *t = &self.targets[ti]
        if t.n >= t.cap:
            self._flush_target(t, now_ns())
        t.iov[t.n].iov_base = <void *>data
        t.iov[t.n].iov_len = n
        t.n += 1
        self.ctr[H_COPIES] += 1

    cdef inline uint64_t _call_key(self, const uint8_t *buf, hep_pkt *p) noexcept nogil:
        # The call key's hash, or the flow's for packets without one (same as sampling).
        return sample_key(p, buf)

    @cython.cdivision(True)     # tcount >= 1: bind() refuses a destination without targets
    cdef inline int _pick(self, dest_t *d, uint64_t key, int64_t now) noexcept nogil:
        cdef int i, best = d.tstart
        cdef uint64_t w, bw = 0
        if d.tcount == 1:
            return d.tstart
        if d.mode == M_HASH:
            for i in range(d.tstart, d.tstart + d.tcount):
                w = hep_mix64(key ^ self.targets[i].seed)
                if i == d.tstart or w > bw:
                    best = i
                    bw = w
            return best
        if d.mode == M_ROUNDROBIN:
            d.rr += 1
            return d.tstart + <int>(d.rr % <uint32_t>d.tcount)
        # failover: the first target not marked down, else the first.
        for i in range(d.tstart, d.tstart + d.tcount):
            if self.targets[i].down_until <= now:
                return i
        return d.tstart

    cdef inline Py_ssize_t _build(self, const uint8_t *buf, hep_pkt *p, Py_ssize_t r,
                                  int version, const uint8_t **out) noexcept nogil:
        """Build the packet for rule r (-1: the default route) in `version` into scratch."""
        cdef Py_ssize_t n, n2, cap
        cdef uint8_t *dst
        cdef hep_pkt p2
        cdef int rewrite = r >= 0 and (self.rt.flags[r] & RF_HAS_REWRITE)
        if self.scratch_cap - self.scratch_pos < 2 * SLOT_BYTES:
            self._flush_all()
        dst = self.scratch + self.scratch_pos
        cap = self.scratch_cap - self.scratch_pos
        if not rewrite:
            if version == p.version or (version == 3 and p.version == 3):
                out[0] = buf
                return p.total
            if version == 2:
                n = hep_build_v2(buf, p, dst, cap)
            else:
                n = hep_build_v3(buf, p, NULL, 0, NULL, 0, dst, cap)
        else:
            n = hep_build_v3(buf, p,
                             self.rt.set_blob + self.rt.set_off[r] if self.rt.set_len[r] else NULL,
                             self.rt.set_len[r],
                             self.rt.skip + self.rt.skip_start[r] if self.rt.skip_count[r]
                             else NULL,
                             self.rt.skip_count[r], dst, cap)
            if n > 0 and version == 2:
                hep_parse(dst, n, &p2)
                n2 = hep_build_v2(dst, &p2, dst + n, cap - n)
                if n2 < 0:
                    return -1
                out[0] = dst + n
                self.scratch_pos += n + n2
                return n2
        if n < 0:
            return -1
        out[0] = dst
        self.scratch_pos += n
        return n

    cdef void _forward(self, const uint8_t *buf, hep_pkt *p, Py_ssize_t r, int di,
                       uint64_t *key, int *have_key, int64_t now,
                       const uint8_t **built, Py_ssize_t *built_len) noexcept nogil:
        """Queue the packet for destination di as rule r wants it. built[v-2]: per-version cache
        of the packet already built for this rule."""
        cdef dest_t *d = &self.dests[di]
        cdef int i, vi = 0 if d.version == 2 else 1
        cdef const uint8_t *data
        cdef Py_ssize_t n
        cdef Py_ssize_t before = self.scratch_pos
        if built_len[vi] == 0:
            built_len[vi] = self._build(buf, p, r, d.version, &built[vi])
            if self.scratch_pos < before:
                built_len[1 - vi] = 0    # the scratch arena was flushed and reused
        if built_len[vi] < 0:
            self._count_drop(D_SEND_ERROR, 1)    # cannot be expressed (v2 without family, size)
            return
        data = built[vi]
        n = built_len[vi]
        if d.mode == M_ALL:
            for i in range(d.tstart, d.tstart + d.tcount):
                self._queue(i, data, n)
            return
        if d.mode == M_HASH and d.tcount > 1 and not have_key[0]:
            # Only a choice between targets needs the call key (it may scan the SIP headers).
            key[0] = self._call_key(buf, p)
            have_key[0] = 1
        self._queue(self._pick(d, key[0], now), data, n)

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

    cdef void _process(self, int li, int nmsg) noexcept nogil:
        cdef int i, rc, forwarded
        cdef Py_ssize_t r, j
        cdef const uint8_t *buf
        cdef hep_pkt p
        cdef listener_t *lst = &self.listeners[li]
        cdef uint64_t key = 0
        cdef int have_key
        cdef int64_t now = now_ns()
        cdef const uint8_t *built[2]
        cdef Py_ssize_t built_len[2]
        cdef uint32_t flags
        cdef cmsghdr *cm
        cdef sip_info si
        cdef const sip_info *sip
        self.now = now
        self.ctr[H_DATAGRAMS] += nmsg
        for i in range(nmsg):
            buf = self.arena + <Py_ssize_t>i * SLOT_BYTES
            # Kernel drop counter (SO_RXQ_OVFL) rides on each datagram: keep the latest.
            cm = CMSG_FIRSTHDR(&self.rmsgs[i].msg_hdr)
            while cm != NULL:
                if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SO_RXQ_OVFL:
                    memcpy(&lst.ovfl_seen, CMSG_DATA(cm), 4)
                cm = CMSG_NXTHDR(&self.rmsgs[i].msg_hdr, cm)
            rc = hep_parse(buf, self.rmsgs[i].msg_len, &p)
            if rc == R_OK and lst.has_auth and (
                    p.auth_len != lst.auth_len
                    or not (p.present & ((<uint64_t>1) << CH_AUTH))
                    or memcmp(buf + p.auth_off, lst.auth, lst.auth_len) != 0):
                rc = R_AUTH
            if rc == R_OK and not self._allowed(lst, &self.raddr[i]):
                rc = R_ACL
            if rc != R_OK:
                self.ctr[OFF_INVALID + li * N_INVALID + rc] += 1
                continue
            self.ctr[OFF_RECEIVED + li * 256 + p.proto_type] += 1
            have_key = 0
            forwarded = 0
            sip = NULL
            if self.rt.needs_sip and pkt_is_sip(&p):
                if sip_scan(buf + p.payload_off, p.payload_len, &si) == 0:
                    sip = &si
            r = 0
            while r < self.nrules:
                if not rule_match(&self.rt, r, &p, buf, li, sip):
                    r += 1
                    continue
                flags = self.rt.flags[r]
                self.ctr[OFF_RULE + self.rule_slot[r]] += 1
                if flags & RF_HAS_SAMPLE:
                    if not have_key:
                        key = self._call_key(buf, &p)
                        have_key = 1
                    if not rule_sample_keep(&self.rt, r, True, key):
                        if not forwarded:
                            self._count_drop(D_SAMPLE, 1)
                            forwarded = -1
                        break
                if flags & RF_DROP:
                    if not forwarded:
                        self._count_drop(D_RULE, 1)
                        forwarded = -1
                    break
                built_len[0] = 0
                built_len[1] = 0
                for j in range(self.rt.fwd_start[r], self.rt.fwd_start[r] + self.rt.fwd_count[r]):
                    self._forward(buf, &p, r, self.rt.fwd[j], &key, &have_key, now,
                                  built, built_len)
                forwarded = 1
                if not (flags & RF_CONTINUE):
                    break
                r += 1
            if forwarded == 0:
                if self.default_dest >= 0:
                    built_len[0] = 0
                    built_len[1] = 0
                    self._forward(buf, &p, -1, self.default_dest, &key, &have_key, now,
                                  built, built_len)
                    forwarded = 1
                else:
                    self._count_drop(D_NO_ROUTE, 1)
            if forwarded == 1:
                self.ctr[H_ROUTED] += 1
        self.ctr[OFF_OVERFLOW + li] = lst.ovfl_base + lst.ovfl_seen

    def run(self, int slice_ms=100, int idle_poll_ms=50):
        """Forward until `slice_ms` has passed; returns the number of datagrams handled."""
        cdef int i, n, li, got, total = 0
        cdef int64_t deadline, t
        if not self.bound:
            raise RuntimeError("bind() tables first")
        with nogil:
            deadline = now_ns() + <int64_t>slice_ms * 1000000
            while True:
                got = 0
                for li in range(self.nlisteners):
                    # The kernel only rewrites the lengths and flags of the entries it filled.
                    for i in range(self.rdirty):
                        self.rmsgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                        self.rmsgs[i].msg_hdr.msg_controllen = CTRL
                        self.rmsgs[i].msg_hdr.msg_flags = 0
                    self.rdirty = 0
                    # One listener: block in the kernel until a datagram comes (the socket has
                    # SO_RCVTIMEO, so idle loops still come back); several: never block on one.
                    n = recvmmsg(self.listeners[li].fd, self.rmsgs, self.batch,
                                 MSG_WAITFORONE if self.nlisteners == 1 else MSG_DONTWAIT, NULL)
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

    def flush(self):
        with nogil:
            self.now = now_ns()
            self._flush_all()
