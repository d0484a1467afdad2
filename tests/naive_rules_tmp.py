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
    if rule in ("failed_connections", "trw_scanner"):
        wanted = (OUT_CLOSED, OUT_FILTERED) if rule == "failed_connections" else \
            (OUT_OPEN, OUT_CLOSED, OUT_FILTERED)
        if rule == "failed_connections" and not net.get("count_filtered", True):
            wanted = (OUT_CLOSED,)
        if r.get("outcome", 0) not in wanted or not forward_ok():
            return None
        port = int(r["dport"]) if rule == "failed_connections" else 0
        return dict(key=src_w, item=(dst_w, port), port=port if rule == "failed_connections" else None,
                    target=dst_w, prober=src_w, direction=_direction(home(src), home(dst)),
                    evidence=None, outcome=r["outcome"])
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
                      new_target_updates=False, count_attempts=False, trw=None):
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
        if rule == "trw_scanner":
            return s["fails"] if s["llr"] >= trw["upper"] else 0
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
                    pinned=False, new_target=False, dirs=set(), evidence=set(), contrib={},
                    llr=0, fails=0, benign=False)

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
        if rule == "trw_scanner" and is_new_item and not s["benign"]:
            if it["outcome"] == OUT_OPEN:
                s["llr"] += trw["success"]
            else:
                s["llr"] += trw["fail"]
                s["fails"] += 1
            if s["llr"] <= trw["lower"]:
                s["benign"] = True
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



# --- probe table reference (kernels/probes.py) ---

OUT_OPEN, OUT_CLOSED, OUT_FILTERED, OUT_UNKNOWN = 1, 2, 3, 4


def probe_reference(rows, timeout_ns):
    """Plain-Python probe table. Returns (outcome_rows, probes) where outcome rows are
    dicts with the batch columns plus ``outcome``, in emission order (including the
    end-of-input decisions), and probes maps (init, resp, port, proto) -> state name."""
    state = {}         # key -> [state, sent_ns]
    queue = []         # FIFO of (key, sent_ns)
    out = []
    replies = [0]
    names = {1: "pending", 2: "open", 3: "open", 4: "closed", 5: "filtered", 6: "unknown"}
    code = {2: OUT_OPEN, 4: OUT_CLOSED, 5: OUT_FILTERED, 6: OUT_UNKNOWN}

    def emit(ts, key, st):
        (ih, il), (rh, rl), port, proto = key
        row = {n: 0 for n in _ROW_NAMES}
        row.update(ts_ns=ts, src_hi=ih, src_lo=il, dst_hi=rh, dst_lo=rl, dport=port,
                   proto=proto, pkt_flags=1, outcome=code[st])
        out.append(row)

    def expire(now):
        while queue and queue[0][1] + timeout_ns <= now:
            key, sent = queue.pop(0)
            if state[key][0] == 1 and state[key][1] == sent:
                state[key][0] = 5 if replies[0] > 0 else 6
                emit(sent + timeout_ns, key, state[key][0])

    def open_probe(key, ts):
        if key not in state:
            state[key] = [1, ts]
            queue.append((key, ts))

    def answer(key, ts, verdict, late_ok):
        st = state[key][0]
        if st == 1 or (late_ok and st in (5, 6)):
            replies[0] += 1
            state[key][0] = verdict
            emit(ts, key, verdict)

    for r in rows:
        ts = int(r["ts_ns"])
        expire(ts)
        src = (int(r["src_hi"]), int(r["src_lo"]))
        dst = (int(r["dst_hi"]), int(r["dst_lo"]))
        flags = r["pkt_flags"]
        if flags & _PF_HAS_TCP_FLAGS:
            f = r["tcp_flags"]
            syn, ack, rst = bool(f & _TH_SYN), bool(f & _TH_ACK), bool(f & _TH_RST)
            fwd = (src, dst, int(r["dport"]), 6)
            rev = (dst, src, int(r["sport"]), 6)
            if syn and not ack and not rst:
                open_probe(fwd, ts)
            elif (syn and ack) or rst:
                if rev in state:
                    answer(rev, ts, 4 if rst else 2, True)
            elif ack and fwd in state and state[fwd][0] == 2:
                state[fwd][0] = 3
            continue
        if r["proto"] == 17 and flags & 1:
            rev = (dst, src, int(r["sport"]), 17)
            if rev in state:
                answer(rev, ts, 2, False)
                continue
            open_probe((src, dst, int(r["dport"]), 17), ts)
            continue
        need = _PF_HAS_ICMP | _PF_HAS_INNER | _PF_INNER_HAS_PORTS
        if (flags & need) != need:
            continue
        t, c, iproto = r["icmp_type"], r["icmp_code"], int(r["inner_proto"])
        if r["proto"] == 1 and t == 3:
            if c == 3:
                verdict = 4 if iproto == 17 else 5
            elif c in (0, 1, 9, 10, 13):
                verdict = 5
            else:
                continue
        elif r["proto"] == 58 and t == 1:
            if c == 4:
                verdict = 4 if iproto == 17 else 5
            elif c in (0, 1, 3):
                verdict = 5
            else:
                continue
        else:
            continue
        key = ((int(r["inner_src_hi"]), int(r["inner_src_lo"])),
               (int(r["inner_dst_hi"]), int(r["inner_dst_lo"])), int(r["inner_dport"]), iproto)
        if key in state:
            answer(key, ts, verdict, False)
    expire(1 << 62)
    return out, {k: names[v[0]] for k, v in state.items()}


_ROW_NAMES = ("ts_ns", "src_hi", "src_lo", "dst_hi", "dst_lo", "sport", "dport", "proto",
              "tcp_flags", "icmp_type", "icmp_code", "pkt_flags", "inner_proto", "inner_src_hi",
              "inner_src_lo", "inner_dst_hi", "inner_dst_lo", "inner_sport", "inner_dport",
              "vlan", "wire_len")
