"""Deterministic TCP/UDP conversations as Ethernet frames, written as classic pcap.

Shared by ``make_preset_captures.py`` and ``../benign/make_benign_captures.py``.

* Frames are built with scapy (field layout, checksums) and the file is written
  with ``struct``: little-endian classic pcap, magic 0xa1b2c3d4 (microseconds),
  version 2.4, snaplen 65535, linktype 1 (Ethernet), caplen == len.
* Nothing depends on the clock, the host or randomness: timestamps are integer
  microseconds given by the caller, ISNs are CRC32s of the connection's
  endpoints and start time, IPv4 ids are a per-sender counter in time order. Records are written
  sorted by timestamp (ties keep the order they were added in).
* A ``.gz`` path is written as one gzip member with mtime 0 and no file name.
* MAC addresses: a home_net IPv4 (or IPv4-mapped) host a.b.c.d has
  02:00:a:b:c:d (hex); every other address is behind the router 02:00:00:00:00:fe.
  TTL as seen on the wire: 64 for home_net hosts, 52 for outside hosts.
"""
from __future__ import annotations

import gzip
import ipaddress
import logging
import pathlib
import struct
import zlib

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
ROUTER_MAC = "02:00:00:00:00:fe"
HOME = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8")]

# options of a Linux connect() SYN / SYN-ACK (no timestamps, to keep frames small)
SYN_OPTS = SYNACK_OPTS = [("MSS", 1460), ("NOP", None), ("NOP", None), ("SAckOK", b""),
                          ("NOP", None), ("WScale", 7)]
NMAP_SYN_OPTS = [("MSS", 1460)]        # nmap -sS raw-socket SYN: window 1024, MSS only

US = 1_000_000


def _v4(ip):
    a = ipaddress.ip_address(ip)
    if a.version == 6:
        return a.ipv4_mapped
    return a


def is_home(ip):
    a = _v4(ip)
    return a is not None and any(a in n for n in HOME)


def mac_for(ip):
    if is_home(ip):
        return "02:00:" + ":".join(f"{b:02x}" for b in _v4(ip).packed)
    return ROUTER_MAC


def isn(*parts):
    return zlib.crc32(repr(parts).encode()) & 0xFFFFFFFF


class Capture:
    """Frames with timestamps; ``write(path)`` produces the pcap.

    Frames are built when written, in time order, so that each sender's IPv4 id
    counter runs forwards in packet time whatever order they were added in.
    """

    def __init__(self):
        self.records = []          # (t_us, order, kind, args)

    def tcp(self, t_us, src, sport, dst, dport, flags, seq=0, ack=0, payload=b"",
            window=64240, options=None):
        self.records.append((int(t_us), len(self.records), "tcp",
                             (src, sport, dst, dport, flags, seq, ack, payload, window,
                              options)))

    def udp(self, t_us, src, sport, dst, dport, payload):
        self.records.append((int(t_us), len(self.records), "udp",
                             (src, sport, dst, dport, payload)))

    def _frames(self):
        ip_ids = {}

        def ip(src, dst):
            ttl = 64 if is_home(src) else 52
            if ":" in src:
                return IPv6(src=src, dst=dst, hlim=ttl)
            ip_ids[src] = ip_ids.get(src, isn(src) & 0x7FFF) + 1
            return IP(src=src, dst=dst, ttl=ttl, id=ip_ids[src] & 0xFFFF, flags="DF")

        for t_us, _, kind, args in sorted(self.records, key=lambda r: (r[0], r[1])):
            if kind == "tcp":
                src, sport, dst, dport, flags, seq, ack, payload, window, options = args
                l4 = TCP(sport=sport, dport=dport, flags=flags, seq=seq & 0xFFFFFFFF,
                         ack=ack & 0xFFFFFFFF, window=window, options=options or [])
            else:
                src, sport, dst, dport, payload = args
                l4 = UDP(sport=sport, dport=dport)
            frame = Ether(src=mac_for(src), dst=mac_for(dst)) / ip(src, dst) / l4
            if payload:
                frame = frame / Raw(payload)
            yield t_us, bytes(frame)

    def to_bytes(self):
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
        for t_us, frame in self._frames():
            sec, usec = divmod(t_us, US)
            out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)))
            out.append(frame)
        return b"".join(out)

    def write(self, path):
        data = self.to_bytes()
        if str(path).endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        with open(path, "wb") as fh:
            fh.write(data)
        return len(data)


# --- conversations ------------------------------------------------------------

def syn_probe(cap, t, prober, pport, target, port, outcome, rtt=400):
    """A half-open probe (nmap -sS style): SYN, then the target's answer.

    outcome "open": SYN-ACK, and the prober resets the half-open connection;
    "closed": RST-ACK from the target; "filtered": no answer at all.
    """
    c = isn(prober, pport, target, port, t)
    cap.tcp(t, prober, pport, target, port, SYN, seq=c, window=1024, options=NMAP_SYN_OPTS)
    if outcome == "open":
        s = isn(target, port, prober, pport, t)
        cap.tcp(t + rtt, target, port, prober, pport, SYN | ACK, seq=s, ack=c + 1,
                options=SYNACK_OPTS)
        cap.tcp(t + rtt + 30, prober, pport, target, port, RST, seq=c + 1, window=0)
    elif outcome == "closed":
        cap.tcp(t + rtt, target, port, prober, pport, RST | ACK, seq=0, ack=c + 1, window=0)
    elif outcome != "filtered":
        raise ValueError(outcome)


def connect(cap, t, client, cport, server, sport, outcome="open", request=b"",
            response=b"", close="client_fin", rtt=400, think=200):
    """A connect() from client to server, as the kernel does it. Returns its last time.

    outcome "closed": SYN, then RST-ACK from the server (connection refused).
    outcome "open": three-way handshake, optional request and response (one
    segment each, each acknowledged), then close:
      "client_fin"  client FIN-ACK, server FIN-ACK, client ACK;
      "server_fin"  the same started by the server;
      "client_rst"  the client aborts with RST-ACK (SO_LINGER 0, a killed process);
      "none"        left open.
    """
    c = isn(client, cport, server, sport, t)
    cap.tcp(t, client, cport, server, sport, SYN, seq=c, options=SYN_OPTS)
    if outcome == "closed":
        cap.tcp(t + rtt, server, sport, client, cport, RST | ACK, seq=0, ack=c + 1, window=0)
        return t + rtt
    if outcome != "open":
        raise ValueError(outcome)
    s = isn(server, sport, client, cport, t)
    t += rtt
    cap.tcp(t, server, sport, client, cport, SYN | ACK, seq=s, ack=c + 1, options=SYNACK_OPTS)
    c += 1
    s += 1
    t += 30
    cap.tcp(t, client, cport, server, sport, ACK, seq=c, ack=s)
    if request:
        t += think
        cap.tcp(t, client, cport, server, sport, PSH | ACK, seq=c, ack=s, payload=request)
        c += len(request)
    if response:
        t += rtt
        cap.tcp(t, server, sport, client, cport, PSH | ACK, seq=s, ack=c, payload=response)
        s += len(response)
        t += 30
        cap.tcp(t, client, cport, server, sport, ACK, seq=c, ack=s)
    t += think
    if close == "client_fin":
        cap.tcp(t, client, cport, server, sport, FIN | ACK, seq=c, ack=s)
        cap.tcp(t + rtt, server, sport, client, cport, FIN | ACK, seq=s, ack=c + 1)
        cap.tcp(t + rtt + 30, client, cport, server, sport, ACK, seq=c + 1, ack=s + 1)
        t += rtt + 30
    elif close == "server_fin":
        cap.tcp(t, server, sport, client, cport, FIN | ACK, seq=s, ack=c)
        cap.tcp(t + rtt, client, cport, server, sport, FIN | ACK, seq=c, ack=s + 1)
        cap.tcp(t + rtt + 30, server, sport, client, cport, ACK, seq=s + 1, ack=c + 1)
        t += rtt + 30
    elif close == "client_rst":
        cap.tcp(t, client, cport, server, sport, RST | ACK, seq=c, ack=s, window=0)
    elif close != "none":
        raise ValueError(close)
    return t


def dns_lookup(cap, t, client, cport, resolver, qid, name, rtt=900):
    """One DNS A query over UDP and its answer (one A record, TTL 300)."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    question = qname + struct.pack("!HH", 1, 1)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    answer = (struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question
              + struct.pack("!HHHIH", 0xC00C, 1, 1, 300, 4)
              + ipaddress.ip_address("203.0.113.%d" % (1 + qid % 200)).packed)
    cap.udp(t, client, cport, resolver, 53, query)
    cap.udp(t + rtt, resolver, 53, client, cport, answer)


def write_all(files, out_dir):
    """Build and write every capture of ``files`` (name -> builder) into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, build in files.items():
        cap = build()
        size = cap.write(out_dir / name)
        print(f"{name}: {len(cap.records)} packets, {size} bytes")
