#!/usr/bin/env python3
"""Write the long-horizon captures (issue 12, part 2): scans paced under every 5-minute window.

    python3 pcaps/make_slow_scans.py [OUT_DIR]      # default: pcaps/

* ``slow_sweep_3389.pcap``: 203.0.113.50 (outside) sends one TCP SYN to port 3389
  of a new home host every 90 s, 10.20.0.1 ... 10.20.0.100 (2 h 28 min). Hosts
  .7, .23, .51, .77 and .99 answer SYN-ACK (the scanner resets); the others never
  answer (filtered). No 5-minute window holds more than 4 hosts.
* ``nmap_t1_scan.pcap``: an ``nmap -T1``-paced SYN scan (15 s between probes) of
  40 ports of 10.30.0.5 by 198.51.100.9, captured on a SPAN port that sees only
  the traffic entering the network: no answer is ever seen, so every outcome is
  ``unknown`` (failed_connections, which counts refusals and filtered attempts,
  has nothing to count). 20 ports per 5-minute window, under port_scan's 50.

Frames and file layout from ``presets/pcapgen.py``; deterministic (no clock, no
randomness): re-running gives the same bytes.
"""
from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "presets"))

from pcapgen import Capture, US, syn_probe  # noqa: E402

T0 = 1_767_250_800 * US          # 2026-01-01T07:00:00Z
SWEEPER, OPEN_HOSTS = "203.0.113.50", (7, 23, 51, 77, 99)
T1_SCANNER, T1_TARGET = "198.51.100.9", "10.30.0.5"
# 40 of nmap's most common TCP ports (nmap probes them in random order; any order does)
T1_PORTS = (80, 23, 443, 21, 22, 25, 3389, 110, 445, 139, 143, 53, 135, 3306, 8080, 1723,
            111, 995, 993, 5900, 1025, 587, 8888, 199, 1720, 465, 548, 113, 81, 6001, 10000,
            514, 5060, 179, 1026, 2000, 8443, 8000, 32768, 554)


def slow_sweep():
    cap = Capture()
    for k in range(100):
        host = f"10.20.0.{k + 1}"
        outcome = "open" if k + 1 in OPEN_HOSTS else "filtered"
        syn_probe(cap, T0 + k * 90 * US, SWEEPER, 50000 + k, host, 3389, outcome)
    return cap


def nmap_t1():
    cap = Capture()
    for k, port in enumerate(T1_PORTS):
        syn_probe(cap, T0 + k * 15 * US, T1_SCANNER, 61234, T1_TARGET, port, "filtered")
    return cap


FILES = {"slow_sweep_3389.pcap": slow_sweep, "nmap_t1_scan.pcap": nmap_t1}


def main(out_dir=HERE):
    for name, make in FILES.items():
        path = pathlib.Path(out_dir) / name
        print(f"{path}: {make().write(path)} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:2])
