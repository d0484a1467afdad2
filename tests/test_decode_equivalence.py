"""Kernel decode == plain-Python reference decode (tests/naive.py), on every
capture shipped under pcaps/, through every input path of CaptureFile:
mmap, gzip, small-chunk streaming, a FIFO, standard input, and batch sizes."""
import gzip
import io
import os
import sys
import threading
import zlib

import pytest

import naive
from fixtures_decode import (
    PCAP_DIR, assert_same_decode, kernel_decode, reference_decode, sample_pcap, sample_pcapng,
    shipped_captures,
)
from sensor.capture.files import CaptureError

CAPTURES = shipped_captures()
if CAPTURES:
    CAPTURE_PARAMS = [pytest.param(p, id=str(p.relative_to(PCAP_DIR))) for p in CAPTURES]
else:
    CAPTURE_PARAMS = [pytest.param(None, marks=pytest.mark.skip(
        reason="no capture files under pcaps/ yet (run pcaps/make_captures.sh and "
               "pcaps/edge/make_edge_cases.py)"))]

# tiny chunks make the rolling buffer carry a partial record on nearly every
# read; on a big capture that is slow, so those runs use the file's first bytes
TINY_CHUNK_PREFIX = 256 * 1024
REFERENCE_ERRORS = (naive.NotACapture, zlib.error)


def decode_or_error(path):
    """Reference decode, or None when the reference rejects the file as a whole."""
    try:
        return reference_decode(path)
    except REFERENCE_ERRORS:
        return None


@pytest.fixture(scope="module")
def references():
    return {}


def reference_for(references, path):
    if path not in references:
        references[path] = decode_or_error(path)
    return references[path]


@pytest.mark.parametrize("path", CAPTURE_PARAMS)
def test_shipped_capture_matches_reference(path, references):
    want = reference_for(references, path)
    if want is None:
        with pytest.raises(CaptureError, match=str(path.name)):
            kernel_decode(path)
        return
    got = kernel_decode(path)
    assert_same_decode(got, want, f"{path.name}: kernel vs reference")
    if path.parent.name not in ("edge", "hostile"):
        assert got.stats["records"] > 0, f"{path.name} holds no packets"
        assert got.stats["decoded"] > 0, f"{path.name}: nothing decoded: {got.stats}"


@pytest.mark.parametrize("path", CAPTURE_PARAMS)
def test_shipped_capture_batch_size_does_not_matter(path, references):
    if reference_for(references, path) is None:
        pytest.skip("not a readable capture (checked by test_shipped_capture_matches_reference)")
    big = kernel_decode(path, capacity=1 << 16)
    for capacity in (1, 3):
        assert_same_decode(kernel_decode(path, capacity=capacity), big,
                           f"{path.name}: capacity {capacity} vs {1 << 16}")


@pytest.mark.parametrize("path", CAPTURE_PARAMS)
def test_shipped_capture_streaming_paths_match_mmap(path, references, tmp_path):
    if reference_for(references, path) is None:
        pytest.skip("not a readable capture (checked by test_shipped_capture_matches_reference)")
    want = kernel_decode(path)
    data = path.read_bytes()
    # the same bytes through the gzip stream (or, for a .gz, its plain content mmapped)
    if data[:2] == b"\x1f\x8b":
        other = tmp_path / "plain"
        other.write_bytes(naive.read_bytes(path))
    else:
        other = tmp_path / (path.name + ".gz")
        other.write_bytes(gzip.compress(data, compresslevel=1))
    assert_same_decode(kernel_decode(other), want, f"{path.name}: gzip vs plain")
    for chunk in (64, 4096):
        got = kernel_decode(path, chunk_bytes=chunk, use_mmap=False)
        assert_same_decode(got, want, f"{path.name}: chunk_bytes={chunk} stream vs mmap")

    prefix = tmp_path / "prefix"
    prefix.write_bytes(naive.read_bytes(path)[:TINY_CHUNK_PREFIX])
    want_prefix = kernel_decode(prefix)
    assert_same_decode(want_prefix, reference_decode(prefix), f"{path.name}: prefix vs reference")
    for chunk in (7, 64):
        for capacity in (3, 4096):
            got = kernel_decode(prefix, capacity=capacity, chunk_bytes=chunk, use_mmap=False)
            assert_same_decode(got, want_prefix,
                               f"{path.name} prefix: chunk {chunk} capacity {capacity} vs mmap")
            assert got.warnings == want_prefix.warnings


SAMPLES = {
    "pcap": sample_pcap,
    "pcap-be-ns": lambda: sample_pcap(big=True, nano=True),
    "pcapng": sample_pcapng,
    "pcapng-be": lambda: sample_pcapng(">"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_fifo_is_streamed(kind, tmp_path):
    """A named pipe (or `<(zcat x.pcap.gz)`) cannot be mapped or seeked: it is streamed."""
    data = SAMPLES[kind]()
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 100):     # arrives in pieces, as from tcpdump -w -
                f.write(data[i:i + 100])
                f.flush()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = kernel_decode(fifo, capacity=5, chunk_bytes=64)
    t.join(timeout=10)
    want = kernel_decode(plain)
    assert want.n > 0
    assert_same_decode(got, want, "fifo vs plain file")
    assert_same_decode(want, reference_decode(plain), "plain file vs reference")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_stdin_is_streamed(kind, compress, monkeypatch, tmp_path):
    data = SAMPLES[kind]()
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    fed = gzip.compress(data) if compress else data
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(fed))))
    got = kernel_decode("-", capacity=7, chunk_bytes=33)
    assert_same_decode(got, kernel_decode(plain), "stdin vs plain file")


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_sample_all_paths_agree(kind, tmp_path):
    """The same checks as for shipped captures, on a synthetic one (always present)."""
    data = SAMPLES[kind]()
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    packed = tmp_path / "packed.gz"
    packed.write_bytes(gzip.compress(data))
    want = reference_decode(plain)
    for label, path, kw in [
        ("mmap", plain, {}),
        ("mmap capacity 1", plain, dict(capacity=1)),
        ("mmap capacity 3", plain, dict(capacity=3)),
        ("stream chunk 1", plain, dict(chunk_bytes=1, use_mmap=False)),
        ("stream chunk 7 capacity 3", plain, dict(chunk_bytes=7, capacity=3, use_mmap=False)),
        ("stream chunk 64", plain, dict(chunk_bytes=64, use_mmap=False)),
        ("gzip", packed, {}),
        ("gzip chunk 7 capacity 2", packed, dict(chunk_bytes=7, capacity=2)),
    ]:
        got = kernel_decode(path, **kw)
        assert_same_decode(got, want, f"{kind} {label} vs reference")
        assert got.warnings == []
