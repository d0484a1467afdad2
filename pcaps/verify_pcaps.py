#!/usr/bin/env python3
"""Read every capture in pcaps/ back (dpkt; a small hand-written reader for the
multi-section pcapng) and assert the facts documented in pcaps/README.md.

    python3 pcaps/verify_pcaps.py          # exit status 0 = every fact holds

Prints one summary block per file.  Needs only dpkt (no root, no network).
"""
from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import socket
import struct
import sys

import dpkt

HERE = os.path.dirname(os.path.abspath(__file__))
EDGE = os.path.join(HERE, "edge")

FAILURES: list[str] = []


def check(cond: bool, msg: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + msg)
    if not cond:
        FAILURES.append(msg)


def ip4(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET, b)


def ip6(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, b)


def rng(a: int, b: int) -> set[int]:
    return set(range(a, b + 1))


def fmt_ports(ports) -> str:
    ports = sorted(ports)
    if not ports:
        return "{}"
    out, start, prev = [], ports[0], ports[0]
    for p in ports[1:] + [None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    return "{" + ",".join(out) + "}"


def header(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    print(f"\n== {os.path.relpath(path, HERE)}  ({len(data)} bytes, sha256 "
          f"{hashlib.sha256(data).hexdigest()[:16]}...)")


# ---------------------------------------------------------------------------
# real captures
# ---------------------------------------------------------------------------
SYN, ACK, RST, FIN, PSH, URG = 0x02, 0x10, 0x04, 0x01, 0x08, 0x20


class Cap:
    """Decoded view of an Ethernet capture made by make_captures.sh."""

    def __init__(self, path: str):
        header(path)
        self.path = path
        with open(path, "rb") as f:
            r = dpkt.pcap.Reader(f)
            self.linktype = r.datalink()
            self.snaplen = r.snaplen
            self.recs = list(r)
        self.n = len(self.recs)
        self.tcp = []   # (ts, src, dst, sport, dport, flags, payload)
        self.udp = []   # (ts, src, dst, sport, dport, payload)
        self.icmp = []  # (ts, src, dst, type, code, quoted_proto, quoted_dport)
        self.other = collections.Counter()
        for ts, buf in self.recs:
            e = dpkt.ethernet.Ethernet(buf)
            ipp = e.data
            if isinstance(ipp, dpkt.ip.IP):
                src, dst = ip4(ipp.src), ip4(ipp.dst)
            elif isinstance(ipp, dpkt.ip6.IP6):
                src, dst = ip6(ipp.src), ip6(ipp.dst)
            else:
                self.other[type(ipp).__name__] += 1
                continue
            l4 = ipp.data
            if isinstance(l4, dpkt.tcp.TCP):
                self.tcp.append((ts, src, dst, l4.sport, l4.dport, l4.flags, bytes(l4.data)))
            elif isinstance(l4, dpkt.udp.UDP):
                self.udp.append((ts, src, dst, l4.sport, l4.dport, bytes(l4.data)))
            elif isinstance(l4, dpkt.icmp.ICMP):
                qproto = qdport = None
                if l4.type == 3:
                    inner = l4.data.data
                    if isinstance(inner, dpkt.ip.IP):
                        qproto = inner.p
                        qdport = struct.unpack("!H", bytes(inner)[inner.hl * 4 + 2:inner.hl * 4 + 4])[0]
                self.icmp.append((ts, src, dst, l4.type, l4.code, qproto, qdport))
            elif isinstance(l4, dpkt.icmp6.ICMP6):
                self.other[f"ICMP6 type {l4.type}"] += 1
            else:
                self.other[f"IP proto {getattr(ipp, 'p', getattr(ipp, 'nxt', '?'))}"] += 1
        ts0, ts1 = self.recs[0][0], self.recs[-1][0]
        print(f"  linktype {self.linktype}, snaplen {self.snaplen}, {self.n} packets, "
              f"{len(self.tcp)} TCP, {len(self.udp)} UDP, {len(self.icmp)} ICMPv4, other "
              f"{dict(self.other)}; duration {ts1 - ts0:.3f} s")

    def probes(self, scanner: str, target: str, flag_filter) -> list:
        return [t for t in self.tcp if t[1] == scanner and t[2] == target and flag_filter(t[5])]

    def syn_scan_outcome(self, scanner: str, target: str):
        probes = self.probes(scanner, target, lambda f: f & (SYN | ACK) == SYN)
        probed = {t[4] for t in probes}
        synack = {t[3] for t in self.tcp
                  if t[1] == target and t[2] == scanner and t[5] & (SYN | ACK) == SYN | ACK}
        rst = {t[3] for t in self.tcp
               if t[1] == target and t[2] == scanner and t[5] & RST and not t[5] & SYN}
        per_port = collections.Counter(t[4] for t in probes)
        print(f"  probes (SYN w/o ACK) {scanner} -> {target}: {len(probes)} packets, "
              f"{len(probed)} distinct dports {fmt_ports(probed)}")
        print(f"  SYN-ACK from ports {fmt_ports(synack)}; RST from {len(rst)} ports; "
              f"ports probed more than once: {fmt_ports([p for p, c in per_port.items() if c > 1])}")
        return probed, synack, rst, per_port


S4, T4, S6, T6 = "10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"
LAB = {S4, T4, "10.77.0.3", S6, T6}
SWEEP_HOSTS = {f"10.77.0.{i}" for i in range(10, 50)}          # 40 sweep targets
EXT = "198.51.100."                                           # RFC 5737 scanners
MAX_REAL_BYTES = 200_000  # size limit for the captures added with the sweeps


def only_our_hosts(c: "Cap", extra=()) -> None:
    allowed = LAB | set(extra)
    hosts = {t[1] for t in c.tcp} | {t[2] for t in c.tcp} | {t[1] for t in c.udp} \
        | {t[2] for t in c.udp} | {t[1] for t in c.icmp} | {t[2] for t in c.icmp}
    v4 = {h for h in hosts if ":" not in h}
    shown = " ".join(([fmt_hosts(v4)] if v4 else []) + sorted(hosts - v4, key=_addr_key))
    check(hosts <= allowed, f"only lab addresses appear: {shown}")
    check(c.linktype == 1, "linktype 1 (Ethernet)")


def _addr_key(a: str):
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    return (fam, socket.inet_pton(fam, a))


def check_nmap_syn_scan(c: "Cap") -> None:
    only_our_hosts(c)
    probed, synack, rst, _ = c.syn_scan_outcome(S4, T4)
    check(probed == rng(1, 1000), "1000 distinct dports 1-1000 probed by 10.77.0.1")
    check(synack == {22, 80, 443}, "open (SYN-ACK) = {22,80,443}")
    check(rst == rng(1, 1000) - {22, 80, 443}, "closed (RST-ACK) = the other 997")
    scan_rst = {t[4] for t in c.tcp if t[1] == S4 and t[5] & RST}
    check(scan_rst == {22, 80, 443}, "scanner RSTs the 3 half-open connections")
    check(not c.udp and not c.icmp, "no UDP / ICMPv4")


def check_nmap_connect_scan(c: "Cap") -> None:
    only_our_hosts(c)
    probed, synack, rst, _ = c.syn_scan_outcome(S4, T4)
    check(probed == rng(1, 1000), "1000 distinct dports 1-1000 probed by 10.77.0.1")
    check(synack == {22, 80, 443}, "open (SYN-ACK) = {22,80,443}")
    check(rst == rng(1, 1000) - {22, 80, 443}, "closed (RST-ACK) = the other 997")
    acked = {t[4] for t in c.tcp if t[1] == S4 and t[5] == ACK}
    check({22, 80, 443} <= acked, "full 3-way handshake (bare ACK from scanner) on 22,80,443")
    syn_opts = [t for t in c.tcp if t[1] == S4 and t[5] & (SYN | ACK) == SYN]
    srcports = {t[3] for t in syn_opts}
    print(f"  connect() SYNs use {len(srcports)} distinct source ports")


def check_nmap_udp_scan(c: "Cap") -> None:
    only_our_hosts(c)
    uprobes = [u for u in c.udp if u[1] == S4 and u[2] == T4]
    udports = {u[4] for u in uprobes}
    unreach = {i[6] for i in c.icmp if i[1] == T4 and i[3] == 3 and i[4] == 3 and i[5] == 17}
    answers = [u for u in c.udp if u[1] == T4 and u[2] == S4]
    print(f"  UDP probes {len(uprobes)} packets to {fmt_ports(udports)}; ICMP 3/3 for "
          f"{fmt_ports(unreach)}; UDP answers from {fmt_ports({u[3] for u in answers})} ({len(answers)})")
    check(udports == rng(50, 60), "UDP probes to 50-60 (11 ports)")
    check(unreach == rng(50, 60) - {53}, "ICMP port unreachable for the 10 closed ports")
    check({u[3] for u in answers} == {53} and len(answers) >= 1, "UDP 53 answers (open)")
    check(not c.tcp, "no TCP")


def check_nmap_syn_filtered(c: "Cap") -> None:
    only_our_hosts(c)
    probed, synack, rst, per_port = c.syn_scan_outcome(S4, T4)
    check(probed == rng(1, 100), "100 distinct dports 1-100 probed")
    check(synack == {80}, "only port 80 answers SYN-ACK")
    check(rst == set(), "no RST from the target (nothing closed)")
    tgt_tcp = [t for t in c.tcp if t[1] == T4]
    check(all(t[3] == 80 for t in tgt_tcp), "every TCP packet from the target is from port 80")
    check(not c.icmp, "no ICMP errors (silent drop)")
    silent = rng(1, 100) - {80}
    check(all(per_port[p] == 2 for p in silent),
          "each of the 99 filtered ports got exactly 2 SYNs (probe + 1 retry)")


def check_nmap_syn_scan_ipv6(c: "Cap") -> None:
    only_our_hosts(c)
    probed, synack, rst, _ = c.syn_scan_outcome(S6, T6)
    check(probed == rng(1, 200), "200 distinct dports 1-200 probed by fd77::1")
    check(synack == {22, 80}, "open = {22,80}")
    check(rst == rng(1, 200) - {22, 80}, "closed = the other 198")
    check(not any(t[1] == S4 for t in c.tcp), "no IPv4 TCP")


def check_nmap_stealth_scans(c: "Cap") -> None:
    only_our_hosts(c)
    kinds = {"FIN": FIN, "NULL": 0, "XMAS": FIN | PSH | URG}
    sport_kind = {}
    for name, fl in kinds.items():
        pr = c.probes(S4, T4, lambda f, fl=fl: f == fl)
        for t in pr:
            sport_kind[t[3]] = name
        ports = {t[4] for t in pr}
        rst_ports = {t[3] for t in c.tcp if t[1] == T4 and t[5] & RST
                     and sport_kind.get(t[4]) == name}
        print(f"  {name:4s} (flags 0x{fl:02x}): {len(pr)} probes, dports {fmt_ports(ports)}, "
              f"RST from {len(rst_ports)} ports, silent {fmt_ports(ports - rst_ports)}")
        check(ports == rng(1, 50), f"{name} scan probes 1-50")
        check(rst_ports == rng(1, 50) - {22}, f"{name}: RST for 49 closed ports, 22 silent (open|filtered)")
    check(not c.probes(S4, T4, lambda f: f & SYN), "no SYN from the scanner")


def check_nmap_ack_maimon_scans(c: "Cap") -> None:
    only_our_hosts(c)
    for name, fl in {"ACK": ACK, "MAIMON": FIN | ACK}.items():
        pr = c.probes(S4, T4, lambda f, fl=fl: f == fl)
        sports = {t[3] for t in pr}
        ports = {t[4] for t in pr}
        rst_ports = {t[3] for t in c.tcp if t[1] == T4 and t[5] & RST and t[4] in sports}
        print(f"  {name:6s} (flags 0x{fl:02x}): {len(pr)} probes, dports {fmt_ports(ports)}, "
              f"RST from {len(rst_ports)} ports")
        check(ports == rng(1, 50), f"{name} scan probes 1-50")
        check(rst_ports == rng(1, 50), f"{name}: every probe answered by RST (Linux target)")
    check(not c.probes(S4, T4, lambda f: f & SYN), "no SYN from the scanner")


def check_benign_clients(c: "Cap") -> None:
    only_our_hosts(c)
    clients = {"10.77.0.1", "10.77.0.3", "fd77::1"}
    init = collections.defaultdict(set)
    for t in c.tcp:
        if t[5] & (SYN | ACK) == SYN:
            init[(t[1], "tcp")].add(t[4])
    for u in c.udp:
        if u[1] in clients:
            init[(u[1], "udp")].add(u[4])
    per_src = collections.defaultdict(set)
    for t in c.tcp:
        per_src[t[1]].add(t[4])
    for u in c.udp:
        per_src[u[1]].add(u[4])
    for k in sorted(init):
        print(f"  initiator {k[0]} {k[1]} -> dports {sorted(init[k])}")
    for src in sorted(per_src):
        print(f"  all packets from {src}: {len(per_src[src])} distinct dports")
    check(dict(init) == {("10.77.0.1", "tcp"): {22, 80, 443}, ("fd77::1", "tcp"): {80},
                         ("10.77.0.3", "udp"): {53}},
          "initiators: 10.77.0.1 tcp {22,80,443}; fd77::1 tcp {80}; 10.77.0.3 udp {53}")
    check(all(len(per_src[s]) <= 3 for s in clients),
          "each client address sends to <= 3 distinct dports (all packets)")
    syns = [t for t in c.tcp if t[5] & (SYN | ACK) == SYN]
    synacks = [t for t in c.tcp if t[5] & (SYN | ACK) == SYN | ACK]
    check(len(syns) == 29 and len(synacks) == 29, f"29 TCP connections, all accepted ({len(syns)}/{len(synacks)})")
    check(len({(t[1], t[3]) for t in syns}) == 29, "one SYN per connection (no retransmits)")
    http_get = [t for t in c.tcp if t[4] == 80 and t[6].startswith(b"GET ")]
    http_ok = [t for t in c.tcp if t[3] == 80 and t[6].startswith(b"HTTP/1.0 200")]
    check(len(http_get) == 23 and len(http_ok) == 23, "23 HTTP GETs (20 IPv4 + 3 IPv6), 23 x 200 OK")
    q = [u for u in c.udp if u[1] == "10.77.0.3" and u[4] == 53]
    a = [u for u in c.udp if u[2] == "10.77.0.3" and u[3] == 53]
    check(len(q) == 5 and len(a) == 5, "5 DNS queries, 5 replies")
    check(not any(t[5] & RST for t in c.tcp), "no RST at all")
    check(not c.icmp, "no ICMPv4")

def syns(c: "Cap", src=None) -> list:
    """Connection attempts: TCP SYN without ACK (optionally from one source)."""
    return [t for t in c.tcp if t[5] & (SYN | ACK) == SYN and (src is None or t[1] == src)]


def host_key(h: str) -> int:
    return int(h.rsplit(".", 1)[1])


def fmt_hosts(hosts) -> str:
    """10.77.0.{10-49} style summary of a set of 10.77.0.x / 198.51.100.x."""
    by_net = collections.defaultdict(list)
    for h in hosts:
        net, last = h.rsplit(".", 1)
        by_net[net].append(int(last))
    return " ".join(f"{net}.{fmt_ports(v)}" for net, v in sorted(by_net.items())) or "{}"


def check_size(c: "Cap") -> None:
    size = os.path.getsize(c.path)
    check(size < MAX_REAL_BYTES, f"file is small ({size} < {MAX_REAL_BYTES} bytes)")


def check_nmap_host_sweep(c: "Cap") -> None:
    only_our_hosts(c, SWEEP_HOSTS)
    check_size(c)
    pr = syns(c)
    dsts = {t[2] for t in pr}
    per_host = collections.Counter(t[2] for t in pr)
    print(f"  SYNs: {len(pr)} from {sorted({t[1] for t in pr})} (source ports "
          f"{sorted({t[3] for t in pr})}) to {len(dsts)} hosts {fmt_hosts(dsts)}, "
          f"dports {fmt_ports({t[4] for t in pr})}; hosts SYN'd more than once: "
          f"{fmt_hosts([h for h, n in per_host.items() if n > 1])}")
    check({t[1] for t in pr} == {S4}, "every SYN comes from 10.77.0.1 (one source)")
    check({t[4] for t in pr} == {445}, "every SYN goes to dport 445")
    check(dsts == SWEEP_HOSTS, "40 distinct destination hosts 10.77.0.10-49 on 445")
    synack = {t[1] for t in c.tcp if t[5] & (SYN | ACK) == SYN | ACK and t[3] == 445 and t[2] == S4}
    rst = {t[1] for t in c.tcp if t[5] & RST and t[5] & ACK and t[3] == 445 and t[2] == S4}
    print(f"  SYN-ACK from {fmt_hosts(synack)}; RST-ACK from {len(rst)} hosts")
    check(synack == {"10.77.0.10", "10.77.0.25", "10.77.0.40"},
          "445 open (SYN-ACK) on exactly 10.77.0.10, .25, .40")
    check(rst == SWEEP_HOSTS - synack, "RST-ACK (closed) from the other 37 hosts")
    scan_rst = {t[2] for t in c.tcp if t[1] == S4 and t[5] == RST}
    check(scan_rst == synack, "scanner RSTs the 3 half-open connections")
    check(not c.udp and not c.icmp, "no UDP / ICMPv4")
    check(T4 not in {t[1] for t in c.tcp} | {t[2] for t in c.tcp}, "10.77.0.2 is not involved")


def check_nmap_ping_sweep(c: "Cap") -> None:
    only_our_hosts(c, SWEEP_HOSTS)
    check_size(c)
    req = [i for i in c.icmp if i[3] == 8]
    rep = [i for i in c.icmp if i[3] == 0]
    print(f"  echo requests: {len(req)} from {sorted({i[1] for i in req})} to "
          f"{len({i[2] for i in req})} hosts {fmt_hosts({i[2] for i in req})}; echo replies: "
          f"{len(rep)} from {len({i[1] for i in rep})} hosts; other ICMP types "
          f"{sorted({i[3] for i in c.icmp} - {0, 8})}")
    check({i[1] for i in req} == {S4}, "every echo request comes from 10.77.0.1")
    check({i[2] for i in req} == SWEEP_HOSTS, "40 distinct hosts 10.77.0.10-49 echo-requested")
    check({i[1] for i in rep} == SWEEP_HOSTS and {i[2] for i in rep} == {S4},
          "all 40 hosts send an echo reply to 10.77.0.1")
    check({i[3] for i in c.icmp} == {0, 8}, "only ICMP echo request/reply (no other ICMP)")
    check(not c.tcp and not c.udp, "no TCP / UDP (no -sn TCP probes)")


def check_distributed_port_sweep(c: "Cap") -> None:
    scanners = {f"{EXT}{k}" for k in range(1, 9)}
    only_our_hosts(c, SWEEP_HOSTS | scanners)
    check_size(c)
    pr = syns(c)
    per_src = collections.defaultdict(set)
    per_src_n = collections.Counter()
    for t in pr:
        per_src[t[1]].add(t[2])
        per_src_n[t[1]] += 1
    for src in sorted(per_src, key=host_key):
        print(f"  {src}: {per_src_n[src]} SYNs to {len(per_src[src])} hosts {fmt_hosts(per_src[src])}")
    dsts = {t[2] for t in pr}
    check(set(per_src) == scanners, "SYN sources are exactly 198.51.100.1-8")
    check({t[4] for t in pr} == {3389}, "every SYN goes to dport 3389")
    check(dsts == SWEEP_HOSTS, "40 distinct targets 10.77.0.10-49 on 3389")
    slices = {f"{EXT}{k}": {f"10.77.0.{i}" for i in range(5 * k + 5, 5 * k + 10)} for k in range(1, 9)}
    check(all(per_src[s] == slices[s] for s in scanners),
          "198.51.100.K hits exactly 5 hosts, 10.77.0.(5K+5)-(5K+9); slices are disjoint")
    check(all(per_src_n[s] == 5 for s in scanners),
          "exactly 5 SYNs per source (one per host, --max-retries 0); 40 in all")
    rst = {(t[1], t[2]) for t in c.tcp if t[5] & (RST | ACK) == RST | ACK and t[3] == 3389}
    check(rst == {(t[2], t[1]) for t in pr}, "every target answers RST-ACK (3389 closed) to its scanner")
    check(not any(t[5] & (SYN | ACK) == SYN | ACK for t in c.tcp), "no SYN-ACK (nothing open)")
    check(not any(S4 in (t[1], t[2]) for t in c.tcp), "10.77.0.1 sends no TCP")
    check(not c.udp and not c.icmp, "no UDP / ICMPv4")


def check_exposed_host_probe(c: "Cap") -> None:
    a, b = f"{EXT}20", f"{EXT}21"
    only_our_hosts(c, {a, b})
    check_size(c)
    pr = syns(c)
    for src in sorted({t[1] for t in pr}, key=host_key):
        mine = [t for t in pr if t[1] == src]
        print(f"  {src}: {len(mine)} SYNs to {sorted({t[2] for t in mine})} dports "
              f"{sorted(t[4] for t in mine)}")
    check({t[1] for t in pr} == {a, b}, "connection attempts come only from 198.51.100.20 and .21")
    check({t[2] for t in pr} == {T4}, "every attempt goes to 10.77.0.2")
    check(sorted(t[4] for t in pr if t[1] == a) == [22, 80, 443, 3306, 8080],
          "198.51.100.20: exactly 5 attempts, dports 22,80,443,3306,8080 (one each)")
    check(sorted(t[4] for t in pr if t[1] == b) == [80, 443],
          "198.51.100.21: exactly 2 attempts, dports 80,443 (one each)")
    synack = {(t[2], t[3]) for t in c.tcp if t[1] == T4 and t[5] & (SYN | ACK) == SYN | ACK}
    rst = {(t[2], t[3]) for t in c.tcp if t[1] == T4 and t[5] & (RST | ACK) == RST | ACK}
    check(synack == {(a, 22), (a, 80), (a, 443), (b, 80), (b, 443)},
          "SYN-ACK: .20 from 22,80,443; .21 from 80,443")
    check(rst == {(a, 3306), (a, 8080)}, "RST-ACK (closed): .20 from 3306, 8080")
    check(not c.udp and not c.icmp, "no UDP / ICMPv4")


REAL_CHECKS = {
    "nmap_syn_scan": check_nmap_syn_scan,
    "nmap_connect_scan": check_nmap_connect_scan,
    "nmap_udp_scan": check_nmap_udp_scan,
    "nmap_syn_filtered": check_nmap_syn_filtered,
    "nmap_syn_scan_ipv6": check_nmap_syn_scan_ipv6,
    "nmap_stealth_scans": check_nmap_stealth_scans,
    "benign_clients": check_benign_clients,
    "nmap_host_sweep": check_nmap_host_sweep,
    "nmap_ping_sweep": check_nmap_ping_sweep,
    "distributed_port_sweep": check_distributed_port_sweep,
    "exposed_host_probe": check_exposed_host_probe,
    "nmap_ack_maimon_scans": check_nmap_ack_maimon_scans,
}


def verify_real(directory: str = HERE, names=None) -> None:
    for name in names or REAL_CHECKS:
        REAL_CHECKS[name](Cap(os.path.join(directory, f"{name}.pcap")))


# ---------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------
T0 = 1_700_000_000


def raw_pcap(path: str):
    """Minimal classic pcap reader: returns (endian, magic, snaplen, linktype,
    [(sec, frac, caplen, origlen, data)], trailing_error)."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    m = data[:4]
    endian = "<" if m in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    magic, vmaj, vmin, _, _, snap, lt = struct.unpack(endian + "IHHiIII", data[:24])
    off, recs, err = 24, [], None
    while off < len(data):
        if off + 16 > len(data):
            err = "truncated record header"
            break
        sec, frac, cap, orig = struct.unpack(endian + "IIII", data[off:off + 16])
        if cap > max(snap, 262144):
            err = f"caplen {cap:#x} > snaplen"
            break
        if off + 16 + cap > len(data):
            err = f"truncated record data ({len(data) - off - 16} of {cap} bytes)"
            break
        recs.append((sec, frac, cap, orig, data[off + 16:off + 16 + cap]))
        off += 16 + cap
    return endian, magic, snap, lt, recs, err


def dpkt_read(path: str):
    with open(path, "rb") as f:
        blob = f.read()
    if path.endswith(".gz"):
        blob = gzip.decompress(blob)
    rd = dpkt.pcapng.Reader(io.BytesIO(blob)) if ".pcapng" in path else dpkt.pcap.Reader(io.BytesIO(blob))
    out, err = [], None
    try:
        for ts, buf in rd:
            out.append((ts, buf))
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    return rd, out, err


def tcp_of(ipp):
    return ipp.data if isinstance(ipp.data, dpkt.tcp.TCP) else None


def edge_basic(name: str, lt: int, n: int, *, endian="<", snap=65535):
    path = os.path.join(EDGE, name)
    header(path)
    e, magic, s, l, recs, err = raw_pcap(path)
    print(f"  endian {'LE' if e == '<' else 'BE'}, magic {magic:#010x}, snaplen {s}, linktype {l}, "
          f"{len(recs)} complete records{', then ' + err if err else ''}")
    check(l == lt and e == endian and s == snap, f"linktype {lt}, {'LE' if endian == '<' else 'BE'}, snaplen {snap}")
    check(len(recs) == n, f"{n} complete records")
    return recs, err


def verify_edge() -> None:
    # vlan
    recs, _ = edge_basic("vlan_qinq.pcap", 1, 4)
    tags = []
    for r in recs:
        d = r[4]
        et = struct.unpack("!H", d[12:14])[0]
        chain, off = [], 14
        while et in (0x8100, 0x88A8, 0x9100):
            tci = struct.unpack("!H", d[off:off + 2])[0]
            chain.append((hex(et), tci & 0xFFF))
            et = struct.unpack("!H", d[off + 2:off + 4])[0]
            off += 4
        tags.append((chain, hex(et)))
    print(f"  tag chains: {tags}")
    check(tags == [([("0x8100", 100)], "0x800"), ([("0x88a8", 200), ("0x8100", 100)], "0x800"),
                   ([("0x9100", 300)], "0x800"), ([("0x9100", 300), ("0x8100", 100)], "0x86dd")],
          "tag chains 8100 / 88a8+8100 / 9100 / 9100+8100(IPv6)")
    _, pk, _ = dpkt_read(os.path.join(EDGE, "vlan_qinq.pcap"))
    dports = []
    for ts, buf in pk:
        ipp = dpkt.ethernet.Ethernet(buf).data
        dports.append(ipp.data.dport if isinstance(ipp, (dpkt.ip.IP, dpkt.ip6.IP6)) else None)
    check(dports == [22, 80, 443, 8080], f"dpkt decodes inner TCP SYN dports {dports}")

    # SLL / SLL2
    for name, lt, hl in (("linux_sll.pcap", 113, 16), ("linux_sll2.pcap", 276, 20)):
        recs, _ = edge_basic(name, lt, 3)
        protos = [struct.unpack("!H", (r[4][14:16] if lt == 113 else r[4][0:2]))[0] for r in recs]
        vers = [r[4][hl] >> 4 for r in recs]
        check(protos == [0x0800, 0x86DD, 0x0800] and vers == [4, 6, 4],
              f"protocols {[hex(p) for p in protos]}, IP versions {vers}; header {hl} bytes")
        pt = [struct.unpack("!H", r[4][0:2])[0] if lt == 113 else r[4][10] for r in recs]
        check(pt == [0, 0, 4], f"pkttype {pt} (0=host,4=outgoing)")

    # raw
    for name, lt, vers in (("raw_ip.pcap", 101, [4, 6, 4, 6]), ("raw_ipv4.pcap", 228, [4, 4]),
                           ("raw_ipv6.pcap", 229, [6, 6])):
        recs, _ = edge_basic(name, lt, len(vers))
        got = [r[4][0] >> 4 for r in recs]
        check(got == vers, f"IP versions {got}")

    # loopback
    for name, lt, en in (("null_loopback.pcap", 0, "<"), ("loop.pcap", 108, "!")):
        recs, _ = edge_basic(name, lt, 4)
        fams = [struct.unpack(en + "I", r[4][:4])[0] for r in recs]
        vers = [r[4][4] >> 4 for r in recs]
        check(fams == [2, 24, 28, 30] and vers == [4, 6, 6, 6],
              f"families {fams} ({'little-endian' if en == '<' else 'network order'}), versions {vers}")

    # IPv4 options / fragments
    recs, _ = edge_basic("ipv4_options_fragments.pcap", 1, 4)
    info = []
    for r in recs:
        ipb = r[4][14:]
        ihl = ipb[0] & 0xF
        ff = struct.unpack("!H", ipb[6:8])[0]
        info.append((ihl, bool(ff & 0x2000), ff & 0x1FFF, ipb[9]))
    print(f"  (IHL, MF, frag offset [8-byte units], proto): {info}")
    check(info == [(6, False, 0, 6), (15, False, 0, 6), (5, True, 0, 6), (5, False, 3, 6)],
          "IHL 6 and 15 SYNs; first frag (MF, off 0); non-first frag (off 3 = 24 bytes)")
    f1 = recs[2][4][14 + 20:]
    check(struct.unpack("!HH", f1[:4]) == (40000, 80) and f1[13] == SYN,
          "first fragment carries TCP 40000->80 SYN")

    # IPv6 ext headers
    recs, _ = edge_basic("ipv6_ext_headers.pcap", 1, 3)
    chains = []
    for r in recs:
        d = r[4][14:]
        nh, off, chain = d[6], 40, []
        frag = None
        while nh in (0, 43, 44, 60):
            chain.append(nh)
            if nh == 44:
                fo = struct.unpack("!H", d[off + 2:off + 4])[0]
                frag = (fo >> 3, fo & 1, struct.unpack("!I", d[off + 4:off + 8])[0])
                nh, off = d[off], off + 8
            else:
                nh, off = d[off], off + 8 * (d[off + 1] + 1)
        chains.append((chain, nh, frag))
    print(f"  (ext chain, final nh, (frag offset units, M, id)): {chains}")
    check(chains[0] == ([0, 60, 43], 6, None), "HBH -> DestOpt -> Routing -> TCP")
    check(chains[1] == ([44], 6, (0, 1, 0xABCDEF01)) and chains[2] == ([44], 6, (3, 0, 0xABCDEF01)),
          "Fragment header: first (off 0, M=1) and non-first (off 3, M=0), id 0xabcdef01")

    # ICMP errors
    recs, _ = edge_basic("icmp_errors.pcap", 1, 8)
    _, pk, _ = dpkt_read(os.path.join(EDGE, "icmp_errors.pcap"))
    desc = []
    for ts, buf in pk:
        ipp = dpkt.ethernet.Ethernet(buf).data
        l4 = ipp.data
        if isinstance(l4, dpkt.icmp.ICMP):
            q = ""
            if l4.type == 3:
                inner = bytes(l4.data)[4:]
                ihl = (inner[0] & 0xF) * 4
                q = f" quoting proto {inner[9]} dport {struct.unpack('!H', inner[ihl + 2:ihl + 4])[0]}" \
                    f" ({len(inner)} bytes)"
            desc.append(f"icmp {l4.type}/{l4.code}{q}")
        elif isinstance(l4, dpkt.icmp6.ICMP6):
            inner = bytes(l4.data)[4:]
            desc.append(f"icmp6 {l4.type}/{l4.code} quoting nh {inner[6]} dport "
                        f"{struct.unpack('!H', inner[42:44])[0]} ({len(inner)} bytes)")
        else:
            desc.append(type(l4).__name__.lower())
    print("  " + "; ".join(desc))
    check(desc == ["udp", "icmp 3/3 quoting proto 17 dport 33434 (28 bytes)", "tcp",
                   "icmp 3/13 quoting proto 6 dport 445 (28 bytes)", "udp",
                   "icmp6 1/4 quoting nh 17 dport 33434 (48 bytes)", "icmp 8/0", "icmp 0/0"],
          "probe/error pairs + echo request/reply as documented")

    # mapped + twin
    r6, _ = edge_basic("mapped_ipv6.pcap", 1, 60)
    r4, _ = edge_basic("ipv4_twin_scan.pcap", 1, 60)
    p6 = [struct.unpack("!H", r[4][14 + 40 + 2:14 + 40 + 4])[0] for r in r6]
    p4 = [struct.unpack("!H", r[4][14 + 20 + 2:14 + 20 + 4])[0] for r in r4]
    src6 = {ip6(r[4][14 + 8:14 + 24]) for r in r6}
    dst6 = {ip6(r[4][14 + 24:14 + 40]) for r in r6}
    check(p6 == p4 == list(range(1, 61)), "60 distinct dports 1-60, same order in both")
    check(src6 == {"::ffff:10.1.2.3"} and dst6 == {"::ffff:10.1.2.4"}, f"v4-mapped {src6} -> {dst6}")
    check([(r[0], r[1]) for r in r6] == [(r[0], r[1]) for r in r4], "identical timestamps")
    check((r6[0][0], r6[0][1], r6[-1][0], r6[-1][1]) == (T0, 0, T0, 590000),
          "ts 1700000000.000000 .. 1700000000.590000 (10 ms steps)")

    # truncated snaplen
    recs, _ = edge_basic("truncated_snaplen.pcap", 1, 4, snap=40)
    cl = [(r[2], r[3]) for r in recs]
    print(f"  (caplen, len): {cl}")
    check(cl == [(40, 54), (40, 66), (40, 74), (40, 72)], "caplen 40 < len on all 4 records")
    check(recs[1][4][14] == 0x48, "record 1: IPv4 IHL 8, only 26 of 32 header bytes captured")

    # truncated file / corrupt record
    recs, err = edge_basic("truncated_file.pcap", 1, 2)
    check(err is not None and "20 of 54" in err, f"ends inside record 2: {err}")
    recs, err = edge_basic("corrupt_record.pcap", 1, 2)
    check(err is not None and "0x7fffffff" in err, f"record 2 header: {err}")
    for name in ("truncated_file.pcap", "corrupt_record.pcap"):
        _, pk, derr = dpkt_read(os.path.join(EDGE, name))
        print(f"  dpkt on {name}: {len(pk)} packets, error={derr}")

    # big endian
    recs, _ = edge_basic("nanosecond_be.pcap", 1, 3, endian=">")
    check([(r[0], r[1]) for r in recs] == [(T0, 123456789), (T0 + 1, 1), (T0 + 2, 999999999)],
          "ns timestamps .123456789 / +1.000000001 / +2.999999999")
    recs, _ = edge_basic("microsecond_be.pcap", 1, 3, endian=">")
    check([(r[0], r[1]) for r in recs] == [(T0, 123456), (T0 + 1, 1), (T0 + 2, 999999)],
          "us timestamps .123456 / +1.000001 / +2.999999")
    for name in ("nanosecond_be.pcap", "microsecond_be.pcap"):
        rd, pk, derr = dpkt_read(os.path.join(EDGE, name))
        print(f"  dpkt ts: {[repr(t) for t, _ in pk]}")

    # gz
    for name in ("syn_scan.pcap.gz", "syn_scan.pcapng.gz"):
        path = os.path.join(EDGE, name)
        header(path)
        with open(path, "rb") as f:
            check(f.read(2) == b"\x1f\x8b", "gzip magic")
        _, pk, derr = dpkt_read(path)
        dp = []
        for ts, buf in pk:
            ipp = dpkt.ethernet.Ethernet(buf).data
            if ip4(ipp.src) == "10.9.9.9" and ip4(ipp.dst) == "10.9.9.10" and ipp.data.flags == SYN:
                dp.append(ipp.data.dport)
        check(derr is None and dp == list(range(1, 101)), f"100 SYNs 10.9.9.9 -> 10.9.9.10 ports 1-100 ({len(pk)} pkts)")
        check(abs(pk[-1][0] - (T0 + 0.099)) < 1e-6, f"last ts 1700000000.099 ({pk[-1][0]!r})")

    # malformed
    recs, _ = edge_basic("malformed.pcap", 1, 9)
    print(f"  caplens: {[r[2] for r in recs]}")
    check([r[2] for r in recs] == [62, 62, 54, 54, 74, 54, 0, 10, 54], "record sizes as documented")
    d = [r[4] for r in recs]
    check(d[2][14] == 0x43 and struct.unpack("!H", d[3][16:18])[0] == 12
          and struct.unpack("!H", d[4][18:20])[0] == 1000 and d[5][14 + 20 + 12] >> 4 == 2,
          "IHL=3; total_length=12; IPv6 plen=1000; TCP doff=2")

    # multi-section pcapng
    verify_pcapng()


def parse_pcapng(blob: bytes):
    """Hand-rolled pcapng walker: yields dicts per block (handles per-section
    byte order, if_tsresol, EPB/SPB/PB)."""
    off, e, ifaces, out, section = 0, "<", [], [], -1
    while off < len(blob):
        btype = struct.unpack("<I", blob[off:off + 4])[0]
        if btype == 0x0A0D0D0A:
            bom = blob[off + 8:off + 12]
            e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces, section = [], section + 1
        btype, blen = struct.unpack(e + "II", blob[off:off + 8])
        body = blob[off + 8:off + blen - 4]
        assert struct.unpack(e + "I", blob[off + blen - 4:off + blen])[0] == blen
        if btype == 0x0A0D0D0A:
            out.append(dict(block="SHB", section=section, endian="LE" if e == "<" else "BE"))
        elif btype == 1:
            lt, _, snap = struct.unpack(e + "HHI", body[:8])
            res = 6
            o = 8
            while o + 4 <= len(body):
                code, ln = struct.unpack(e + "HH", body[o:o + 4])
                if code == 0:
                    break
                if code == 9:
                    res = body[o + 4]
                o += 4 + ln + (-ln % 4)
            unit = (2 ** -(res & 0x7F)) if res & 0x80 else 10 ** -res
            ifaces.append((lt, res))
            out.append(dict(block="IDB", section=section, linktype=lt, tsresol=res))
        elif btype in (6, 2):
            if btype == 6:
                ifid, hi, lo, cap, orig = struct.unpack(e + "IIIII", body[:20])
                data = body[20:20 + cap]
            else:
                ifid, drops, hi, lo, cap, orig = struct.unpack(e + "HHIIII", body[:20])
                data = body[20:20 + cap]
            lt, res = ifaces[ifid]
            units = (hi << 32) | lo
            if res & 0x80:
                sec, rem = divmod(units, 2 ** (res & 0x7F))
                frac = f"{rem}/2^{res & 0x7F}"
            else:
                sec, rem = divmod(units, 10 ** res)
                frac = f"{rem:0{res}d}"
            out.append(dict(block="EPB" if btype == 6 else "PB", section=section, if_id=ifid, linktype=lt,
                            ts_units=units, ts=f"{sec}.{frac}" if not res & 0x80 else f"{sec} + {frac}",
                            data=data))
        elif btype == 3:
            orig = struct.unpack(e + "I", body[:4])[0]
            out.append(dict(block="SPB", section=section, if_id=0, linktype=ifaces[0][0],
                            data=body[4:4 + orig]))
        off += blen
    return out


def verify_pcapng() -> None:
    path = os.path.join(EDGE, "multi_section.pcapng")
    header(path)
    with open(path, "rb") as f:
        blocks = parse_pcapng(f.read())
    pk = []
    for b in blocks:
        desc = {k: v for k, v in b.items() if k != "data"}
        if "data" in b:
            d = b["data"]
            ipb = d[14:] if b["linktype"] == 1 else d
            off = 20 if ipb[0] >> 4 == 4 else 40
            desc["dport"] = struct.unpack("!H", ipb[off + 2:off + 4])[0]
            pk.append(desc)
        print("  ", desc)
    check([b["block"] for b in blocks] == ["SHB", "IDB", "IDB", "EPB", "EPB", "SPB", "PB", "EPB",
                                           "SHB", "IDB", "EPB", "EPB"], "block sequence")
    check([b.get("endian") for b in blocks if b["block"] == "SHB"] == ["LE", "BE"], "section 1 LE, section 2 BE")
    check([(b["linktype"], b["tsresol"]) for b in blocks if b["block"] == "IDB"] == [(1, 6), (101, 9), (1, 0x94)],
          "IDBs: Ethernet/usec, raw IP/if_tsresol=9, Ethernet/if_tsresol=0x94 (2^-20)")
    check([p["dport"] for p in pk] == [1001, 1002, 1003, 1004, 1005, 1006, 1007], "dports 1001..1007 in order")
    check([p.get("ts_units") for p in pk] == [1_700_000_000_000_001, 1_700_000_001_000_000_002, None,
                                              1_700_000_002_500_000, 1_700_000_002_750_000_000,
                                              (1_700_000_003 << 20) + (1 << 19), (1_700_000_004 << 20) + 1],
          "raw timestamps as documented")
    _, dk, derr = dpkt_read(path)
    print(f"  dpkt 1.9.8 reads {len(dk)} packets: {[repr(t) for t, _ in dk]} (error={derr})")


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="check real captures NAME.pcap in DIR (e.g. made by "
                    "make_captures.sh --out DIR) instead of pcaps/; the edge cases are skipped")
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help="only these real captures (and no edge cases)")
    args = ap.parse_args(argv)
    bad = [n for n in args.names if n not in REAL_CHECKS]
    if bad:
        ap.error(f"unknown capture(s) {bad}; known: {', '.join(REAL_CHECKS)}")
    verify_real(args.dir or HERE, args.names or None)
    if not args.dir and not args.names:
        verify_edge()
    print()
    if FAILURES:
        print(f"{len(FAILURES)} FAILED checks:")
        for f in FAILURES:
            print("  -", f)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
