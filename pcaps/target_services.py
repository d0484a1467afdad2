#!/usr/bin/env python3
"""Tiny, real network services run inside the ``ss-target`` namespace by
``make_captures.sh``.

All sockets are dual-stack (AF_INET6 with IPV6_V6ONLY=0, bound to ``::``) so
the same listeners answer on 10.77.0.2 and fd77::2.

* TCP 22  -- accept, then close immediately (no banner).
* TCP 443 -- accept, then close immediately (no TLS).
* TCP 80  -- minimal HTTP/1.0: read the request head (2 s timeout), answer
             ``200 OK`` with a short fixed body, close.  Clients that hang up
             without sending a request (nmap -sT) are simply closed.
* UDP 53  -- answers every datagram.  If it parses as a DNS query the reply is
             the query header/question with QR=1, RA=1, RCODE=3 (NXDOMAIN);
             otherwise the datagram is echoed back with the QR bit set in the
             third byte (when there is one).

Usage: target_services.py READY_FILE
       target_services.py READY_FILE --listen ADDR:PORT [--listen ADDR:PORT ...]
READY_FILE is created once every socket is bound and listening.

With ``--listen`` only the given TCP listeners are run (IPv4 ADDR, bound to
that one address, accept then close immediately, like 22/443 above) and none
of the default services.  make_captures.sh uses it to open TCP 445 on a few of
the extra sweep addresses (10.77.0.10-49) while the default services keep
running in their own process.
"""
import os
import signal
import socket
import sys
import threading

HTTP_BODY = b"hello from ss-target\n"
HTTP_RESPONSE = (
    b"HTTP/1.0 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: " + str(len(HTTP_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + HTTP_BODY
)


def dual_stack(kind: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def handle_close(conn: socket.socket) -> None:
    conn.close()


def handle_http(conn: socket.socket) -> None:
    try:
        conn.settimeout(2.0)
        buf = b""
        while b"\r\n\r\n" not in buf and len(buf) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        conn.sendall(HTTP_RESPONSE)
    except OSError:
        pass
    finally:
        conn.close()


def serve_tcp(sock: socket.socket, handler) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            continue
        threading.Thread(target=handler, args=(conn,), daemon=True).start()


def dns_reply(data: bytes) -> bytes:
    if len(data) >= 12:
        qdcount = int.from_bytes(data[4:6], "big")
        pos = 12
        try:
            for _ in range(qdcount):
                while True:
                    ln = data[pos]
                    pos += 1
                    if ln == 0:
                        break
                    if ln & 0xC0:
                        pos += 1
                        break
                    pos += ln
                pos += 4
            if pos <= len(data):
                flags1 = 0x80 | (data[2] & 0x79)  # QR=1, keep opcode+RD
                flags2 = 0x80 | 0x03  # RA=1, RCODE=NXDOMAIN
                return (data[:2] + bytes([flags1, flags2]) + data[4:6]
                        + b"\x00\x00\x00\x00\x00\x00" + data[12:pos])
        except IndexError:
            pass
    if len(data) >= 3:
        return data[:2] + bytes([data[2] | 0x80]) + data[3:]
    return data


def serve_udp(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(dns_reply(data), peer)
        except OSError:
            continue


def parse_listen(args: list) -> list:
    out = []
    if len(args) % 2 or any(a != "--listen" for a in args[::2]):
        sys.exit("usage: target_services.py READY_FILE [--listen ADDR:PORT ...]")
    for spec in args[1::2]:
        addr, _, port = spec.rpartition(":")
        out.append((addr, int(port)))
    return out


def main() -> None:
    ready = sys.argv[1]
    listen = parse_listen(sys.argv[2:])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threads = []
    if listen:
        for addr, port in listen:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(512)
            threads.append(threading.Thread(target=serve_tcp, args=(s, handle_close), daemon=True))
        for t in threads:
            t.start()
        with open(ready, "w") as f:
            f.write(f"{os.getpid()}\n")
        signal.pause()
        return
    for port, handler in ((22, handle_close), (80, handle_http), (443, handle_close)):
        s = dual_stack(socket.SOCK_STREAM)
        s.bind(("::", port))
        s.listen(512)
        threads.append(threading.Thread(target=serve_tcp, args=(s, handler), daemon=True))
    u = dual_stack(socket.SOCK_DGRAM)
    u.bind(("::", 53))
    threads.append(threading.Thread(target=serve_udp, args=(u,), daemon=True))
    for t in threads:
        t.start()
    with open(ready, "w") as f:
        f.write(f"{os.getpid()}\n")
    signal.pause()


if __name__ == "__main__":
    main()
