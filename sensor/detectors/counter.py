"""Python half of every rule: owns a counter kernel's arrays, turns its events into Alerts."""
import math

import numpy as np

from kernels import alert_slots as ks
from kernels.host_set import (
    HOST_BITS, SM_HOSTS, SM_SOURCES, SM_UNLISTED, HostSetState, host_set_update,
)
from kernels.port_set import PortSetState, port_set_update
from kernels.probes import PROTO_ARP, PROTO_NDP, outcomes_of
from kernels.slow_tier import (
    DK_ADMITTED, DK_HELD, DK_OVERWRITTEN, ST_SLOW, SlowTierState, doorkeeper_size, slow_tier_update,
)
from kernels.rules import (
    DIR_EXTERNAL, DIR_INBOUND, DIR_INTERNAL, DIR_OUTBOUND, DIRECTION_NAMES, HS_ARP_SWEEP,
    HS_FAILED, HS_HOST_SWEEP, HS_NDP_SWEEP, HS_PORT_SWEEP, HS_TRW, PS_EXPOSED_PROBE,
    PS_PORT_SCAN, PS_STEALTH, PS_UDP_PROBES, STEALTH_NAMES,
)
from sensor.addresses import mac_text, to_text
from sensor.alerts import Alert, alert_id, compress_ports, expand_ports, rfc3339
from sensor.config import port_ranges
from sensor.rules import direction_mask

SKETCH_BITS = 4096
# when several directions were seen, the alert names the most outward-facing one
DIRECTION_PRIORITY = (DIR_INBOUND, DIR_OUTBOUND, DIR_EXTERNAL, DIR_INTERNAL)


def port_bitmap(specs):
    """Port specs ([80, "8000-8100"]) -> 65,536-bit bitmap as uint64[1024]."""
    bits = np.zeros(65536, np.uint8)
    for lo, hi in port_ranges(specs):
        bits[lo:hi + 1] = 1
    return np.packbits(bits, bitorder="little").view(np.uint64).copy()


def linear_count(sketch_words):
    zeros = SKETCH_BITS - int(np.unpackbits(np.ascontiguousarray(sketch_words).view(np.uint8)).sum())
    return int(round(-SKETCH_BITS * math.log(max(zeros, 1) / SKETCH_BITS)))


UPDATES = {"port_set": port_set_update, "host_set": host_set_update,
           "slow_tier": slow_tier_update}


def counter_table(rule, s, capacity):
    """The counter arrays of ``rule`` (its table kind) with section settings ``s``, for
    ``capacity`` slots (also what sensor/memory_budget.py measures)."""
    if rule.table == "port_set":
        return PortSetState(capacity, s["max_listed"])
    if rule.table == "slow_tier":
        return SlowTierState(capacity, s["max_listed"], doorkeeper_size(s["doorkeeper_entries"]))
    # port_sweep's source lists by max_sources (arp/ndp: sender MACs; 0 for the others)
    return HostSetState(capacity, s["max_listed"], s.get("max_sources", 0))


class CounterDetector:
    """One rule on one counter kernel (port-set or host-set)."""

    def __init__(self, rule, cfg, seed, sensor_name):
        s = cfg.section(rule.name)
        self.rule = rule
        self.name = rule.name
        self.sensor_name = sensor_name
        self.seed = np.uint64(seed)
        ways = s["table_ways"]
        capacity = -(-s["max_keys"] // ways) * ways
        self.threshold = s["threshold"]
        self.window_s = s["window_s"]
        self.scope = s.get("scope")
        self.lc = ks.Lifecycle(capacity, s["max_pending_alerts"])
        self.max_sources = s.get("max_sources", 0) if rule.table == "host_set" else 0
        self.table = counter_table(rule, s, capacity)
        self._update = UPDATES[rule.table]
        p = np.zeros(ks.N_PARAMS, np.int64)
        p[ks.P_THRESHOLD] = self.threshold
        p[ks.P_WINDOW_NS] = int(round(self.window_s * 1e9))
        p[ks.P_DELAY_NS] = int(round(s["report_delay_s"] * 1e9))
        p[ks.P_WAYS] = ways
        p[ks.P_LIST] = s["max_listed"]
        p[ks.P_DIR_MASK] = direction_mask(s["directions"])
        p[ks.P_GROWTH] = s["growth_factor"]
        p[ks.P_UPDATE_NS] = int(round(s["update_interval_s"] * 1e9))
        p[ks.P_SUPPRESS_NS] = int(round(s["suppress_s"] * 1e9))
        p[ks.P_MODE] = rule.mode
        p[ks.P_PAIR_SCOPE] = int(self.scope == "pair")
        p[ks.P_COUNT_ATTEMPTS] = int(rule.count_kind == "attempts" or s.get("count") == "attempts")
        p[ks.P_NEW_TARGET] = int(s["new_target_updates"])
        p[ks.P_COUNT_FILTERED] = int(s.get("count_filtered", True))
        from_outcomes = rule.mode in (HS_HOST_SWEEP, HS_PORT_SWEEP) and not s.get("count_open", True)
        p[ks.P_FROM_OUTCOMES] = int(rule.table == "host_set" and from_outcomes)
        if rule.mode == HS_TRW and rule.table == "host_set":
            theta0, theta1 = s["theta0"], s["theta1"]
            p_d, p_f = s["p_detect"], s["p_false"]
            micro = lambda x: int(round(x * 1e6))
            p[ks.P_TRW_FAIL] = micro(math.log((1 - theta1) / (1 - theta0)))
            p[ks.P_TRW_SUCCESS] = micro(math.log(theta1 / theta0))
            p[ks.P_TRW_UPPER] = micro(math.log(p_d / p_f))
            p[ks.P_TRW_LOWER] = micro(math.log((1 - p_d) / (1 - p_f)))
        self.sensitive_bits = port_bitmap(s.get("sensitive_ports", []))
        self.sensitive_ports = set(p_ for lo, hi in port_ranges(s.get("sensitive_ports", []))
                                   for p_ in range(lo, hi + 1))
        p[ks.P_SENSITIVE] = s.get("sensitive_threshold", 0)
        if rule.table == "slow_tier":
            # the kernel decides when an alert falls due (threshold and span)
            p[ks.P_THRESHOLD] = 1 << 62
            p[ks.P_SLOW_THRESHOLD] = self.threshold
            p[ks.P_MIN_SPAN_NS] = int(round(s["min_span_s"] * 1e9))
        self.params = p
        self.count_kind = "attempts" if p[ks.P_COUNT_ATTEMPTS] else rule.count_kind
        self.excluded_ports = port_bitmap(s["exclude_ports"])
        if rule.table == "host_set":
            self.reads_outcomes = (rule.mode in (HS_FAILED, HS_TRW, HS_ARP_SWEEP, HS_NDP_SWEEP)
                                   or bool(p[ks.P_FROM_OUTCOMES]))
        elif rule.table == "slow_tier":
            self.reads_outcomes = True
        else:
            self.reads_outcomes = rule.mode in (PS_EXPOSED_PROBE, PS_STEALTH, PS_UDP_PROBES)
        self.probes = None          # the engine's ProbeState, for outcomes in alerts
        # set by the engine while another thread updates the probe table (during
        # one batch): alerts then get their outcomes from ``complete_outcomes``
        self.defer_outcomes = False
        self.deferred = []
        # port_scan: leave out the ports whose connection succeeded (``withholds``)
        self.discount_open = (rule.table == "port_set" and rule.mode == PS_PORT_SCAN
                              and not s.get("count_open", True))
        self.withheld_open = 0
        self.open_ports_buf = np.zeros(65536, np.int64)
        self.probed_buf = np.zeros(65536, np.uint8)

    # --- running -------------------------------------------------------------
    def process(self, batch, cls, outcome):
        """Feed a batch (packets, or outcome rows for outcome rules); return due alerts."""
        alerts = []
        cols = batch.columns
        lc = self.lc.arrays
        tab = self.table.arrays
        extra = ((self.sensitive_bits,) if self.rule.table == "port_set" else
                 (self.table.doorkeeper, self.table.dk_meta) if self.rule.table == "slow_tier"
                 else ())
        i = 0
        while True:
            i, event, slot = self._update(cols, cls, i, batch.n, lc, tab, self.params,
                                          self.excluded_ports, self.seed, outcome, *extra)
            if event == ks.EV_NONE:
                return alerts
            now = int(batch.ts_ns[min(i, batch.n - 1)])
            alerts.append(self._report(slot, now))

    def warm_up(self):
        """Load (or compile) the kernels an alert report uses, changing no state:
        releasing a slot (on a scratch lifecycle of the same array types) and
        reading its outcomes from the probe table. Otherwise the first alert
        would wait for them (``scan-sensor compile`` fills the cache this way)."""
        ks.release_slot(ks.Lifecycle(2, 1).arrays, 0)   # 2: strided like real ones
        self._outcomes(np.zeros(5, np.uint64), None)

    def advance(self, now_ns):
        """Packet time reached ``now_ns``: report alerts due by then."""
        alerts = []
        while True:
            slot = int(ks.next_due(self.lc.arrays, now_ns))
            if slot < 0:
                return alerts
            alerts.append(self._report(slot, now_ns))

    def flush(self):
        """End of input: report every alert still waiting, earliest due first."""
        lc = self.lc
        n = int(lc.meta[ks.M_NPENDING])
        slots = sorted(lc.pending[:n].tolist(), key=lambda s: (lc.due_ns[s], s))
        out = [self._report(s, int(lc.due_ns[s])) for s in slots]
        if self.rule.mode == HS_PORT_SWEEP and self.rule.table == "host_set":
            # port_sweep is not merged into prober episodes (sensor/episodes.py), so no
            # episode end sends what came after its last report: an episode whose
            # sources or targets grew since (an update held by update_interval_s) is
            # reported once more here, last seen first
            grown = [int(s) for s in np.flatnonzero((lc.seq > 0) & (lc.pinned == 0)
                                                    & (lc.new_target != 0))]
            grown.sort(key=lambda s: (int(lc.last_seen_ns[s]), int(lc.keys[s, 2])))
            out += [self._report(s, int(lc.last_seen_ns[s])) for s in grown]
        return out

    def stats(self):
        m = self.lc.meta
        p = self.name + "_"
        own = {}
        if self.rule.table == "slow_tier":
            dk = self.table.dk_meta
            own = {p + "doorkeeper_held": int(dk[DK_HELD]),
                   p + "doorkeeper_admitted": int(dk[DK_ADMITTED]),
                   p + "doorkeeper_overwritten": int(dk[DK_OVERWRITTEN])}
        return {**own,
            p + "counted": int(m[ks.M_COUNTED]),
            p + "evictions": int(m[ks.M_EVICTIONS]),
            p + "forced_reports": int(m[ks.M_FORCED]),
            p + "direction_filtered": int(m[ks.M_DIR_FILTERED]),
            p + "port_filtered": int(m[ks.M_PORT_FILTERED]),
            p + "table_bytes": int(self.lc.nbytes() + self.table.nbytes()),
            **({p + "withheld_open": self.withheld_open} if self.discount_open else {}),
        }

    def withholds(self, alert):
        """port_scan with ``count_open = false``: True when, the ports whose connection
        the probe table saw succeed left out, the alert no longer reaches its
        threshold (nor the sensitive one). Asked once the alert's outcomes are known
        (``Engine._sendable``); a withheld alert is counted and not sent."""
        if not self.discount_open or alert.rule != self.name or alert.open_ports is None:
            return False
        opened = set(expand_ports(alert.open_ports))
        if not opened:
            return False
        ports = set(expand_ports(alert.dst_ports or ""))
        if alert.count - len(ports & opened) >= self.threshold:
            return False
        least = int(self.params[ks.P_SENSITIVE])
        if least > 0 and len((ports & self.sensitive_ports) - opened) >= least:
            return False
        self.withheld_open += 1
        return True

    def _report(self, slot, now_ns):
        alert = self.snapshot(slot)
        alert.emitted_ns = max(now_ns, int(self.lc.last_seen_ns[slot]))
        ks.release_slot(self.lc.arrays, slot)
        return alert

    # --- evidence ------------------------------------------------------------
    def snapshot(self, slot):
        lc = self.lc
        key = lc.keys[slot]
        if self.rule.table == "port_set":
            fields = self._port_set_evidence(slot)
        elif self.rule.table == "slow_tier":
            fields = self._slow_tier_evidence(slot)
        else:
            fields = self._host_set_evidence(slot)
        count = int(lc.count[slot])
        dmask = int(lc.dir_mask[slot])
        direction = next((DIRECTION_NAMES[b] for b in DIRECTION_PRIORITY if dmask & b), None)
        outside = direction in ("inbound", "external")
        first = int(lc.first_seen_ns[slot])
        seq = int(lc.seq[slot]) + 1
        key_text = "|".join(str(int(w)) for w in key)
        evidence = int(lc.evidence[slot])
        deferred_key = key.copy() if self.defer_outcomes else None
        if not self.defer_outcomes:
            fields.update(self._outcomes(key, fields.get("dst_ports")))
        alert = Alert(
            rule=self.name, first_seen=rfc3339(first), last_seen=rfc3339(lc.last_seen_ns[slot]),
            packets=int(lc.probes[slot]),
            severity="high" if count >= 10 * self.threshold else "medium",
            mitre=list(self.rule.mitre_from_outside if outside else self.rule.mitre),
            sensor=self.sensor_name, id=alert_id(self.sensor_name, self.name, key_text, first),
            threshold=self.threshold, window_s=self.window_s, count=count,
            count_kind=self.count_kind, direction=direction, seq=seq, update=seq > 1,
            scope=self.scope,
            probe_types=[n for b, n in STEALTH_NAMES.items() if evidence & b] or None,
            **fields)
        if deferred_key is not None:
            self.deferred.append((alert, deferred_key))
        return alert

    def complete_outcomes(self):
        """Fill in the outcomes of alerts made while the probe table was busy."""
        for alert, key in self.deferred:
            for name, value in self._outcomes(key, alert.dst_ports).items():
                setattr(alert, name, value)
        self.deferred.clear()

    # rules whose probers' attempts are in the probe table: (protocol, by key port)
    OUTCOME_SCOPE = {"port_scan": (6, False), "exposed_host_probe": (6, False),
                     "udp_scan": (17, False), "host_sweep": (6, True),
                     "failed_connections": (0, False), "trw_scanner": (0, False),
                     "stealth_scan": (6, False), "arp_sweep": (PROTO_ARP, False),
                     "ndp_sweep": (PROTO_NDP, False), "slow_scan": (6, False),
                     "vertical_scan": (6, False)}
    L2_RULES = ("arp_sweep", "ndp_sweep")     # outcomes = hosts found / unanswered; no ports

    def _outcomes(self, key, dst_ports):
        """outcomes and open_ports of the key's probes in the probe table; for
        udp_scan also ``dst_ports``: the counted ports (``dst_ports``, text) and every
        other port of the key's probes (the open ones, which never count, and the
        excluded ones), so the evidence shows the whole probed set."""
        scope = self.OUTCOME_SCOPE.get(self.name)
        if scope is None or self.probes is None:
            return {}
        proto, by_port = scope
        by_target = self.scope == "pair"
        port = int(key[2]) if by_port else -1
        self.probed_buf[:] = 0
        n_open, n_closed, n_filtered, n_unknown, n_pending, n_ports = outcomes_of(
            self.probes.arrays, key[0], key[1], key[2], key[3], by_target, port, proto,
            self.name == "stealth_scan", self.open_ports_buf, self.probed_buf)
        ports = sorted(set(self.open_ports_buf[:min(n_ports, len(self.open_ports_buf))].tolist()))
        outcomes = {"open": int(n_open), "closed": int(n_closed), "filtered": int(n_filtered),
                    "unknown": int(n_unknown + n_pending)}
        if self.name in self.L2_RULES:
            return dict(outcomes=outcomes)
        out = dict(outcomes=outcomes, open_ports=compress_ports(ports))
        if self.name == "udp_scan":
            probed = set(np.flatnonzero(self.probed_buf).tolist())
            probed.update(expand_ports(dst_ports or ""))
            out.update(dst_ports=compress_ports(probed), dst_port_count=len(probed),
                       dst_port=next(iter(probed)) if len(probed) == 1 else None)
        return out

    def _port_set_evidence(self, slot):
        t = self.table
        key = self.lc.keys[slot]
        if t.tier_n[slot] >= 0:     # still in its inline entries (kernels/port_set.py)
            ports = np.unique(t.tier[slot, :t.tier_n[slot]] & 0xFFFF)
        else:
            words = t.ports[slot, 0] | t.ports[slot, 1]
            ports = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
        n_list = int(t.target_n[slot])
        dst_ips = [to_text(t.target_hi[slot, j], t.target_lo[slot, j]) for j in range(n_list)]
        dst_count, estimated = n_list, False
        if t.sketch_live[slot]:
            dst_count, estimated = max(n_list, linear_count(t.target_sketch[slot])), True
        fields = dict(
            src_ip=to_text(key[0], key[1]), dst_ips=dst_ips, dst_ip_count=dst_count,
            dst_ips_omitted=dst_count - len(dst_ips), dst_ip_count_estimated=estimated,
            dst_ports=compress_ports(ports), dst_port_count=len(ports),
            dst_port=int(ports[0]) if len(ports) == 1 else None)
        if self.sensitive_ports:
            fields["sensitive_ports"] = compress_ports(set(ports.tolist()) & self.sensitive_ports)
        return fields

    def _host_set_evidence(self, slot):
        t = self.table
        key = self.lc.keys[slot]
        mode = self.rule.mode
        n_list = int(t.item_n[slot])
        full = n_list >= t.item_hi.shape[1]
        hosts, ports = [], set()
        for j in range(n_list):
            h = to_text(t.item_hi[slot, j], t.item_lo[slot, j])
            if h not in hosts:
                hosts.append(h)
            ports.add(int(t.item_port[slot, j]))
        host_count = len(hosts)
        if full and mode != HS_FAILED:
            host_count = max(host_count, linear_count(t.sketch[slot, 0] | t.sketch[slot, 1]))
        fields = dict(dst_ips=hosts, dst_ip_count=host_count, dst_ips_omitted=host_count - len(hosts),
                      dst_ip_count_estimated=full, count_estimated=full)
        if mode == HS_FAILED:
            pairs = n_list
            if full:
                pairs = max(n_list, linear_count(t.sketch[slot, 0] | t.sketch[slot, 1]))
            fields.update(src_ip=to_text(key[0], key[1]), dst_ports=compress_ports(ports),
                          dst_port_count=len(ports), pairs_omitted=pairs - n_list)
        elif mode in (HS_HOST_SWEEP, HS_PORT_SWEEP):
            port = int(key[2])
            fields.update(dst_ports=str(port), dst_port_count=1, dst_port=port)
        else:  # icmp_sweep
            fields.update(dst_ports="", dst_port_count=0)
        if mode == HS_PORT_SWEEP:
            fields.update(self._sources(slot))
        else:
            fields.setdefault("src_ip", to_text(key[0], key[1]))
        if mode in (HS_ARP_SWEEP, HS_NDP_SWEEP):
            # the sender's MAC(s), most requests first: the one identity an L2 sweeper shows
            n = int(t.src_meta[slot, SM_SOURCES])
            macs = sorted(range(n), key=lambda e: (-int(t.src_probes[slot, e]),
                                                   int(t.src_lo[slot, e])))
            if macs:
                fields["src_mac"] = mac_text(t.src_lo[slot, macs[0]])
        return fields

    def _slow_tier_evidence(self, slot):
        t = self.table
        key = self.lc.keys[slot]
        n = int(t.item_n[slot])
        hosts, ports = [], set()
        for j in range(n):
            h = to_text(t.item_hi[slot, j], t.item_lo[slot, j])
            if h not in hosts:
                hosts.append(h)
            ports.add(int(t.item_tag[slot, j]) & 0xFFFFFFFF)
        dropped = int(t.dropped[slot])
        fields = dict(src_ip=to_text(key[0], key[1]), dst_ips=hosts, dst_ip_count=len(hosts),
                      dst_ips_omitted=0, dst_ip_count_estimated=int(t.dropped_hosts[slot]) > 0,
                      dst_ports=compress_ports(ports), dst_port_count=len(ports),
                      count_estimated=dropped > 0, pairs_omitted=dropped)
        if self.rule.mode != ST_SLOW:        # vertical_scan: the ports of one target
            return fields
        vertical = int(t.vbest[slot]) >= int(t.hbest[slot])
        span_ns = int(self.lc.last_seen_ns[slot]) - int(self.lc.first_seen_ns[slot])
        fields.update(slow=True, span_s=round(span_ns / 1e9, 3),
                      slow_shape="ports_on_target" if vertical else "targets_on_port")
        if vertical:
            fields["slow_target"] = to_text(t.vbest_target[slot, 0], t.vbest_target[slot, 1])
        else:
            fields["dst_port"] = int(t.hbest_port[slot])
        return fields

    def _sources(self, slot):
        """port_sweep: every listed source of the episode, most probes first."""
        t = self.table
        meta = t.src_meta[slot]
        hosts = [to_text(t.host_hi[slot, j], t.host_lo[slot, j])
                 for j in range(int(meta[SM_HOSTS]))]
        sources = []
        for e in range(int(meta[SM_SOURCES])):
            mask = int(t.src_hosts[slot, e])
            named = [hosts[j] for j in range(HOST_BITS) if mask >> j & 1]
            beyond = int(t.src_beyond[slot, e])
            host_count = len(named) + (small_linear_count(beyond) if beyond else 0)
            sources.append(((-int(t.src_probes[slot, e]), int(t.src_hi[slot, e]),
                             int(t.src_lo[slot, e])),
                            {"ip": to_text(t.src_hi[slot, e], t.src_lo[slot, e]),
                             "probes": int(t.src_probes[slot, e]), "hosts": named,
                             "host_count": host_count, "hosts_omitted": host_count - len(named)}))
        sources = [entry for _, entry in sorted(sources, key=lambda x: x[0])]
        complete = int(meta[SM_UNLISTED]) == 0
        count = len(sources)
        if not complete:
            count = max(count + 1, linear_count(t.src_sketch[slot]))
        return dict(src_ip=sources[0]["ip"] if sources else "", sources=sources,
                    source_count=count, source_count_estimated=not complete,
                    sources_omitted=count - len(sources), sources_complete=complete)


def small_linear_count(word):
    """Linear-counting estimate of the items hashed into one 64-bit word."""
    zeros = 64 - bin(word).count("1")
    return int(round(-64 * math.log(max(zeros, 1) / 64)))
