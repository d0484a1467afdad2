#!/usr/bin/env python3
"""Ordinary (non-scanning) client traffic for benign_clients.pcap.

Run inside the ``ss-scan`` namespace by make_captures.sh, *after* the curl
HTTP GETs.  Every connection goes to a port that is really open on the target.

  tcp  : 3 x connect()+close() to 10.77.0.2:22 from 10.77.0.1
         3 x connect()+close() to 10.77.0.2:443 from 10.77.0.1
  udp  : 5 x DNS A query to 10.77.0.2:53 from 10.77.0.3 (each waits for the
         reply, 1 s timeout)

So 10.77.0.1 talks to TCP {80 (curl), 22, 443} and 10.77.0.3 only to UDP 53:
at most 3 distinct destination ports per source address.
"""
import socket
import struct
import time

TARGET = "10.77.0.2"
CLIENT_TCP = "10.77.0.1"
CLIENT_DNS = "10.77.0.3"


def tcp_connect(port: int) -> None:
    with socket.create_connection((TARGET, port), timeout=2, source_address=(CLIENT_TCP, 0)) as s:
        s.settimeout(1)
        try:
            s.recv(1)  # server closes immediately -> EOF
        except OSError:
            pass


def dns_query(qid: int, name: str) -> bytes:
    hdr = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD=1, 1 question
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return hdr + q + struct.pack("!HH", 1, 1)  # A, IN


def main() -> None:
    for port in (22, 443):
        for _ in range(3):
            tcp_connect(port)
            time.sleep(0.1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((CLIENT_DNS, 0))  # one client socket -> one source port
    s.settimeout(1)
    for i, name in enumerate(["example.test", "www.example.test", "mail.example.test",
                              "ntp.example.test", "api.example.test"]):
        s.sendto(dns_query(0x1000 + i, name), (TARGET, 53))
        try:
            s.recvfrom(512)
        except OSError:
            pass
        time.sleep(0.1)
    s.close()


if __name__ == "__main__":
    main()
