import ipaddress


# --- detector references (see tests/test_rules_*.py) ---
#
# Plain-Python versions of kernels/classify.py, kernels/rules.py and the two
# counter kernels (port-set, host-set) with the alert lifecycle of
# kernels/alert_slots.py. Unbounded dicts and sets stand in for the bounded
# tables, so kernel and reference agree whenever the kernel's table and lists
# have room (tests size them so).

import ipaddress as _ipaddress

_TH_FIN, _TH_SYN, _TH_RST, _TH_PUSH, _TH_ACK, _TH_URG = 1, 2, 4, 8, 16, 32
_PF_HAS_TCP_FLAGS, _PF_HAS_ICMP, _PF_HAS_INNER, _PF_INNER_HAS_PORTS = 2, 4, 8, 16


def _addr(hi, lo):
    v = (int(hi) << 64) | int(lo)
    ip = _ipaddress.IPv6Address(v)
    return ip.ipv4_mapped or ip


def _in_any(addr, nets):
    return any(addr.version == n.version and addr in n for n in nets)


def _special(addr):
    return addr.is_loopback or addr.is_unspecified


def _direction(prober_home, target_home):
    if prober_home:
        return "internal" if target_home else "outbound"
    return "inbound" if target_home else "external"


def rule_item(rule, r, net):
    """What one decoded row means to a rule, or None.

    Returns dict(key=tuple, item=hashable, port=int|None, target=(hi, lo)|None,
    prober=(hi, lo), direction=str, evidence=str|None).
    ``net`` = dict(home, allow, ignore, exposed: lists of ip_network; ignore_ports: set;
    scope: "source"|"pair").
    """
    src = _addr(r["src_hi"], r["src_lo"])
    dst = _addr(r["dst_hi"], r["dst_lo"])
    src_w = (int(r["src_hi"]), int(r["src_lo"]))
    dst_w = (int(r["dst_hi"]), int(r["dst_lo"]))
    home = lambda a: _in_any(a, net["home"])
    flags = r["pkt_flags"]
    tcp = r["tcp_flags"]

    def forward_ok():
        return not (_in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"])
                    or int(r["dport"]) in net["ignore_ports"])

    is_syn = bool(flags & _PF_HAS_TCP_FLAGS) and (tcp & (_TH_SYN | _TH_ACK | _TH_RST)) == _TH_SYN
    if rule == "udp_scan":
        need = _PF_HAS_ICMP | _PF_HAS_INNER | _PF_INNER_HAS_PORTS
        if (flags & need) != need:
            return None
        unreachable = (r["proto"] == 1 and r["icmp_type"] == 3 and r["icmp_code"] == 3) or \
                      (r["proto"] == 58 and r["icmp_type"] == 1 and r["icmp_code"] == 4)
        if not unreachable or r["inner_proto"] != 17:
            return None
        if _in_any(dst, net["allow"]) or _special(dst) or _in_any(src, net["ignore"]):
            return None
        prober = (int(r["inner_src_hi"]), int(r["inner_src_lo"]))
        target = (int(r["inner_dst_hi"]), int(r["inner_dst_lo"]))
        key = prober + (target if net["scope"] == "pair" else ())
        return dict(key=key, item=int(r["inner_dport"]), port=int(r["inner_dport"]),
                    target=target, prober=prober, direction=_direction(home(dst), home(src)),
                    evidence=None)
    if rule == "icmp_sweep":
        if not (flags & _PF_HAS_ICMP):
            return None
        if not ((r["proto"] == 1 and r["icmp_type"] == 8) or (r["proto"] == 58 and r["icmp_type"] == 128)):
            return None
        if _in_any(src, net["allow"]) or _special(src) or _in_any(dst, net["ignore"]):
            return None
        return dict(key=src_w, item=(dst_w, 0), port=None, target=dst_w, prober=src_w,
                    direction=_direction(home(src), home(dst)), evidence=None)
    if not (flags & _PF_HAS_TCP_FLAGS):
        return None
    if rule == "failed_connections":
        if not (tcp & _TH_RST) or (tcp & _TH_SYN):
            return None
        if (_in_any(dst, net["allow"]) or _special(dst) or _in_any(src, net["ignore"])
                or int(r["sport"]) in net["ignore_ports"]):
            return None
        return dict(key=dst_w, item=(src_w, int(r["sport"])), port=int(r["sport"]), target=src_w,
                    prober=dst_w, direction=_direction(home(dst), home(src)), evidence=None)
    if rule == "stealth_scan":
        if tcp & (_TH_SYN | _TH_ACK | _TH_RST):
            return None
        if tcp == 0:
            evidence = "null"
        elif tcp == _TH_FIN:
            evidence = "fin"
        elif (tcp & (_TH_FIN | _TH_PUSH | _TH_URG)) == (_TH_FIN | _TH_PUSH | _TH_URG):
            evidence = "xmas"
        else:
            evidence = "other"
    elif not is_syn:
        return None
    else:
        evidence = None
    if not forward_ok():
        return None
    d = _direction(home(src), home(dst))
    port = int(r["dport"])
    if rule == "exposed_host_probe" and (not _in_any(dst, net["exposed"]) or home(src)):
        return None
    if rule in ("port_scan", "stealth_scan", "exposed_host_probe"):
        key = src_w + (dst_w if net["scope"] == "pair" else ())
        return dict(key=key, item=port, port=port, target=dst_w, prober=src_w, direction=d,
                    evidence=evidence)
    if rule == "host_sweep":
        return dict(key=src_w + (port,), item=(dst_w, 0), port=port, target=dst_w, prober=src_w,
                    direction=d, evidence=None)
    if rule == "port_sweep":
        return dict(key=(port,), item=(dst_w, 0), port=port, target=dst_w, prober=src_w,
                    direction=d, evidence=None)
    raise ValueError(rule)


def counter_reference(rule, rows, net, threshold, window_ns, delay_ns, directions,
                      exclude_ports=(), growth=0, update_ns=0, suppress_ns=1 << 62,
                      new_target_updates=False, count_attempts=False):
    """Reference for every counter rule. Returns report dicts in emission order:
    key, seq, count, items (set in window), targets (first-seen order), first_seen_ns,
    last_seen_ns, probes, directions (set), evidence (set), contributors (dict prober->n)."""
    port_set = rule in ("port_scan", "stealth_scan", "udp_scan", "exposed_host_probe")
    count_attempts = count_attempts or rule == "exposed_host_probe"
    keys = {}
    pending = []      # [due, order, key]
    out = []
    order = 0

    def count_of(s):
        if count_attempts:
            return s["attempts"]
        return len(s["cur"] | s["prev"]) if port_set else len(s["items"])

    def report(key, now):
        s = keys[key]
        ports = sorted(s["cur"] | s["prev"]) if port_set else None
        out.append(dict(key=key, seq=s["seq"] + 1, count=count_of(s), ports=ports,
                        items=set(s["items"]) if not port_set else None,
                        targets=list(s["targets"]), first_seen_ns=s["first"],
                        last_seen_ns=s["last"], probes=s["probes"], directions=set(s["dirs"]),
                        evidence=set(s["evidence"]), contributors=dict(s["contrib"])))
        s["seq"] += 1
        s["reported"] = max(count_of(s), 1)
        s["last_report"] = s["last"]
        s["new_target"] = False
        s["pinned"] = False

    def fresh(ts):
        return dict(first=ts, last=ts, pane=ts // window_ns, cur=set(), prev=set(), items={},
                    probes=0, attempts=0, targets=[], seq=0, reported=0, last_report=0,
                    pinned=False, new_target=False, dirs=set(), evidence=set(), contrib={})

    for r in rows:
        ts = int(r["ts_ns"])
        while pending and ts >= min(p[0] for p in pending):
            p = min(pending)
            pending.remove(p)
            report(p[2], ts)
        it = rule_item(rule, r, net)
        if it is None or it["direction"] not in directions:
            continue
        if it["port"] is not None and it["port"] in exclude_ports:
            continue
        key = it["key"]
        s = keys.get(key)
        pane = ts // window_ns
        if s is None or (not s["pinned"] and (ts - s["last"] >= 2 * window_ns or
                                              (s["seq"] > 0 and ts - s["first"] >= suppress_ns))):
            s = keys[key] = fresh(ts)
        if pane == s["pane"] + 1:
            s["prev"], s["cur"] = s["cur"], set()
            s["items"] = {k: v for k, v in s["items"].items() if v >= pane - 1}
        elif pane > s["pane"] + 1:
            s["prev"], s["cur"] = set(), set()
            s["items"] = {}
        s["pane"] = max(s["pane"], pane)
        is_new_item = False
        if port_set:
            s["cur"].add(it["item"])
        else:
            is_new_item = it["item"] not in s["items"]
            s["items"][it["item"]] = max(s["items"].get(it["item"], pane), s["pane"])
        s["probes"] += 1
        s["attempts"] += 1
        s["last"] = max(s["last"], ts)
        s["dirs"].add(it["direction"])
        if it["evidence"]:
            s["evidence"].add(it["evidence"])
        if rule == "port_sweep":
            s["contrib"][it["prober"]] = s["contrib"].get(it["prober"], 0) + 1
        if port_set:
            if it["target"] not in s["targets"]:
                s["targets"].append(it["target"])
                if s["seq"] > 0:
                    s["new_target"] = True
        else:
            if it["item"][0] not in s["targets"]:
                s["targets"].append(it["item"][0])
            if is_new_item and s["seq"] > 0:
                s["new_target"] = True
        if s["pinned"]:
            continue
        c = count_of(s)
        if s["seq"] == 0:
            if c < threshold:
                continue
        else:
            grown = growth > 0 and c >= growth * s["reported"]
            fresh_target = new_target_updates and s["new_target"]
            if not (grown or fresh_target) or ts - s["last_report"] < update_ns:
                continue
        s["pinned"] = True
        pending.append([ts + delay_ns, order, key])
        order += 1
    for p in sorted(pending):
        report(p[2], p[0])
    return out
