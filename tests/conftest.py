"""Shared test fixtures: the real-traffic corpus and the codec implementations.

The corpus lives next to the repository (../shared/corpus); tests that need it skip with a clear
reason only when that folder is absent. Loaded corpus files are cached for the session.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
CORPUS_MISSING = f"real-traffic corpus not found at {CORPUS_DIR} (expected ../shared/corpus)"


def corpus_names() -> list[str]:
    """Stems of the corpus captures that have a .hepraw and an .expected.jsonl companion."""
    if not CORPUS_DIR.is_dir():
        return []
    return sorted(p.stem for p in CORPUS_DIR.glob("*.hepraw")
                  if (CORPUS_DIR / f"{p.stem}.expected.jsonl").exists())


@functools.lru_cache(maxsize=None)
def load_corpus(name: str) -> tuple[tuple[bytes, dict], ...]:
    """(HEP message bytes, expected tshark object) for every message of corpus capture `name`."""
    from hepfast.tools.capture import read_hepraw

    packets = list(read_hepraw(CORPUS_DIR / f"{name}.hepraw"))
    with open(CORPUS_DIR / f"{name}.expected.jsonl") as f:
        expected = [json.loads(line) for line in f if line.strip()]
    assert len(packets) == len(expected), f"{name}: .hepraw and .expected.jsonl disagree"
    for i, e in enumerate(expected):
        assert e["idx"] == i
    return tuple(zip(packets, expected, strict=True))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """Path of ../shared/corpus; skips the test when it is absent."""
    if not CORPUS_DIR.is_dir():
        pytest.skip(CORPUS_MISSING)
    return CORPUS_DIR


@pytest.fixture(params=corpus_names() or ["<no corpus>"])
def corpus_name(request, corpus_dir) -> str:
    """Each corpus capture by name (NAME.pcap, NAME.hepraw, NAME.expected.jsonl in corpus_dir)."""
    return request.param


@pytest.fixture
def corpus_loader(corpus_dir):
    """load_corpus, once the corpus is known to exist: corpus_loader(name) -> pairs."""
    return load_corpus


@pytest.fixture
def corpus_packets(corpus_name) -> tuple[tuple[bytes, dict], ...]:
    """load_corpus(corpus_name): (message, expected object) pairs."""
    return load_corpus(corpus_name)


@pytest.fixture(params=["compiled", "pure"])
def codec_impl(request):
    """hepfast.wire.codec.get_impl(name) for both codecs. The compiled one is required: its import
    error fails the test (no silent fallback) unless HEPFAST_PURE=1 says it is not built."""
    from hepfast.wire import codec

    if request.param == "compiled" and os.environ.get("HEPFAST_PURE") == "1":
        try:
            return codec.get_impl("compiled")
        except ImportError:
            pytest.skip("compiled codec not built and HEPFAST_PURE=1")
    return codec.get_impl(request.param)


@pytest.fixture
def sinks():
    """sinks(n): n started `hepfast sink` receivers on 127.0.0.1 (closed after the test)."""
    from hepfast.tools.sink import Sink

    made = []

    def make(n):
        for _ in range(n):
            made.append(Sink("127.0.0.1:0").start(timeout=120))
        return made[-n:]

    yield make
    for s in made:
        s.close()
