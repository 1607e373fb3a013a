"""The fuzz harness (fuzz/targets.py, fuzz/run.py), bounded: every target runs on its seeds (the
shared corpus when present, plus the hand-made shapes) and on a few hundred deterministic random
and mutated inputs without a disagreement; a planted disagreement is caught by the target
functions and, through atheris, fails the runner and keeps the input. Without atheris only the
atheris-driven tests skip; the target functions run directly either way."""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fuzz import targets
from fuzz.targets import TARGETS, Disagreement, corpus_packets

ROOT = Path(__file__).resolve().parents[1]
REAL = [n for n in TARGETS if not n.startswith("_")]

try:
    import atheris  # noqa: F401
    HAVE_ATHERIS = True
except ImportError:
    HAVE_ATHERIS = False
# Under `make asan` (gcc's libasan preloaded) atheris' libFuzzer loses its coverage symbols to
# libasan and cannot run; `make fuzz` runs it under its own runtime instead.
UNDER_ASAN = bool(os.environ.get("HEPFAST_SANITIZED"))
needs_atheris = pytest.mark.skipif(
    not HAVE_ATHERIS or UNDER_ASAN,
    reason="atheris-driven runs skipped: " + (
        "under make asan atheris needs its own runtime (make fuzz runs it)" if UNDER_ASAN else
        "atheris not installed (sh scripts/ensure-fuzz-deps.sh)") + "; the target functions "
    "are still tested")


def _inputs(seeds: list[bytes], n: int, rnd: random.Random) -> list[bytes]:
    out = []
    for i in range(n):
        if i % 4 == 0 or not seeds:
            out.append(rnd.randbytes(rnd.randrange(0, 200)))
            continue
        b = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 6)):
            op = rnd.randrange(4)
            pos = rnd.randrange(len(b) + 1)
            if op == 0 and b:
                b[min(pos, len(b) - 1)] = rnd.randrange(256)
            elif op == 1:
                del b[pos:pos + rnd.randrange(1, 16)]
            elif op == 2:
                b[pos:pos] = rnd.randbytes(rnd.randrange(1, 8))
            elif len(b) >= pos + 2:              # a lying length field somewhere
                b[pos:pos + 2] = rnd.randrange(65536).to_bytes(2, "big")
        out.append(bytes(b))
    return out


def test_the_targets_of_the_issue_are_registered():
    assert {"codec", "sip", "matcher", "inflate"} <= set(REAL)
    for t in TARGETS.values():
        assert t.doc and t.max_len > 0 and callable(t.fn)


@pytest.mark.parametrize("name", REAL)
def test_target_passes_its_seeds_and_random_inputs(name):
    t = TARGETS[name]
    corpus = corpus_packets()
    seeds = list(t.seeds(corpus))
    assert len(seeds) >= 5                       # the hand-made shapes at least
    if corpus:
        assert len(seeds) > len(corpus) // 2     # and the corpus when it is there
    for s in seeds:
        t.fn(s)
    for data in _inputs(seeds, 400, random.Random(f"fuzz-{name}")):
        t.fn(data)


def test_codec_seeds_cover_every_version_and_the_cap():
    from hepfast.wire import pycodec

    seeds = targets.packet_seeds(corpus_packets())
    versions = {pycodec.decode(s).version for s in seeds if pycodec.reason(s) == 0}
    reasons = {pycodec.reason(s, max_chunks=16) for s in seeds}
    assert 3 in versions
    if corpus_packets():
        assert {1, 2} <= versions
    assert pycodec.CHUNKS in reasons and pycodec.LENGTH in reasons


def _skewed(m: SimpleNamespace, **over) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(m), **over})


def test_targets_catch_a_planted_disagreement(monkeypatch):
    """Each target compares what it claims to: a pure twin that answers differently on one input
    is reported as a Disagreement (so a passing run means something)."""
    real = targets._impls()
    pkt = targets.packet_seeds([])[0]
    payload = real.P.decode(pkt).payload

    wrong_reason = _skewed(real, P=SimpleNamespace(**{**vars(real.P),
                                                     "reason": lambda d, max_chunks=512: 4}))
    monkeypatch.setattr(targets, "_impls", lambda: wrong_reason)
    with pytest.raises(Disagreement, match="reason"):
        targets.codec(pkt)

    def lying_fields(data):
        f = real.sip.sip_fields(data)
        return {**f, "sip_method": "BYE"}
    wrong_sip = _skewed(real, sip=SimpleNamespace(**{**vars(real.sip),
                                                    "sip_fields": lying_fields}))
    monkeypatch.setattr(targets, "_impls", lambda: wrong_sip)
    with pytest.raises(Disagreement, match="sip_scan"):
        targets.sip(payload)

    wrong_rules = _skewed(real, match_rules=lambda c, p, li, sip=None: [99])
    monkeypatch.setattr(targets, "_impls", lambda: wrong_rules)
    with pytest.raises(Disagreement, match="rule set"):
        targets.matcher(pkt)


def test_selftest_target_fails_on_its_planted_input():
    TARGETS["_selftest"].fn(b"fine")
    with pytest.raises(Disagreement):
        TARGETS["_selftest"].fn(b"FAIL")


def _run(*args, env_extra=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _summary(out: str) -> list[dict]:
    return json.loads(out.strip().splitlines()[-1])["fuzz"]


@needs_atheris
def test_runner_fuzzes_a_target_and_reports_inputs(tmp_path):
    r = _run("--build", "plain", "--seconds", "3", "--targets", "sip",
             env_extra={"FUZZ_ARTIFACTS": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    (res,) = _summary(r.stdout)
    assert res["target"] == "sip" and res["findings"] == [] and res["exit"] == 0
    # libFuzzer runs every seed before it mutates: a count below that means it did not fuzz.
    nseeds = int(re.search(r"sip: (\d+) seeds", r.stdout).group(1))
    assert nseeds >= 2 and res["inputs"] >= nseeds
    assert not list(tmp_path.glob("sip-crash-*"))


@needs_atheris
def test_runner_fails_on_a_finding_and_keeps_the_reproducer(tmp_path):
    r = _run("--build", "plain", "--seconds", "10", "--targets", "_selftest",
             env_extra={"FUZZ_ARTIFACTS": str(tmp_path)})
    assert r.returncode == 1, r.stdout + r.stderr
    (res,) = _summary(r.stdout)
    kept = list(tmp_path.glob("_selftest-crash-*"))
    assert len(kept) == 1 and res["findings"] == [str(kept[0])]
    assert kept[0].read_bytes().startswith(b"FAIL")
    assert "planted disagreement" in r.stdout
    rep = _run("--repro", str(kept[0]), "--build", "plain")
    assert rep.returncode != 0 and "planted disagreement" in rep.stderr
