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
