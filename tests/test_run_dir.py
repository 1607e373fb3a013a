"""switch.run_dir: where `hepfast run` makes the run directory (the counters, plans, guard
tables and rings its processes share), stale ones of killed switches removed, fixed at start;
and a huge-page tmpfs there puts the guard tables on 2 MiB pages (checked in a private mount
namespace, so nothing outlives the test)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hepfast.config import ConfigError
from hepfast.plan import compile_text
from tests.switchhelp import ROOT, SwitchProcess, agents_to, corpus_messages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux only")


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _config(port: int, run_dir: Path, dedup: bool = True) -> str:
    return agents_to(port, """
        [[rules]]
        name = "all"
        forward = ["out"]
        """, listener="dedup = true" if dedup else "") + f'[switch]\nrun_dir = "{run_dir}"\n'


def test_the_run_directory_is_made_in_run_dir(tmp_path, sinks):
    (out,) = sinks(1)
    base = tmp_path / "rd"
    base.mkdir()
    stale = base / f"hepfast-{_dead_pid()}-left"
    stale.mkdir()
    (stale / "guard").write_bytes(b"x")
    alive = base / f"hepfast-{os.getpid()}-mine"     # a live pid's directory stays
    alive.mkdir()
    sw = SwitchProcess(tmp_path, _config(out.port, base), extra=["--no-admin"])
    try:
        made = [p for p in base.iterdir() if p.name.startswith(f"hepfast-{sw.proc.pid}-")]
        assert len(made) == 1
        assert (made[0] / "guard").is_file() and (made[0] / "counters").is_file()
        assert not stale.exists() and alive.exists()
        from hepfast.dataplane import _guard

        # distinct messages (dedup is on; the corpus has retransmissions)
        msgs = list({_guard.identity(m): m for m in corpus_messages("kamailio",
                                                                    limit=150)}.values())
        sw.send(msgs)
        assert out.wait_for(len(msgs), timeout=30)
        # run_dir is fixed at start: a reload that moves it is refused, naming the field
        other = tmp_path / "other"
        other.mkdir()
        sw.cfg.write_text(sw.cfg.read_text().replace(str(base), str(other)))
        os.kill(sw.proc.pid, signal.SIGHUP)
        end = time.monotonic() + 20
        while "reload refused" not in sw.stderr() and time.monotonic() < end:
            time.sleep(0.05)
        assert "switch.run_dir" in sw.stderr(), sw.stderr()
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["guard"]["bytes"] >= 8 << 20
    assert summary["guard"]["page_kib"] in (4, 2048)
    from hepfast.dataplane import rundir as R

    kind = R.fs_type(str(base))          # a disk directory gets a warning, a tmpfs none
    if kind in ("tmpfs", "ramfs"):
        assert "not a tmpfs" not in sw.stderr()
    else:
        assert f"is on {kind}, not a tmpfs: the shared tables and rings" in sw.stderr()
    assert not made[0].exists()                    # removed at a clean stop
    shutil.rmtree(alive)


def test_a_run_dir_that_is_not_a_directory_is_named(tmp_path):
    for bad in (tmp_path / "missing", tmp_path / "file"):
        if bad.name == "file":
            bad.write_text("")
        with pytest.raises(ConfigError) as exc:
            compile_text(textwrap.dedent(f"""
                [switch]
                run_dir = "{bad}"
                [[listeners]]
                name = "a"
                listen = "127.0.0.1:0"
                [destinations.out]
                targets = ["127.0.0.1:9"]
                [[rules]]
                name = "all"
                forward = ["out"]
                """))
        assert exc.value.path == "switch.run_dir"
        assert "mount -t tmpfs" in str(exc.value)


def _huge_tmpfs_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount in a private mount namespace)"
    if not shutil.which("unshare"):
        return "needs unshare(1) (util-linux)"
    if not os.path.exists("/sys/kernel/mm/transparent_hugepage/shmem_enabled"):
        return "the kernel has no transparent huge pages for tmpfs"
    if open("/sys/kernel/mm/transparent_hugepage/shmem_enabled").read().find("[deny]") >= 0:
        return "tmpfs huge pages are denied on this machine (shmem_enabled = deny)"
    return None


@pytest.mark.skipif(_huge_tmpfs_possible() is not None,
                    reason=str(_huge_tmpfs_possible()))
def test_a_huge_page_tmpfs_backs_the_guard_with_2mib_pages(tmp_path, sinks):
    (out,) = sinks(1)
    mnt = tmp_path / "huge"
    mnt.mkdir()
    cfg = tmp_path / "huge.toml"
    cfg.write_text(_config(out.port, mnt))
    script = (f"mount -t tmpfs -o huge=within_size,mode=0700,size=64m hepfast-test {mnt} && "
              f"exec {sys.executable} -m hepfast run -c {cfg} --quiet --no-admin --workers 1 "
              "--duration 3")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["guard"]["page_kib"] == 2048, (summary["guard"], p.stderr)
    assert "not a tmpfs" not in p.stderr
    assert not any(Path(mnt).iterdir())            # the mount was private to the namespace
