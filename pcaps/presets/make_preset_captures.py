#!/usr/bin/env python3
"""Write the preset threshold captures (see README.md next to this script).

    python3 pcaps/presets/make_preset_captures.py [OUT_DIR]     # default: this directory

For each SIEM preset, ``<preset>_above.pcap`` holds traffic just above the
preset's threshold and ``<preset>_below.pcap`` the same traffic one counted
item short. ``sentinel-port-scan`` also gets the IPv4-mapped twin files.
Deterministic: fixed addresses (198.51.100.0/24 and 203.0.113.0/24 outside,
10.0.0.0/8 inside), fixed timestamps, no randomness; re-running it produces
byte-identical files (tests/test_presets.py checks this).
"""
from __future__ import annotations

import math
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pcapgen import Capture, US, connect, syn_probe, write_all  # noqa: E402

T0 = 1_767_225_600 * US          # 2026-01-01T00:00:00Z (a multiple of one hour)

# nmap's 20 most common TCP ports, then filler; probe order is a fixed permutation
TOP20 = [21, 22, 23, 25, 53, 80, 110, 111, 135, 139, 143, 443, 445, 993, 995,
         1723, 3306, 3389, 5900, 8080]


def scan_ports(n):
    """The first n ports of TOP20 + 1025, 1026, ... in a scrambled (nmap-like) order."""
    ports = (TOP20 + list(range(1025, 1025 + n)))[:n]
    step = next(s for s in (37, 41, 43, 47) if math.gcd(n, s) == 1)
    return [ports[(i * step) % n] for i in range(n)]


# --- sentinel-port-scan -----------------------------------------------------------
PS_SCANNER = "198.51.100.7"
PS_TARGET = "10.1.0.10"
PS_OPEN = {22, 80, 443}


def vertical_scan(scanner, target, ports, open_ports, start, spacing, sport=41000):
    cap = Capture()
    for i, port in enumerate(ports):
        syn_probe(cap, start + i * spacing, scanner, sport, target, port,
                  "open" if port in open_ports else "closed")
    return cap


def sentinel_port_scan(n):
    # one external scanner, n distinct ports on one home host, 2 s apart, all inside
    # one clock-aligned 5-minute bin (T0+10 s .. T0+10+2(n-1) s)
    return vertical_scan(PS_SCANNER, PS_TARGET, scan_ports(n), PS_OPEN, T0 + 10 * US, 2 * US)


def sentinel_twin(mapped):
    # an internal scanner, 60 ports (well above 51), IPv4 or IPv4-mapped IPv6 headers
    pre = "::ffff:" if mapped else ""
    return vertical_scan(pre + "10.20.30.40", pre + "10.20.30.50", scan_ports(60), PS_OPEN,
                         T0 + 10 * US, 1 * US)


def sentinel_mapped_external():
    return vertical_scan("::ffff:" + PS_SCANNER, "::ffff:" + PS_TARGET, scan_ports(51),
                         PS_OPEN, T0 + 10 * US, 2 * US)


# --- sentinel-port-sweep ----------------------------------------------------------
SW_PORT = 3389
SW_A = "198.51.100.23"
SW_B = "203.0.113.45"
SW_HOSTS = [f"10.4.0.{11 + k}" for k in range(21)]


def sweep_outcome(k):
    return ("open", "closed", "closed", "filtered", "filtered")[k % 5]


def sentinel_port_sweep(n_a):
    """A sweeps SW_HOSTS[:n_a], B sweeps the 7 hosts after A's 14; all on 3389, in 40 min."""
    cap = Capture()
    for k in range(n_a):
        syn_probe(cap, T0 + 120 * US + k * 45 * US, SW_A, 52000, SW_HOSTS[k], SW_PORT,
                  sweep_outcome(k))
    for j, k in enumerate(range(14, 21)):
        syn_probe(cap, T0 + 900 * US + j * 60 * US, SW_B, 61000, SW_HOSTS[k], SW_PORT,
                  sweep_outcome(k))
    # decoy: an internal host sweeping 6 more home hosts on 3389 (direction internal)
    for j in range(6):
        syn_probe(cap, T0 + 600 * US + j * 5 * US, "10.4.0.200", 40500, f"10.4.0.{40 + j}",
                  SW_PORT, sweep_outcome(j))
    return cap


# --- defender-internet-facing -----------------------------------------------------
EXPOSED = "10.1.0.80"
DF_PROBER = "198.51.100.99"
DF_ATTEMPTS = [(300, 22, "open"), (900, 445, "closed"), (1500, 3389, "filtered")]


def defender_internet_facing(n):
    cap = Capture()
    for sec, port, outcome in DF_ATTEMPTS[:n]:
        syn_probe(cap, T0 + sec * US, DF_PROBER, 43000, EXPOSED, port, outcome)
    # decoy: an internal admin's 4 SSH sessions to the exposed host (source in home_net)
    for k in range(4):
        connect(cap, T0 + (200 + 400 * k) * US, "10.1.0.5", 51000 + k, EXPOSED, 22,
                request=b"SSH-2.0-OpenSSH_9.6\r\n", response=b"SSH-2.0-OpenSSH_8.9p1\r\n")
    # decoy: an external scanner probing a host that is not in net.exposed_hosts
    for k, port in enumerate((22, 23, 445, 3389)):
        syn_probe(cap, T0 + (1000 + 10 * k) * US, "203.0.113.77", 44000, "10.1.0.81", port,
                  "closed")
    return cap


# --- panos-internal-scan ----------------------------------------------------------
PA_CLIENT = "10.2.0.15"
PA_REFUSALS = [("198.51.100.20", 21), ("198.51.100.20", 22), ("198.51.100.20", 23),
               ("198.51.100.20", 25), ("203.0.113.30", 135), ("203.0.113.30", 139),
               ("203.0.113.30", 445), ("203.0.113.31", 1433), ("203.0.113.31", 3306),
               ("203.0.113.31", 3389)]


def panos_internal_scan(n):
    cap = Capture()
    cport = 50100
    for k, (host, port) in enumerate(PA_REFUSALS[:n]):
        connect(cap, T0 + (60 + 90 * k) * US, PA_CLIENT, cport, host, port, outcome="closed")
        cport += 1
    # decoys the rule must ignore:
    # resets on excluded ports 443 and 53
    for sec, host, port in ((100, "203.0.113.30", 443), (400, "203.0.113.30", 443),
                            (700, "198.51.100.20", 443), (200, "198.51.100.53", 53),
                            (500, "198.51.100.53", 53)):
        connect(cap, T0 + sec * US, PA_CLIENT, cport, host, port, outcome="closed")
        cport += 1
    # graceful closes (FIN) on counted ports
    for sec, host, port, req, resp, close in (
            (300, "198.51.100.20", 22, b"SSH-2.0-OpenSSH_9.6\r\n", b"SSH-2.0-OpenSSH_8.9p1\r\n",
             "server_fin"),
            (800, "203.0.113.31", 25, b"EHLO client.example\r\n", b"220 mx.example ESMTP\r\n",
             "client_fin"),
            (1000, "203.0.113.30", 21, b"USER anonymous\r\n", b"220 FTP server ready\r\n",
             "server_fin")):
        connect(cap, T0 + sec * US, PA_CLIENT, cport, host, port, request=req, response=resp,
                close=close)
        cport += 1
    # resets from an internal server (direction internal, not outbound)
    for sec in (600, 650):
        connect(cap, T0 + sec * US, PA_CLIENT, cport, "10.2.0.99", 8000, outcome="closed")
        cport += 1
    return cap


# --- elastic-network-scan ---------------------------------------------------------
EL_SCANNER = "10.3.0.5"
EL_TARGET = "10.3.0.99"
EL_DECOY = "10.3.0.100"


# the rule's 13 "sensitive" ports; the >= 50-ports branch is built from other ports
EL_SENSITIVE = (21, 22, 23, 53, 88, 139, 389, 445, 3389, 5900, 5985, 5986, 9389)


def elastic_network_scan(n, sensitive=0):
    """n probes to ports that are not sensitive, then ``sensitive`` to sensitive ones."""
    cap = Capture()
    ports = list(range(2000, 2000 + n)) + list(EL_SENSITIVE[:sensitive])
    for i, port in enumerate(ports):
        syn_probe(cap, T0 + 5 * US + i * US // 2, EL_SCANNER, 45000, EL_TARGET, port,
                  "open" if port in (22, 2010) else "closed")
    # decoy: the same scanner, 30 other ports (1100-1129) on a second host, interleaved:
    # another pair, so it never adds to the first pair's count
    for j in range(30):
        port = 1100 + (j * 7) % 30
        syn_probe(cap, T0 + 5 * US + US // 4 + j * US // 2, EL_SCANNER, 45001, EL_DECOY, port,
                  "open" if port == 1111 else "closed")
    return cap


FILES = {
    "sentinel-port-scan_above.pcap": lambda: sentinel_port_scan(51),
    "sentinel-port-scan_below.pcap": lambda: sentinel_port_scan(50),
    "sentinel-port-scan_mapped_internal.pcap": lambda: sentinel_twin(mapped=True),
    "sentinel-port-scan_ipv4_internal.pcap": lambda: sentinel_twin(mapped=False),
    "sentinel-port-scan_mapped_external.pcap": sentinel_mapped_external,
    "sentinel-port-sweep_above.pcap": lambda: sentinel_port_sweep(14),
    "sentinel-port-sweep_below.pcap": lambda: sentinel_port_sweep(13),
    "defender-internet-facing_above.pcap": lambda: defender_internet_facing(3),
    "defender-internet-facing_below.pcap": lambda: defender_internet_facing(2),
    "panos-internal-scan_above.pcap": lambda: panos_internal_scan(10),
    "panos-internal-scan_below.pcap": lambda: panos_internal_scan(9),
    "elastic-network-scan_above.pcap": lambda: elastic_network_scan(50),
    "elastic-network-scan_below.pcap": lambda: elastic_network_scan(49),
    "elastic-network-scan_sensitive_above.pcap": lambda: elastic_network_scan(10, sensitive=5),
    "elastic-network-scan_sensitive_below.pcap": lambda: elastic_network_scan(10, sensitive=4),
}


def main(out_dir=HERE):
    write_all(FILES, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:2])
