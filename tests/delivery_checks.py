"""What the delivery tests check on what a real collector received.

``ident`` reads an alert's (id, seq) from a message as rsyslog parsed it;
``assert_delivered`` says every alert arrived in order (repeats only as counted
after a connection reset); ``write_burst_pcap`` makes the capture of a burst of
hundreds of one-alert scanners used by the outage tests (replay and live).
"""
import json
import re
import struct


BURST_SETTINGS = ["--set", "port_scan.threshold=5", "--set", "port_scan.report_delay_s=0",
                  "--set", "alerts.max_per_minute=0", "--set", "capture.batch_packets=64",
                  "--set", "capture.read_chunk_bytes=4096",
                  "--set", "delivery.reconnect_min_s=0.05",
                  "--set", "delivery.reconnect_max_s=0.3",
                  "--set", "delivery.drain_timeout_s=20"]


def ident(message):
    """(id, seq) of an alert as rsyslog received it: from the structured data if the
    format carries them there, else from a JSON body."""
    sd = message["structured_data"]
    got_id, got_seq = re.search(r'\bid="([^"]+)"', sd), re.search(r'\bseq="(\d+)"', sd)
    if got_id and got_seq:
        return got_id.group(1), int(got_seq.group(1))
    body = json.loads(message["msg"].lstrip("\ufeff").strip())
    return body["id"], body["seq"]


def write_burst_pcap(path, scanners=400, ports=6, gap_us=40_000, prefix="10.50"):
    """Scanners <prefix>.x.y (10.50.x.y), each sending SYNs to `ports` ports of 10.60.0.1, one after
    another: with port_scan.threshold=5 each is one alert, emitted as packet time
    passes. Ethernet/IPv4/TCP frames made by scapy, classic pcap."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    records = []
    t_us = 1_795_000_000_000_000
    for s in range(scanners):
        src = f"{prefix}.{s // 200}.{s % 200 + 1}"
        for p in range(ports):
            frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                          / IP(src=src, dst="10.60.0.1", ttl=64)
                          / TCP(sport=40000 + s, dport=20 + p, flags="S", seq=s * 1000 + p))
            ts = t_us + s * gap_us + p * 100
            records.append(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000,
                                       len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1)
                     + b"".join(records))
    return path


def assert_delivered(got, expected, counters):
    """Every message, in order; exactly once when the collector closed its connection
    (it had read all it acknowledged). When it reset it instead (closing with bytes it
    had not read), the messages it had acknowledged within delivery.ack_hold_ms were
    sent again: they may appear twice, never more, and are counted."""
    first_seen = list(dict.fromkeys(got))
    assert first_seen == expected, ([x for x in expected if x not in got][:5], counters)
    extra = len(got) - len(expected)
    print("delivered: repeats", extra, "resent_after_reset", counters["resent_after_reset"])
    assert extra <= counters["resent_after_reset"], counters
    if counters["resent_after_reset"] == 0:
        assert got == expected
    else:     # a repeat comes back right where sending resumed: order is never broken
        assert all(got.count(x) <= 2 for x in got)


def jsonl_idents(path):
    return [(a["id"], a["seq"]) for a in map(json.loads, path.read_text().splitlines())]

