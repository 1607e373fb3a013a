# cython: language_level=3
"""Python-callable access to the compiled rule matcher (ext/plan/matcher.pxd), for tests and tools.

`evaluate(compiled, data, listener)` runs exactly what the data plane runs on one packet (parse,
SIP scan when a rule needs it, rule_match over the rules in order, sampling) and returns the
indices of the rules that take it: the same contract as hepfast.plan.match_rules, which tests
compare it with. Cold path: it binds the tables on every call.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from hepwire cimport hep_pkt, hep_parse, R_OK
from sipscan cimport sip_info, sip_scan_want
from matcher cimport (rule_tables, rules_bind, rule_match, rule_sample_keep, call_key_hash,
                      sample_key, pkt_is_sip, cidr_match, hash64_lower, RF_DROP, RF_CONTINUE,
                      RF_HAS_SAMPLE, glob_match, dest_key, select_field)
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)


cdef const uint8_t *_buf(bytes data):
    return <const uint8_t *><const char *>data


def evaluate(compiled, bytes data not None, uint32_t listener):
    """Indices of the rules that take the HEP message `data` received on listener index
    `listener`. Raises ValueError when the message does not parse (the data plane counts it)."""
    cdef rule_tables t
    cdef hep_pkt p
    cdef sip_info si
    cdef const sip_info *sp = NULL
    cdef const uint8_t *buf = _buf(data)
    cdef uint64_t h = 0
    cdef bint have_key = False
    cdef Py_ssize_t r
    cdef int rc
    rules_bind(&t, compiled)
    rc = hep_parse(buf, len(data), &p)
    if rc != R_OK:
        raise ValueError(f"invalid HEP message (reason {rc})")
    if t.needs_sip and pkt_is_sip(&p):
        if sip_scan_want(buf + p.payload_off, p.payload_len, t.sip_want, &si) == 0:
            sp = &si
    if t.needs_call_key:
        h = sample_key(&p, buf)
        have_key = True
    taken = []
    for r in range(t.nrules):
        if not rule_match(&t, r, &p, buf, listener, sp):
            continue
        taken.append(r)
        if t.flags[r] & RF_DROP:
            break
        if t.flags[r] & RF_HAS_SAMPLE and not rule_sample_keep(&t, r, have_key, h):
            break
        if not t.flags[r] & RF_CONTINUE:
            break
    return taken


def call_hash(bytes data not None):
    """FNV-1a 64 of the message's call key as the data plane computes it, or None."""
    cdef hep_pkt p
    cdef uint64_t h = 0
    cdef const uint8_t *buf = _buf(data)
    if hep_parse(buf, len(data), &p) != R_OK:
        raise ValueError("invalid HEP message")
    if call_key_hash(&p, buf, &h):
        return h
    return None


def sample_hash(bytes data not None):
    """sample_key of a message: the call key's hash, or its flow hash when it has none."""
    cdef hep_pkt p
    cdef const uint8_t *buf = _buf(data)
    if hep_parse(buf, len(data), &p) != R_OK:
        raise ValueError("invalid HEP message")
    return sample_key(&p, buf)


def listener_allows(compiled, Py_ssize_t listener, str sender not None):
    """Whether listener `listener`'s `allow` CIDRs admit a datagram from the sender address
    (empty list: everyone). An IPv4-mapped IPv6 sender (a dual-stack "[::]" socket receiving
    IPv4) counts as IPv4. Twin: hepfast.plan.listener_allows."""
    cdef uint64_t hi, lo
    cdef const uint64_t[:, ::1] rows
    cdef const uint8_t[::1] fam
    import ipaddress
    from hepfast.plan import addr128
    info = compiled.listeners[listener]
    if info.allow.shape[0] == 0:
        return True
    a = ipaddress.ip_address(sender)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    hi, lo = addr128(a.packed)
    rows = info.allow
    fam = info.allow_fam
    return cidr_match(&rows[0, 0], &fam[0], 0, rows.shape[0], hi, lo, a.version)


def fold_hash(bytes data not None):
    """hash64_lower (tests: twin of hepfast.plan.hash_str on folded keys)."""
    return hash64_lower(_buf(data), len(data))


# ---------------------------------------------------------------- issue 14 A

def glob(tokens, bytes value not None, bint fold=False):
    """glob_match over pattern tokens (hepfast.config.values.parse_glob) and a value (tests:
    compared with hepfast.plan.oracle.glob_match)."""
    cdef Py_ssize_t m = len(tokens), i
    import array
    arr = array.array("H", [int(x) for x in tokens] or [0])
    cdef const uint16_t[::1] tv = arr
    for i in range(1, m):
        if tv[i] == tv[i - 1] == 257:
            raise ValueError("two stars in a row: parse_glob collapses them")
    return glob_match(&tv[0], m, _buf(value), len(value), fold)


def field_of(bytes value not None, int sep, int field):
    """select_field: the field's bytes, or None (twin: hepfast.plan.oracle.select_field)."""
    cdef Py_ssize_t fs = 0, fe = 0
    if select_field(_buf(value), len(value), <uint8_t>sep, field, &fs, &fe):
        return value[fs:fe]
    return None


def dest_hash(bytes data not None, int kind, int sep=0, int field=0):
    """dest_key of a message: what a destination with call_key `kind` (constants.CALL_KEY) and
    that split keys its hash mode on (twin: hepfast.plan.oracle.dest_key_hash)."""
    cdef hep_pkt p
    cdef const uint8_t *buf = _buf(data)
    if hep_parse(buf, len(data), &p) != R_OK:
        raise ValueError("invalid HEP message")
    return dest_key(&p, buf, kind, <uint8_t>sep, field)
