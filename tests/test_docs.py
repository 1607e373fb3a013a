"""The project's docs/ against the code: every TOML block passes `hepfast check`, the
configuration reference names every key with its real default, the metrics reference names every
metric and label the collector exports, and the OpenSIPS migration example routes the corpus the
way the page says."""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import msgspec
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from hepfast.config import schema

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))

# Fragments (blocks without [[listeners]]) are checked inside this minimal config, their tables
# replacing or extending it.
BASE = {
    "listeners": [{"name": "agents", "listen": "127.0.0.1:9060"}],
    "destinations": {"homer": {"targets": ["127.0.0.1:9161"]}},
    "rules": [{"name": "all", "forward": ["homer"]}],
}
ENV = {"HEPFAST_NODE_NAME": "edge-test", "HEPFAST_ADMIN_TOKEN": "docs-test-token"}


def toml_blocks() -> list[tuple[str, int, str]]:
    out = []
    for f in DOC_FILES:
        lines = f.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == "```toml":
                j = i + 1
                while lines[j].strip() != "```":
                    j += 1
                out.append((f.name, i + 1, "\n".join(lines[i + 1:j]) + "\n"))
                i = j
            i += 1
    return out


def _merge(base: dict, block: dict) -> dict:
    out = dict(base)
    for k, v in block.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _toml(d: dict) -> str:
    """A dict back to TOML (the subset the docs use: tables, arrays of tables, scalars, lists)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return msgspec.json.encode(v).decode()
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{msgspec.json.encode(k).decode()} = {val(x)}"
                                   for k, x in v.items()) + "}"
        raise TypeError(v)
    lines = []
    for k, v in d.items():
        if isinstance(v, dict) and k == "destinations":
            for name, body in v.items():
                lines.append(f"[destinations.{msgspec.json.encode(name).decode()}]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in body.items()]
        elif isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{msgspec.json.encode(kk).decode()} = {val(vv)}"
                          for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


def run_check(path: Path, capsys) -> tuple[int, str, str]:
    from hepfast.commands import check

    rc = check.main(argparse.Namespace(config=str(path)))
    out, err = capsys.readouterr()
    return rc, out, err


BLOCKS = toml_blocks()


def test_docs_exist_and_have_blocks():
    names = {f.name for f in DOC_FILES}
    assert {"configuration.md", "metrics.md", "operations.md", "opensips-migration.md"} <= names
    assert len([b for b in BLOCKS if b[0] == "configuration.md"]) >= 6
    assert any(b[0] == "opensips-migration.md" for b in BLOCKS)


@pytest.mark.parametrize("doc,line,text", BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_every_toml_block_passes_check(doc, line, text, tmp_path, capsys, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    raw = tomllib.loads(text)                        # valid TOML first of all
    if "listeners" not in raw:
        text = _toml(_merge(BASE, raw))
    cfg = tmp_path / "block.toml"
    cfg.write_text(text)
    rc, out, err = run_check(cfg, capsys)
    assert rc == 0, f"{doc}:{line}: {err}"
    if "listeners" in raw and doc != "security.md":
        assert "warning" not in err, f"{doc}:{line}: {err}"     # examples that make sense


# ------------------------------------------------------------------ configuration reference

SECTIONS = {
    "## `[switch]`": schema.Switch,
    "## `[admin]`": schema.Admin,
    "## `[[listeners]]`": schema.Listener,
    "## `[destinations.NAME]`": schema.Destination,
    "## `[[rules]]`": schema.Rule,
}


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0]: p for p in parts if p.startswith("## ")}


def _default_text(f) -> str | None:
    """How the default of a field reads in the reference, for simple scalar defaults."""
    d = f.default
    if not isinstance(d, (bool, int, float, str)):
        return None                 # required, None, containers, structs
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, str):
        return f'"{d}"'
    return repr(d)


def test_configuration_reference_covers_every_key_and_default():
    text = (DOCS / "configuration.md").read_text()
    sections = _sections(text)
    for heading, struct in SECTIONS.items():
        body = next((b for h, b in sections.items() if h.startswith(heading)), None)
        assert body is not None, heading
        for f in msgspec.structs.fields(struct):
            name = f.encode_name
            if struct is schema.Rule and name in ("match", "set"):
                name = f"{name}.KEY" if name == "match" else "set.CHUNK"
            rows = [ln for ln in body.splitlines() if ln.startswith(f"| `{name}` |")]
            assert len(rows) == 1, f"{heading}: no row for `{name}`"
            want = _default_text(f)
            if want is not None:
                cells = [c.strip() for c in rows[0].split("|")]
                assert any(f"`{want}`" in c for c in cells), f"{heading} {name}: default {want}"
    match = sections[next(h for h in sections if h.startswith("## `[[rules]]`"))]
    for key in schema.MATCH_KEYS:
        assert re.search(rf"\| [^|]*`{key}`", match), f"match key {key}"
    from hepfast.wire.chunks import ALIASES, GENERIC, PROTO_TYPES

    for name in list(GENERIC) + list(ALIASES):
        assert f"`{name}`" in match, f"chunk name {name}"
    for name, n in PROTO_TYPES.items():
        assert f"{name} {n}" in match, f"proto type {name}"


def test_configuration_reference_names_the_environment_overrides():
    text = (DOCS / "configuration.md").read_text()
    from hepfast.config import env

    for var in (env.ENV_CONFIG, env.ENV_ADMIN_TOKEN, env.ENV_NODE_NAME):
        assert f"| `{var}` |" in text, var


def test_bundled_config_points_at_the_reference():
    text = (ROOT / "hepfast" / "config" / "default.toml").read_text()
    assert "docs/configuration.md" in text and "design.md" not in text


def test_readme_points_at_the_project_docs():
    text = (ROOT / "README.md").read_text()
    assert "shared/docs" not in text
    for page in ("configuration.md", "metrics.md", "operations.md", "opensips-migration.md"):
        assert f"docs/{page}" in text, page


# ------------------------------------------------------------------ metrics reference

def exported_metrics() -> dict[str, list[str]]:
    """{exposed name: labels} of every family the collector builds (counters get _total)."""
    src = (ROOT / "hepfast" / "observe" / "metrics.py").read_text()
    out = {}
    for node in ast.walk(ast.parse(src)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("CounterMetricFamily", "GaugeMetricFamily")):
            continue
        first = node.args[0] if node.args else None
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue                                # the egress families, below
        labels = []
        for kw in node.keywords:
            if kw.arg == "labels":
                labels = [e.value for e in kw.value.elts]
        suffix = "_total" if node.func.id == "CounterMetricFamily" else ""
        out[first.value + suffix] = labels
    # Egress store metrics: hepfast_egress_<key> per key of each store's metrics(), except the
    # spool's: hepfast_<key> (metrics._egress_family).
    for f in (ROOT / "hepfast" / "egress").glob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "metrics":
                for d in ast.walk(node):
                    if isinstance(d, ast.Dict):
                        for k in d.keys:
                            if isinstance(k, ast.Constant) and k.value != "up":
                                prefix = "hepfast_" if k.value.startswith("spool_") else \
                                    "hepfast_egress_"
                                out[f"{prefix}{k.value}"] = ["destination"]
    return out


def test_metrics_reference_covers_every_metric_and_label():
    text = (DOCS / "metrics.md").read_text()
    metrics = exported_metrics()
    assert len(metrics) >= 20 and "hepfast_packets_received_total" in metrics
    for name, labels in metrics.items():
        rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"no row for {name}"
        for label in labels:
            assert f"`{label}`" in rows[0], f"{name}: label {label}"
    from hepfast.constants import CONN_CLOSE_NAMES, DROP_NAMES, INVALID_NAMES

    for reason in INVALID_NAMES[1:] + DROP_NAMES + CONN_CLOSE_NAMES:
        assert f"`{reason}`" in text, reason
    # nothing documented that does not exist
    documented = set(re.findall(r"^\| `(hepfast_\w+)` \|", text, re.M))
    assert documented == set(metrics), documented ^ set(metrics)


# ------------------------------------------------------------------ the OpenSIPS migration example

def test_opensips_example_routes_the_corpus_as_described(corpus_dir, corpus_loader):
    from hepfast.plan.compile import compile_text
    from hepfast.plan.oracle import route
    from hepfast.wire import codec

    block = next(t for d, _n, t in BLOCKS if d == "opensips-migration.md" and "[[rules]]" in t)
    c = compile_text(block)
    dest = {i: d.name for i, d in enumerate(c.destinations)}
    seen: dict[int, set] = {}
    for name in ("kamailio-hep3-udp", "rtpengine-rtcp-hep"):
        for data, _exp in corpus_loader(name):
            pkt = codec.decode(data)
            r = route(c, pkt, 0)
            seen.setdefault(pkt.proto_type, set()).add(
                tuple(sorted(dest[d] for _r, d in r.sends)) or r.drop)
    assert seen[1] == {("homer-a", "homer-b")}          # SIP forked to both collectors
    assert seen[5] == {("qos",)}                        # RTCP to its own collector
    assert seen[100] == {"rule"}                        # logs dropped by rule
