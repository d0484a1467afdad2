#!/usr/bin/env python3
"""Write the benign captures (see README.md next to this script).

    python3 pcaps/benign/make_benign_captures.py [OUT_DIR]      # default: this directory

Ordinary traffic that must not raise alerts under the ``default`` preset (the
health checker only once it is allow-listed). Deterministic like
``../presets/make_preset_captures.py``, whose frame helpers it uses
(``../presets/pcapgen.py``): re-running it produces identical files.
"""
from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "presets"))

from pcapgen import Capture, US, connect, dns_lookup, write_all  # noqa: E402

T0 = 1_767_250_800 * US          # 2026-01-01T07:00:00Z
MS = 1000

# --- (a) many clients ---------------------------------------------------------------
SERVERS = ["10.0.1.10", "10.0.1.11"]
RESOLVER = "10.0.0.53"
INTERNAL_CLIENTS = [f"10.0.2.{k}" for k in range(1, 101)]
EXTERNAL_CLIENTS = ([f"198.51.100.{k}" for k in range(1, 51)]
                    + [f"203.0.113.{k}" for k in range(1, 51)])
CONNS_PER_CLIENT = (1, 1, 2, 1, 3, 1, 2, 1)          # 1-3, 1.5 on average
HTTP_REQ = b"GET / HTTP/1.1\r\nHost: www\r\n\r\n"
HTTP_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
TLS_HELLO = bytes.fromhex("160301002a010000260303") + bytes(range(32)) + b"\x00\x00"
TLS_REPLY = bytes.fromhex("160303002a020000260303") + bytes(range(32, 64)) + b"\x00\x00"
SSH_CLIENT = b"SSH-2.0-OpenSSH_9.6\r\n"
SSH_SERVER = b"SSH-2.0-OpenSSH_8.9p1\r\n"
SERVICES = {80: (HTTP_REQ, HTTP_RESP, "client_fin"),
            443: (TLS_HELLO, TLS_REPLY, "client_fin"),
            22: (SSH_CLIENT, SSH_SERVER, "server_fin")}


def many_clients():
    """200 clients (100 internal, 100 external), 1-3 connections each to 80/443/22 on two
    servers, one client every 1.5 s (5 minutes); internal clients look the name up first."""
    cap = Capture()
    clients = [c for pair in zip(INTERNAL_CLIENTS, EXTERNAL_CLIENTS) for c in pair]
    for i, client in enumerate(clients):
        t = T0 + i * 1500 * MS
        cport = 32768 + (i * 211) % 28000     # ephemeral: 32768-60999
        if client in INTERNAL_CLIENTS:
            dns_lookup(cap, t, client, cport + 3, RESOLVER, 0x2000 + i, "www.corp.example")
            t += 2 * MS
        for k in range(CONNS_PER_CLIENT[i % len(CONNS_PER_CLIENT)]):
            port = (443, 80, 22)[(i + k) % 3]
            server = SERVERS[(i // 3 + k) % 2]
            request, response, close = SERVICES[port]
            t = connect(cap, t, client, cport + k, server, port, request=request,
                        response=response, close=close, rtt=600 if client in
                        EXTERNAL_CLIENTS else 200) + 50 * MS
    return cap


# --- (b) load-balancer health checker -----------------------------------------------
CHECKER = "10.0.0.250"
POOL = [f"10.0.3.{k}" for k in range(1, 31)]
CHECK_PORTS = (80, 443, 8080)
CHECK_EVERY_S = 5
CHECK_ROUNDS = 24                                    # 0 s, 5 s, ... 115 s: 2 minutes


def health_checker():
    """Every 5 s for 2 minutes, a TCP connect (handshake, then the checker's FIN) to each of
    3 ports on 30 pool members: 90 connections per round, 10 ms apart."""
    cap = Capture()
    n = 0
    for r in range(CHECK_ROUNDS):
        for h, host in enumerate(POOL):
            for p, port in enumerate(CHECK_PORTS):
                t = T0 + r * CHECK_EVERY_S * US + (h * len(CHECK_PORTS) + p) * 10 * MS
                connect(cap, t, CHECKER, 32768 + n % 28232, host, port, rtt=150, think=100)
                n += 1
    return cap


# --- (c) NAT gateway ----------------------------------------------------------------
NAT = "100.64.1.1"
DESTINATIONS = ([f"198.51.100.{k}" for k in range(10, 35)]
                + [f"203.0.113.{k}" for k in range(10, 35)])        # 50 "popular sites"
NAT_CONNS = 300
ABORT_EVERY = 50                                     # 6 client aborts (RST) in 300


def nat_gateway():
    """300 connections through one CGNAT address over 2 minutes (one every 400 ms): popular
    destinations first and most often, 443 mostly, 80 for every 6th; each one a handshake,
    a request and a response; every 50th is aborted by the client with RST."""
    cap = Capture()
    for k in range(NAT_CONNS):
        t = T0 + k * 400 * MS
        # Zipf-like popularity: site j is visited about 1/(j+1) as often as site 0
        dest = DESTINATIONS[_zipf_index(k, len(DESTINATIONS))]
        port = 80 if k % 6 == 5 else 443
        request, response, _ = SERVICES[port]
        close = "client_rst" if k % ABORT_EVERY == ABORT_EVERY - 1 else "client_fin"
        connect(cap, t, NAT, 1024 + (k * 4099) % 64000, dest, port, request=request,
                response=response, close=close, rtt=900)
    return cap


def _zipf_index(k, n):
    """Deterministic Zipf-like choice: the k-th visit's site, each site seen at least once."""
    if k < n:
        return k
    weights = [1.0 / (j + 1) for j in range(n)]
    x = ((k * 0.6180339887498949) % 1.0) * sum(weights)
    for j, w in enumerate(weights):
        x -= w
        if x < 0:
            return j
    return n - 1


# --- (d) a monitoring host polling for 24 hours --------------------------------------
MONITOR = "10.0.0.240"
MONITORED = ["10.0.4.1", "10.0.4.2", "10.0.4.3"]
MONITORED_PORTS = (22, 80, 443, 3306, 5432)
POLL_EVERY_S, POLL_HOURS = 60, 24


def monitoring_poller():
    """Every minute for 24 hours, a TCP connect (handshake, then the poller's RST, as
    check_tcp-style probes do) to 5 ports on each of 3 hosts: 15 connections a round,
    100 ms apart, 21,600 in all, every one succeeding (the long-horizon tier's benign
    case: issue 12)."""
    cap = Capture()
    n = 0
    for r in range(POLL_HOURS * 3600 // POLL_EVERY_S):
        for h, host in enumerate(MONITORED):
            for p, port in enumerate(MONITORED_PORTS):
                t = T0 + r * POLL_EVERY_S * US + (h * len(MONITORED_PORTS) + p) * 100 * MS
                connect(cap, t, MONITOR, 32768 + n % 28232, host, port, rtt=300, think=100,
                        close="client_rst")
                n += 1
    return cap


FILES = {
    "many_clients.pcap": many_clients,
    "health_checker.pcap.gz": health_checker,
    "nat_gateway.pcap": nat_gateway,
    "monitoring_poller_24h.pcap.gz": monitoring_poller,
}


def main(out_dir=HERE):
    write_all(FILES, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:2])
