#!/usr/bin/env python3
"""Write pcaps/distributed_sweep_445.pcap: 40 outside sources sweep port 445, 3 hosts each.

    python3 pcaps/make_distributed_sweep_445.py

The shape of issue 11 finding 1 (the seed thread's "Network Port Sweep ... but no
Source IP"): sources 203.0.113.1 .. 203.0.113.40 (outside home_net) each send one
TCP SYN to port 445 of three of the 60 home hosts 10.77.1.1 .. 10.77.1.60: source
k (1-based) probes hosts 3(k-1) mod 60 + 1, + 2, + 3, so the 40 sources cover the
60 hosts twice over and no source probes more than 3 (no per-source rule fires).
The probes are interleaved round-robin (all sources' first probes, then their
second, then their third), 20 ms apart, from 2023-11-14T22:15:00Z: 2.4 s in all,
so the whole sweep is in the first report (threshold plus `report_delay_s`, 5 s)
under the default settings and the `sentinel-port-sweep` preset alike. Hosts with an
odd last octet answer RST+ACK 1 ms later (closed); the others never answer
(filtered). One port_sweep alert must name all 40 sources, each with its 3 hosts.
Built with scapy, written with scapy's wrpcap; no clock, no randomness: re-running
gives the same bytes.
"""
import logging
import os

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_700_000_100      # a multiple of 300 s (panes start there: kernels/alert_slots.py)
PORT = 445
SOURCES = [f"203.0.113.{k}" for k in range(1, 41)]
HOSTS = [f"10.77.1.{h}" for h in range(1, 61)]
MAC_OUT, MAC_IN = "02:00:00:00:01:01", "02:00:00:00:01:02"


def hosts_of(k):
    """The three hosts source index ``k`` (0-based) probes."""
    return [HOSTS[(3 * k + j) % len(HOSTS)] for j in range(3)]


def packets():
    out = []
    n = 0
    for j in range(3):
        for k, src in enumerate(SOURCES):
            dst = hosts_of(k)[j]
            t = T0 + 0.02 * n
            sport = 50000 + 3 * k + j
            syn = (Ether(src=MAC_OUT, dst=MAC_IN) / IP(src=src, dst=dst, ttl=50, id=2000 + n)
                   / TCP(sport=sport, dport=PORT, flags="S", seq=7_000_000 + n, window=1024))
            syn.time = t
            out.append(syn)
            if int(dst.rsplit(".", 1)[1]) % 2:
                rst = (Ether(src=MAC_IN, dst=MAC_OUT) / IP(src=dst, dst=src, ttl=64, id=9000 + n)
                       / TCP(sport=PORT, dport=sport, flags="RA", seq=0, ack=7_000_001 + n,
                             window=0))
                rst.time = t + 0.001
                out.append(rst)
            n += 1
    return out


if __name__ == "__main__":
    path = os.path.join(HERE, "distributed_sweep_445.pcap")
    wrpcap(path, packets())
    print(f"{path}: {os.path.getsize(path)} bytes")
