"""The layout a newcomer reads: the README's table names every package folder of hepfast/ and
ext/ that exists and nothing that does not, and no two modules in different layers share a
name (the compiled twin of a module is `_name` beside `name`, by convention; hepfast/commands/
holds one module per subcommand, named after the subcommand, not a layer)."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_paths() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    section = section[:section.index("\n## ", 4)]
    return {m.rstrip("/") for m in re.findall(r"`((?:hepfast|ext)/[a-z_]+/?)`", section)}


def test_readme_layout_matches_the_folders():
    listed = _table_paths()
    folders = {f"hepfast/{p.name}" for p in (ROOT / "hepfast").iterdir()
               if p.is_dir() and (p / "__init__.py").exists()}
    folders |= {f"ext/{p.name}" for p in (ROOT / "ext").iterdir()
                if p.is_dir() and p.name != "generated" and any(p.glob("*.p*"))}
    assert folders - listed == set(), "folders missing from the README's layout table"
    assert {p for p in listed if not (ROOT / p).exists()} == set(), "listed but absent"


def test_no_module_name_repeats_across_layers():
    seen = defaultdict(set)
    for p in list((ROOT / "hepfast").rglob("*.py")) + list((ROOT / "ext").rglob("*.p*")):
        if p.name == "__init__.py" or "generated" in p.parts or "commands" in p.parts \
                or p.suffix not in (".py", ".pyx", ".pxd"):
            continue
        layer = p.parent.relative_to(ROOT).as_posix().replace("ext/", "hepfast/")
        seen[p.stem.lstrip("_")].add(layer)
    clashes = {name: layers for name, layers in seen.items() if len(layers) > 1}
    assert clashes == {}, clashes
