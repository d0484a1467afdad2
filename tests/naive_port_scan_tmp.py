

def port_scan_reference(rows, threshold, window_ns, delay_ns):
    """Plain-Python port_scan over decoded rows (dicts with batch column names).

    Unbounded dicts and sets instead of the kernel's bounded table; the same
    window, threshold, delay and suppression rules (kernels/port_scan.py).
    Returns alerts as dicts: src (hi, lo), ports (sorted list), port_count,
    dsts (list, first-seen order), first_seen_ns, last_seen_ns, probes.
    """
    from kernels.batch import PF_HAS_TCP_FLAGS, TH_ACK, TH_RST, TH_SYN

    sources = {}
    pending = []          # [due_ns, order, src]
    out = []
    order = 0

    def report(src):
        s = sources[src]
        out.append({
            "src": src,
            "ports": sorted(s["cur"] | s["prev"]),
            "port_count": len(s["cur"] | s["prev"]),
            "dsts": list(s["dsts"]),
            "first_seen_ns": s["first"],
            "last_seen_ns": s["last"],
            "probes": s["probes"],
        })
        s["reported"] = True
        s["pinned"] = False

    def fresh(ts):
        return {"first": ts, "last": ts, "pane": ts // window_ns, "cur": set(), "prev": set(),
                "probes": 0, "dsts": [], "reported": False, "pinned": False}

    for r in rows:
        ts = int(r["ts_ns"])
        while pending and ts >= min(p[0] for p in pending):
            p = min(pending)
            pending.remove(p)
            report(p[2])
        if not (r["pkt_flags"] & PF_HAS_TCP_FLAGS):
            continue
        if (r["tcp_flags"] & (TH_SYN | TH_ACK | TH_RST)) != TH_SYN:
            continue
        src = (int(r["src_hi"]), int(r["src_lo"]))
        s = sources.get(src)
        pane = ts // window_ns
        if s is None or (ts - s["last"] >= 2 * window_ns and not s["pinned"]):
            s = sources[src] = fresh(ts)
        if pane == s["pane"] + 1:
            s["prev"], s["cur"] = s["cur"], set()
        elif pane > s["pane"] + 1:
            s["prev"], s["cur"] = set(), set()
        s["pane"] = max(s["pane"], pane)
        s["cur"].add(int(r["dport"]))
        s["probes"] += 1
        s["last"] = max(s["last"], ts)
        dst = (int(r["dst_hi"]), int(r["dst_lo"]))
        if dst not in s["dsts"]:
            s["dsts"].append(dst)
        if len(s["cur"] | s["prev"]) >= threshold and not s["reported"] and not s["pinned"]:
            s["pinned"] = True
            pending.append([ts + delay_ns, order, src])
            order += 1
    for p in sorted(pending):
        report(p[2])
    return out
