#!/usr/bin/env python3
"""Write the captures whose packet time goes backwards (issue 14 item 2).

    python3 pcaps/hostile/make_time_order.py

Same frames as ``make_hostile.py`` (Ethernet/IPv4 TCP SYNs from ``SCANNER`` to
``TARGET``, written with ``struct``, deterministic). The default port_scan
threshold is 50 distinct ports in 300 s.

| file | what is in it |
|---|---|
| `scan_2023_30ports.pcap` | 30 SYNs to ports 1000-1029, one per ms from 2023-11-14T22:13:20Z |
| `scan_2013_30ports.pcap` | 30 SYNs to ports 2000-2029, one per ms from 2013-11-14T22:13:20Z: with the 2023 file, 60 ports of one source, ten years apart |
| `scan_2023_60ports.pcap` | 60 SYNs to ports 1000-1059 from 2023-11-14T22:13:20Z: one port_scan alert alone |
| `scan_2013_60ports.pcap` | 60 SYNs to ports 2000-2059 from 2013-11-14T22:13:20Z: one port_scan alert alone |
| `syn_daily_backwards.pcap` | 60 SYNs, each to a new port, each one day *earlier* than the one before |
| `syn_daily_forwards.pcap` | the same 60 SYNs one day apart going forwards |
| `jitter_1s.pcap` | 60 SYNs to 60 ports within 0.1 s, every other one stamped 1 s early (multi-queue disorder, within the tolerance): one alert, no time regression |
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hostile import pcap_header, syn, write  # noqa: E402

T2023 = 1_700_000_000                  # 2023-11-14T22:13:20Z
T2013 = T2023 - 315_532_800            # 3652 days earlier: 2013-11-14T22:13:20Z
DAY = 86400


def record(ts_us, frame):
    return struct.pack("<IIII", ts_us // 1_000_000, ts_us % 1_000_000, len(frame),
                       len(frame)) + frame


def scan(t0_s, first_port, n, step_us=1000):
    return pcap_header() + b"".join(record(t0_s * 1_000_000 + i * step_us, syn(first_port + i))
                                    for i in range(n))


def main():
    write("scan_2023_30ports.pcap", scan(T2023, 1000, 30))
    write("scan_2013_30ports.pcap", scan(T2013, 2000, 30))
    write("scan_2023_60ports.pcap", scan(T2023, 1000, 60))
    write("scan_2013_60ports.pcap", scan(T2013, 2000, 60))
    write("syn_daily_backwards.pcap", pcap_header() + b"".join(
        record((T2023 - i * DAY) * 1_000_000, syn(1000 + i)) for i in range(60)))
    write("syn_daily_forwards.pcap", pcap_header() + b"".join(
        record((T2023 - (59 - i) * DAY) * 1_000_000, syn(1059 - i)) for i in range(60)))
    write("jitter_1s.pcap", pcap_header() + b"".join(
        record(T2023 * 1_000_000 + i * 1000 - (1_000_000 if i % 2 else 0), syn(1000 + i))
        for i in range(60)))


if __name__ == "__main__":
    main()
