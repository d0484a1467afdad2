#!/usr/bin/env python3
"""Write pcaps/slow_scan_60ports.pcap: a slow SYN scan, one probe a minute for an hour.

    python3 pcaps/slow_scan_60ports.py

198.51.100.77 (outside) sends one TCP SYN a minute to 10.77.0.2 ports 1..60 in
order (the first at 2023-11-14T22:13:20Z). Odd ports answer with RST+ACK 1 ms
later (closed); even ports never answer (filtered). The shape of issue 11
finding 3: no 5-minute window holds more than a handful of ports, and the
alert must still end up saying "60 ports, 1-60". Built with scapy, written with
scapy's wrpcap; no clock, no randomness: re-running gives the same bytes.

The scan starts on a 5-minute boundary of packet time, where the rules' panes
begin (a rule's window is two panes of ``window_s``: kernels/alert_slots.py).
Started mid-pane, the probes of the first, partial pane have left the window
before the 10th failure reaches failed_connections' threshold, and no alert can
name them (with this scan started 200 s into a pane: ports 3-60).
"""
import logging
import os

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_700_000_100      # a multiple of 300 s
SCANNER, TARGET = "198.51.100.77", "10.77.0.2"
MAC_S, MAC_T = "02:00:00:00:00:01", "02:00:00:00:00:02"


def packets():
    out = []
    for i, port in enumerate(range(1, 61)):
        t = T0 + 60 * i
        syn = (Ether(src=MAC_S, dst=MAC_T) / IP(src=SCANNER, dst=TARGET, ttl=52, id=1000 + i)
               / TCP(sport=40000 + i, dport=port, flags="S", seq=1_000_000 + i, window=1024))
        syn.time = t
        out.append(syn)
        if port % 2:
            rst = (Ether(src=MAC_T, dst=MAC_S) / IP(src=TARGET, dst=SCANNER, ttl=64, id=5000 + i)
                   / TCP(sport=port, dport=40000 + i, flags="RA", seq=0, ack=1_000_001 + i,
                         window=0))
            rst.time = t + 0.001
            out.append(rst)
    return out


if __name__ == "__main__":
    path = os.path.join(HERE, "slow_scan_60ports.pcap")
    wrpcap(path, packets())
    print(f"{path}: {os.path.getsize(path)} bytes")
