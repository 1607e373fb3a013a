"""hepfast.tools.synthetic: option parsing, determinism, HEPv2, loop templates of synthetic packets."""
from __future__ import annotations

import pytest

from hepfast.wire import codec
from hepfast.tools import replay
from hepfast.tools import synthetic


def test_options_and_errors():
    o = synthetic.parse_spec("synthetic:calls=5,cps=2.5,ipv6=0.5,capture_id=9,node=n1,version=2")
    assert (o["calls"], o["cps"], o["ipv6"], o["capture_id"], o["node"], o["version"]) == \
        (5, 2.5, 0.5, 9, "n1", 2)
    with pytest.raises(synthetic.SynthError, match="unknown option"):
        synthetic.parse_spec("synthetic:calls=1,colls=2")
    with pytest.raises(synthetic.SynthError, match="version"):
        synthetic.parse_spec("synthetic:version=4")
    with pytest.raises(synthetic.SynthError, match="not a int"):
        synthetic.parse_spec("synthetic:calls=many")


def test_deterministic_and_time_ordered():
    a = synthetic.generate("synthetic:calls=8,seed=3,start=1700000000")
    b = synthetic.generate("synthetic:calls=8,seed=3,start=1700000000")
    assert a == b and len(a) == 8 * 10
    assert [p.ts_ns for p in a] == sorted(p.ts_ns for p in a)
    for p in a:
        d = codec.decode(p.data)
        assert d.timestamp * 10**9 + d.timestamp_us * 1000 == p.ts_ns


def test_version2_is_sip_only_and_decodes():
    pkts = synthetic.generate("synthetic:calls=3,version=2,ipv6=1")
    assert len(pkts) == 21
    for p in pkts:
        d = codec.decode(p.data)
        assert d.version == 2 and d.proto_type == 1 and d.family == 6
        assert d.call_key()


def test_loop_template_marks_every_call_id():
    pkts = synthetic.generate("synthetic:calls=2,rtcp=1,log=1")
    for p in pkts:
        t = codec.decode(replay.loop_template(p.data))
        b = codec.decode(p.data)
        assert t.call_key() == b.call_key() + b"~L000000"
        assert t.proto_type == b.proto_type and t.src_port == b.src_port
