"""Live benchmark in the suite: the benchmark's capture sent into a veth as fast as
this machine can (tcpreplay --topspeed), the daemon and tcpdump listening at
once; the daemon must drop no more than tcpdump. The figures are printed
(``pytest -s``) and are what the README's results table reports from
``python -m sensor.bench --live``."""

import pytest

from netns import why_not_runnable
from sensor.bench import write_capture
from sensor.bench_live import measure

pytestmark = pytest.mark.integration
PACKETS = 600_000          # larger than tcpdump's default 2 MiB buffer many times over


def test_daemon_drops_no_more_than_tcpdump(tmp_path):
    reason = why_not_runnable(("ip", "tcpdump", "tcpreplay"))
    if reason:
        pytest.skip(reason)
    capture = tmp_path / "live.pcap"
    write_capture(capture, PACKETS)
    r = measure(capture, tmp_path)
    print(f"\nlive: tcpreplay sent {r['sent']:,} at {r['tcpreplay_pps']:,.0f} packets/s; "
          f"daemon received {r['daemon_received']:,}, dropped {r['daemon_dropped']:,}; "
          f"tcpdump received {r['tcpdump_received']:,}, dropped {r['tcpdump_dropped']:,}")
    assert r["sent"] == PACKETS
    assert r["daemon_exit"] == 0
    assert r["tcpdump_received"] is not None and r["tcpdump_dropped"] is not None
    # the daemon's kernel filter passes every frame of this mix (no payloads)
    assert r["daemon_received"] + r["daemon_dropped"] >= PACKETS
    assert r["daemon_decoded"] >= r["daemon_received"] - 100
    assert r["daemon_dropped"] <= r["tcpdump_dropped"]
