"""Make forged_icmp_unreachable.pcap: ICMP errors with no probe behind them (issue 14 item 3).

Anyone on a segment can send ICMP port unreachables "quoting" UDP datagrams that
10.70.0.1 never sent, to make it look like a UDP scanner. The capture holds:

* 40 ICMPv4 port unreachables from 10.70.0.2 to 10.70.0.1, quoting UDP
  10.70.0.1 -> 10.70.0.2 to ports 7000-7039;
* 20 ICMPv6 port unreachables from fd70::2 to fd70::1, quoting UDP to ports 7000-7019;
* 10 ICMPv4 port unreachables quoting an IPv6 header, and 10 ICMPv6 ones quoting
  IPv4 (malformed: the other IP version).

No UDP datagram is in it: the sensor must raise nothing, count the 60 as
``backscatter_icmp`` and the 20 as ``icmp_misquoted``.
Run: python pcaps/make_forged_icmp.py (writes next to this script).
"""
import pathlib

from scapy.all import ICMP, IP, UDP, Ether, ICMPv6DestUnreach, IPv6, wrpcap

T0 = 1_700_100_000.0
V4A, V4B, V6A, V6B = "10.70.0.1", "10.70.0.2", "fd70::1", "fd70::2"


def frames():
    out = []
    t = T0
    e = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    for k in range(40):
        quoted = IP(src=V4A, dst=V4B) / UDP(sport=40000, dport=7000 + k)
        out.append((t, e / IP(src=V4B, dst=V4A) / ICMP(type=3, code=3) / bytes(quoted)[:28]))
        t += 0.01
    for k in range(20):
        quoted = IPv6(src=V6A, dst=V6B) / UDP(sport=40000, dport=7000 + k)
        out.append((t, e / IPv6(src=V6B, dst=V6A) / ICMPv6DestUnreach(code=4) / bytes(quoted)))
        t += 0.01
    for k in range(10):
        quoted = IPv6(src=V6A, dst=V6B) / UDP(sport=40000, dport=8000 + k)
        out.append((t, e / IP(src=V4B, dst=V4A) / ICMP(type=3, code=3) / bytes(quoted)))
        t += 0.01
    for k in range(10):
        quoted = IP(src=V4A, dst=V4B) / UDP(sport=40000, dport=8000 + k)
        out.append((t, e / IPv6(src=V6B, dst=V6A) / ICMPv6DestUnreach(code=4) / bytes(quoted)))
        t += 0.01
    return out


def main():
    pkts = []
    for t, p in frames():
        p.time = t
        pkts.append(p)
    wrpcap(str(pathlib.Path(__file__).with_name("forged_icmp_unreachable.pcap")), pkts)


if __name__ == "__main__":
    main()
