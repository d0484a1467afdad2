"""Build PacketBatch objects straight from row dicts (detector tests skip decode)."""
from kernels.batch import COLUMNS, PF_HAS_PORTS, PF_HAS_TCP_FLAGS, TH_SYN, PacketBatch
from sensor.addresses import from_text


def syn_row(ts_ns, src, dst, dport, sport=40000, flags=TH_SYN):
    src_hi, src_lo = from_text(src)
    dst_hi, dst_lo = from_text(dst)
    row = {name: 0 for name, _ in COLUMNS}
    row.update(ts_ns=ts_ns, src_hi=src_hi, src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo,
               sport=sport, dport=dport, proto=6, tcp_flags=flags,
               pkt_flags=PF_HAS_PORTS | PF_HAS_TCP_FLAGS)
    return row


def batches_from_rows(rows, capacity):
    """Yield PacketBatch objects holding ``rows`` in order, ``capacity`` at a time."""
    batch = PacketBatch(capacity)
    for start in range(0, len(rows), capacity):
        chunk = rows[start:start + capacity]
        for name, _ in COLUMNS:
            col = getattr(batch, name)
            for i, r in enumerate(chunk):
                col[i] = r[name]
        batch.n = len(chunk)
        yield batch


def icmp_row(ts_ns, src, dst, icmp_type, icmp_code=0, inner=None, v6=False):
    """ICMP (v6=False) or ICMPv6 row; inner=(src, dst, proto, sport, dport) for errors."""
    from kernels.batch import PF_HAS_ICMP, PF_HAS_INNER, PF_INNER_HAS_PORTS
    src_hi, src_lo = from_text(src)
    dst_hi, dst_lo = from_text(dst)
    row = {name: 0 for name, _ in COLUMNS}
    row.update(ts_ns=ts_ns, src_hi=src_hi, src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo,
               proto=58 if v6 else 1, icmp_type=icmp_type, icmp_code=icmp_code,
               pkt_flags=PF_HAS_ICMP)
    if inner is not None:
        isrc, idst, iproto, isport, idport = inner
        row["inner_src_hi"], row["inner_src_lo"] = from_text(isrc)
        row["inner_dst_hi"], row["inner_dst_lo"] = from_text(idst)
        row.update(inner_proto=iproto, inner_sport=isport, inner_dport=idport)
        row["pkt_flags"] |= PF_HAS_INNER | PF_INNER_HAS_PORTS
    return row


def udp_row(ts_ns, src, dst, dport, sport=40000):
    src_hi, src_lo = from_text(src)
    dst_hi, dst_lo = from_text(dst)
    row = {name: 0 for name, _ in COLUMNS}
    row.update(ts_ns=ts_ns, src_hi=src_hi, src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo,
               sport=sport, dport=dport, proto=17, pkt_flags=PF_HAS_PORTS)
    return row


def arp_row(ts_ns, sender, target, op=1, sender_mac=0x020000000001, target_mac=0):
    """An ARP request (op 1) or reply (op 2) row as kernels/decode_frame.py writes it."""
    from kernels.batch import PF_ARP
    src_hi, src_lo = from_text(sender)
    dst_hi, dst_lo = from_text(target)
    row = {name: 0 for name, _ in COLUMNS}
    row.update(ts_ns=ts_ns, src_hi=src_hi, src_lo=src_lo, dst_hi=dst_hi, dst_lo=dst_lo,
               icmp_type=op, pkt_flags=PF_ARP, inner_src_lo=sender_mac, inner_dst_lo=target_mac)
    return row


def nd_row(ts_ns, src, dst, target, solicit=True, mac=0):
    """A neighbour solicitation (135, ``mac`` = its source link-layer address option)
    or advertisement (136) row; the target address in inner_dst."""
    from kernels.batch import PF_HAS_ICMP, PF_IPV6
    row = icmp_row(ts_ns, src, dst, 135 if solicit else 136, v6=True)
    row["pkt_flags"] = PF_HAS_ICMP | PF_IPV6
    row["inner_dst_hi"], row["inner_dst_lo"] = from_text(target)
    row["inner_src_lo"] = mac if solicit else 0
    return row
