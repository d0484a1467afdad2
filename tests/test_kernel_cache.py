"""The kernel cache directory: one per version of kernels/, a few kept."""
import os

from kernels import jit


def test_other_versions_keep_the_last_used_few(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    old = []
    for age, name in enumerate("abcde"):
        d = tmp_path / f"scan-sensor-{name}"
        d.mkdir()
        os.utime(d, (1_000_000 + age, 1_000_000 + age))   # e was used last
        old.append(d)
    current = jit._cache_dir()
    assert current.parent == tmp_path and current.name == f"scan-sensor-{jit._sources_hash()}"
    kept = sorted(p.name for p in tmp_path.iterdir() if p != current)
    assert kept == ["scan-sensor-c", "scan-sensor-d", "scan-sensor-e"]
    # the current one counts as used now: a second run keeps the same set
    assert jit._cache_dir() == current
    assert sorted(p.name for p in tmp_path.iterdir() if p != current) == kept


def test_compile_covers_what_replay_needs(tmp_path):
    """`scan-sensor compile` on an empty cache (its groups in parallel processes)
    leaves nothing for a replay to compile: with 1 or 2 workers, on pcap and
    pcapng, the replays add no file to the cache."""
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "sensor", "compile"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "compiling the packet kernels" in done.stderr and "kernels ready" in done.stderr
    files = lambda: sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())  # noqa: E731
    before = files()
    assert len([f for f in before if f.endswith(".nbi")]) > 50
    for capture in ("nmap_syn_scan.pcap", "edge/multi_section.pcapng", "edge/syn_scan.pcapng.gz"):
        for workers in ("1", "2"):
            run = subprocess.run([sys.executable, "-m", "sensor", "replay", "--workers", workers,
                                  str(root / "pcaps" / capture)], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=900)
            assert run.returncode == 0, run.stderr
    assert files() == before
