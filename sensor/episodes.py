"""Prober episodes: the rules' alerts about one prober merged into one alert whose
evidence covers the whole episode and whose updates are few. No I/O, no clock.

Theory of operation
-------------------
The rules report per rule key (``sensor/detectors/counter.py``): a default nmap
``-sS`` scan gives a ``port_scan`` and a ``failed_connections`` alert, each with
its own id, and each update carries what the rule's window holds *now*. This
layer sits between the detectors and the rate gate (``Engine._deliver``) and
turns them into one alert per *prober episode*:

* **Key**: the prober, ``src_ip``. ``port_sweep`` is not merged (its key is a
  port and it names many sources): its alerts pass through as they are. With
  ``alerts.group = "rule"``, or when fewer than two prober rules run in the
  engine (the single-rule presets), every alert passes through unchanged.
* **Episode**: starts with the first rule report about a prober. It ends when
  packet time passes ``quiet`` after the prober's last counted packet seen in any
  report (``quiet`` = twice the longest ``window_s`` among the episode's rules,
  the kernels' own idle rule), or when a report arrives ``max_s`` after the
  episode started (the longest ``suppress_s`` among its rules): that report
  then starts a new episode (new id).
* **Alert**: ``id`` = uuid5(sensor | "prober" | src_ip | first packet of the first
  report), so a replay gives the same id; ``rule`` = the highest of the matched
  rules in ``PRIORITY``; ``rules`` = the matched rules in ``PRIORITY`` order;
  ``rule_evidence`` = {rule: its count, count_kind, threshold, window_s,
  first_seen, last_seen, packets, count_estimated}; top-level evidence = the
  union over every report of the episode: ``dst_ports`` / ``open_ports`` /
  ``sensitive_ports`` exact (a 65,536-bit set per episode), ``dst_ips`` up to
  ``max_listed`` (then ``dst_ips_omitted``, and ``dst_ip_count`` a lower bound
  flagged ``dst_ip_count_estimated``), counts and ``outcomes`` the largest seen,
  first_seen the earliest, last_seen the latest. ``count``, ``count_kind``,
  ``threshold`` and ``window_s`` are the primary rule's. Nothing shrinks from one
  report to the next.
* **When it is sent**: the first report waits ``first_delay_s`` (packet time) so
  that rules matching the same activity at about the same time are in it. Every
  later rule report (and every ``refresh``) is folded in; an update (same id,
  ``seq`` + 1, ``update: true``) is sent only on a material change -- a rule not
  in the last sent report, the size (largest of port count, target count and any
  rule's count) reaching ``growth`` times the last sent size, or a target not
  listed in the last sent report while that report listed fewer than
  ``new_target_until`` targets (a scan moving to another host; a sweep's new
  targets are its growth) -- and no sooner than ``update_interval_s``
  after the last one. When the episode ends (or at ``finish``) whatever was
  folded since the last sent report is sent, so nothing is silently lost.
* **Order**: every event (a report, a first-report delay running out, a held
  update's interval passing, an episode's quiet time passing) is handled in
  packet-time order, and each emitted alert carries the packet time of its event
  in ``emitted_ns``, so the output does not depend on batch boundaries.

Memory: per live episode about 8 KiB at most for the port sets plus the listed
targets; at most ``MAX_EPISODES`` episodes (past it the one quiet longest ends
early, its final state sent).
"""
import heapq

import numpy as np

from sensor.alerts import Alert, alert_id, compress_ports, ranges_text, rfc3339
from sensor.output.fields import parse_rfc3339_ns

# primary rule: the first of these that matched (also the order of ``rules``)
PRIORITY = ("port_scan", "vertical_scan", "udp_scan", "stealth_scan", "host_sweep", "icmp_sweep",
            "arp_sweep", "ndp_sweep", "exposed_host_probe", "failed_connections", "trw_scanner",
            "slow_scan")
SEPARATE = ("port_sweep",)          # never merged: keyed by a port, names many sources
DIRECTIONS = ("inbound", "outbound", "external", "internal")   # most outward-facing first
RULE_EVIDENCE = ("count", "count_kind", "threshold", "window_s", "first_seen", "last_seen",
                 "packets", "count_estimated")
OUTCOME_NAMES = ("open", "closed", "filtered", "unknown")
MAX_EPISODES = 65536
EV_FIRST, EV_UPDATE, EV_QUIET = 0, 1, 2


def port_bits(text):
    """'21-23,80' -> int with bits 21, 22, 23, 80 set."""
    text = str(text or "")
    if not text:
        return 0
    spans = _spans(text)
    # one bit array, then one conversion: OR-ing a shifted run into a Python int per
    # range copies the whole (8 KiB) number each time, quadratic for ~20,000 ranges
    lo, hi = spans
    size = int(hi.max()) + 2
    edges = np.bincount(lo, minlength=size) - np.bincount(hi + 1, minlength=size)
    bits = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def _spans(text):
    """(starts, ends) of the ranges in '21-23,80' as int64 arrays, parsed without a
    Python loop over the ranges (a random-order scan of every port has ~20,000)."""
    raw = np.frombuffer(text.encode("ascii", "replace"), np.uint8)
    sep = (raw == ord(",")) | (raw == ord("-"))
    digit = (raw >= ord("0")) & (raw <= ord("9"))
    where = np.flatnonzero(sep)
    tokens = len(where) + 1
    token = np.cumsum(sep)                       # token of each character
    lengths = np.bincount(token[digit], minlength=tokens)
    if not (sep | digit).all() or (lengths == 0).any() or lengths.max() > 9:
        return _spans_slow(text)                 # not canonical: stray characters
    ends = np.append(where, len(raw))            # one past each token's last digit
    i = np.flatnonzero(digit)
    weight = 10.0 ** (ends[token[i]] - i - 1)
    value = np.rint(np.bincount(token[i], weights=(raw[i] - ord("0")) * weight,
                                minlength=tokens)).astype(np.int64)
    closes = np.zeros(tokens, bool)              # token k ends a range: "-" before it
    closes[1:] = raw[where] == ord("-")
    starts = np.flatnonzero(~closes)
    nxt = np.minimum(starts + 1, tokens - 1)
    has_end = (starts + 1 < tokens) & closes[nxt]
    return value[starts], np.where(has_end, value[nxt], value[starts])


def _spans_slow(text):
    lo, hi = [], []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        lo.append(int(a))
        hi.append(int(b or a))
    return np.array(lo or [0], np.int64), np.array(hi or [-1], np.int64)


def bits_text(bits):
    """Inverse of port_bits: the set bits as ranges."""
    if not bits:
        return ""
    raw = np.frombuffer(bits.to_bytes((bits.bit_length() + 7) // 8, "little"), np.uint8)
    return ranges_text(np.flatnonzero(np.unpackbits(raw, bitorder="little")))


class Episode:
    """One prober's merged state (plain values only: saved as they are)."""

    def __init__(self, src_ip, start_ns):
        self.src_ip = src_ip
        self.start_ns = start_ns         # emitted time of the report that opened it
        self.id = None
        self.seq = 0                     # reports sent
        self.first_ns = None
        self.last_ns = 0
        self.rules = {}                  # rule -> evidence dict (RULE_EVIDENCE, ns times)
        self.ports = 0
        self.open_ports = None           # bits, or None if no report had them
        self.sensitive = None
        self.dst_ips = []
        self.dst_ip_count = 0
        self.ips_estimated = False
        self.outcomes = None
        self.packets = 0
        self.high = False
        self.mitre = []
        self.direction = None
        self.src_mac = None              # the first reported by an ARP/NDP rule
        self.scope = None
        self.probe_types = []
        self.slow = None                 # slow_scan's shape, target and span, once it matched
        self.quiet_ns = 0
        self.max_ns = 0
        # what the last sent report held (material-change test) and when it went
        self.sent_rules = ()
        self.sent_size = 0
        self.sent_ips = 0                # len(dst_ips) when last sent
        self.sent_ns = 0
        self.seen_ns = start_ns          # emitted time of the last report folded in
        self.dirty = False               # folded something since the last sent report
        self.version = 0                 # bumps invalidate queued events

    def size(self):
        counts = [r["count"] for r in self.rules.values()]
        return max([self.ports.bit_count(), self.dst_ip_count] + counts)

    def material(self, growth, new_target_until):
        if any(r not in self.sent_rules for r in self.rules):
            return True
        if growth and self.size() >= growth * max(self.sent_size, 1):
            return True
        # a new target matters while the scan had few (it moved on to another host);
        # past that, a sweep's new targets are its growth
        return len(self.dst_ips) > self.sent_ips and self.sent_ips < new_target_until

    BIT_SETS = ("ports", "open_ports", "sensitive")

    def state(self):
        out = dict(vars(self), rules={k: dict(v) for k, v in self.rules.items()},
                   dst_ips=list(self.dst_ips), mitre=list(self.mitre),
                   probe_types=list(self.probe_types), sent_rules=list(self.sent_rules))
        for name in self.BIT_SETS:        # 65,536-bit ints: msgpack takes bytes
            if out[name] is not None:
                out[name] = out[name].to_bytes((out[name].bit_length() + 7) // 8, "little")
        return out

    @classmethod
    def from_state(cls, saved):
        ep = cls(saved["src_ip"], saved["start_ns"])
        for name, value in saved.items():
            if name in cls.BIT_SETS and value is not None:
                value = int.from_bytes(value, "little")
            setattr(ep, name, value)
        ep.sent_rules = tuple(ep.sent_rules)
        return ep


class Episodes:
    """The merging layer of one engine. ``admit(alerts, now_ns)`` returns what to send."""

    def __init__(self, sensor_name, rules, *, group="prober", update_interval_s=300.0,
                 growth=2.0, first_delay_s=5.0, max_listed=1024, new_target_until=8):
        """``rules``: {rule name: (window_s, suppress_s)} of the rules this engine counts."""
        self.sensor_name = sensor_name
        self.rules = dict(rules)
        prober_rules = [r for r in self.rules if r not in SEPARATE]
        self.active = group == "prober" and len(prober_rules) >= 2
        self.interval_ns = int(round(update_interval_s * 1e9))
        self.growth = growth
        self.new_target_until = new_target_until
        self.delay_ns = int(round(first_delay_s * 1e9))
        self.max_listed = max_listed
        self.episodes = {}               # src_ip -> Episode
        self.events = []                 # heap of (time_ns, seq, kind, src_ip, version)
        self.counter = 0                 # tie-break of the heap: insertion order
        self.now_ns = 0                  # latest packet time handled
        self.out = []

    @classmethod
    def from_config(cls, cfg, rule_names):
        names = [r for r in rule_names if r not in SEPARATE]
        return cls(cfg.sensor_name,
                   {r: (cfg[r + ".window_s"], cfg[r + ".suppress_s"]) for r in rule_names},
                   group=cfg["alerts.group"], update_interval_s=cfg["alerts.update_interval_s"],
                   growth=cfg["alerts.update_growth"],
                   first_delay_s=cfg["alerts.first_report_delay_s"],
                   new_target_until=cfg["alerts.new_target_updates_until"],
                   max_listed=max([cfg[r + ".max_listed"] for r in names], default=64))

    # --- input ---------------------------------------------------------------
    def admit(self, alerts, now_ns):
        """Rule alerts (sorted by ``emitted_ns``, none later than ``now_ns``) in;
        alerts to send out, in packet-time order."""
        if not self.active:
            return alerts
        for alert in alerts:
            self._run_events(alert.emitted_ns, inclusive=True)   # ties: events first, as a tick would
            if alert.rule in SEPARATE or alert.rule not in self.rules:
                self.out.append(alert)
            else:
                self._fold(alert, report=True)
        return self.tick(now_ns)

    def refresh(self, alert):
        """A rule's current evidence about a key (not a report): folded in, never
        opening an episode. Called so no port leaves a window unseen."""
        ep = self.episodes.get(alert.src_ip) if self.active else None
        if ep is not None and alert.rule in ep.rules:
            self._fold(alert, report=False)

    def tick(self, now_ns):
        """Packet time reached ``now_ns``: send what fell due by then."""
        if not self.active:
            return []
        self._run_events(now_ns, inclusive=True)
        self.now_ns = max(self.now_ns, now_ns)
        out, self.out = self.out, []
        return out

    def finish(self):
        """End of input: every episode's last state is sent, earliest first."""
        if not self.active:
            return []
        for ep in sorted(self.episodes.values(), key=lambda e: (e.last_ns, e.src_ip)):
            self._end(ep, max(ep.last_ns, self.now_ns))
        self.episodes.clear()
        self.events = []
        out, self.out = self.out, []
        return out

    def live_keys(self):
        """(src_ip, rule) of every live episode's rules: what ``refresh`` can use."""
        return [(ep.src_ip, rule) for ep in self.episodes.values() for rule in ep.rules]

    # --- events --------------------------------------------------------------
    def _push(self, ep, time_ns, kind):
        self.counter += 1
        heapq.heappush(self.events, (time_ns, self.counter, kind, ep.src_ip, ep.version))

    def _run_events(self, until_ns, inclusive):
        ev = self.events
        while ev and (ev[0][0] <= until_ns if inclusive else ev[0][0] < until_ns):
            time_ns, _, kind, src, version = heapq.heappop(ev)
            ep = self.episodes.get(src)
            if ep is None or ep.version != version:
                continue
            if kind == EV_QUIET:
                self._end(ep, time_ns)
                del self.episodes[src]
            elif kind == EV_FIRST or ep.material(self.growth, self.new_target_until):
                self._send(ep, time_ns)
                self._schedule(ep)

    def _schedule(self, ep):
        ep.version += 1
        if ep.seq == 0:
            self._push(ep, ep.start_ns + self.delay_ns, EV_FIRST)
        elif ep.dirty and ep.material(self.growth, self.new_target_until):
            self._push(ep, max(ep.sent_ns + self.interval_ns, ep.seen_ns), EV_UPDATE)
        self._push(ep, max(ep.last_ns + ep.quiet_ns, ep.seen_ns), EV_QUIET)

    # --- folding -------------------------------------------------------------
    def _fold(self, a, report):
        at = a.emitted_ns
        ep = self.episodes.get(a.src_ip)
        if ep is not None and report and at >= ep.start_ns + ep.max_ns:
            self._end(ep, at)
            del self.episodes[a.src_ip]
            ep = None
        if ep is None:
            if len(self.episodes) >= MAX_EPISODES:
                oldest = min(self.episodes.values(), key=lambda e: (e.last_ns, e.src_ip))
                self._end(oldest, at)
                del self.episodes[oldest.src_ip]
            ep = self.episodes[a.src_ip] = Episode(a.src_ip, at)
        first = parse_rfc3339_ns(a.first_seen)
        last = parse_rfc3339_ns(a.last_seen)
        window_s, suppress_s = self.rules[a.rule]
        ep.quiet_ns = max(ep.quiet_ns, int(round(2 * window_s * 1e9)))
        ep.max_ns = max(ep.max_ns, int(round(suppress_s * 1e9)))
        r = ep.rules.get(a.rule)
        if r is None:
            ep.rules = {n: ep.rules.get(n) or {} for n in PRIORITY
                        if n in ep.rules or n == a.rule}
            r = ep.rules[a.rule]
            r.update(count=a.count, count_kind=a.count_kind, threshold=a.threshold,
                     window_s=a.window_s, first_seen=first, last_seen=last, packets=a.packets,
                     count_estimated=a.count_estimated)
        else:
            r["count"] = max(r["count"], a.count)
            r["first_seen"] = min(r["first_seen"], first)
            r["last_seen"] = max(r["last_seen"], last)
            r["packets"] = max(r["packets"], a.packets)
            r["count_estimated"] = r["count_estimated"] or a.count_estimated
        ep.first_ns = first if ep.first_ns is None else min(ep.first_ns, first)
        ep.last_ns = max(ep.last_ns, last)
        ep.ports |= port_bits(a.dst_ports)
        if a.open_ports is not None:
            ep.open_ports = (ep.open_ports or 0) | port_bits(a.open_ports)
        if a.sensitive_ports is not None:
            ep.sensitive = (ep.sensitive or 0) | port_bits(a.sensitive_ports)
        listed = set(ep.dst_ips)
        unlisted = 0
        for ip in a.dst_ips:
            if ip in listed:
                continue
            if len(ep.dst_ips) < self.max_listed:
                ep.dst_ips.append(ip)
                listed.add(ip)
            else:
                unlisted += 1
        if unlisted or a.dst_ip_count_estimated:
            ep.ips_estimated = True
        ep.dst_ip_count = max(ep.dst_ip_count, a.dst_ip_count, len(ep.dst_ips) + unlisted)
        if a.outcomes is not None:
            old = ep.outcomes or {}
            ep.outcomes = {k: max(old.get(k, 0), int(a.outcomes.get(k, 0))) for k in OUTCOME_NAMES}
        ep.packets = max(ep.packets, a.packets)
        ep.high = ep.high or a.severity == "high"
        ep.mitre += [m for m in a.mitre if m not in ep.mitre]
        if a.direction is not None and (ep.direction is None or DIRECTIONS.index(a.direction)
                                        < DIRECTIONS.index(ep.direction)):
            ep.direction = a.direction
        ep.scope = ep.scope or a.scope
        ep.src_mac = ep.src_mac or a.src_mac
        ep.probe_types += [p for p in a.probe_types or () if p not in ep.probe_types]
        if a.slow:
            span = max(a.span_s or 0.0, (ep.slow or {}).get("span_s", 0.0))
            ep.slow = {"slow_shape": a.slow_shape, "slow_target": a.slow_target, "span_s": span}
        ep.dirty = True
        ep.seen_ns = max(ep.seen_ns, at)
        self._schedule(ep)

    # --- output --------------------------------------------------------------
    def _end(self, ep, at_ns):
        if ep.dirty or ep.seq == 0:
            self._send(ep, at_ns)
        ep.version += 1

    def _send(self, ep, at_ns):
        if ep.id is None:
            ep.id = alert_id(self.sensor_name, "prober", ep.src_ip, ep.first_ns)
        ep.seq += 1
        ep.sent_rules = tuple(ep.rules)
        ep.sent_size = ep.size()
        ep.sent_ips = len(ep.dst_ips)
        ep.sent_ns = at_ns
        ep.dirty = False
        self.out.append(self.alert(ep, at_ns))

    def alert(self, ep, at_ns):
        """The merged alert of an episode as it stands."""
        primary = next(iter(ep.rules))
        p = ep.rules[primary]
        n_ports = ep.ports.bit_count()
        evidence = {rule: {k: (rfc3339(v) if k in ("first_seen", "last_seen") else v)
                           for k, v in r.items()} for rule, r in ep.rules.items()}
        return Alert(
            rule=primary, src_ip=ep.src_ip, dst_ips=list(ep.dst_ips),
            dst_ip_count=ep.dst_ip_count, dst_ips_omitted=ep.dst_ip_count - len(ep.dst_ips),
            dst_ip_count_estimated=ep.ips_estimated, dst_ports=bits_text(ep.ports),
            dst_port_count=n_ports, first_seen=rfc3339(ep.first_ns), last_seen=rfc3339(ep.last_ns),
            packets=ep.packets, severity="high" if ep.high else "medium", mitre=list(ep.mitre),
            sensor=self.sensor_name, id=ep.id, threshold=p["threshold"], window_s=p["window_s"],
            count=p["count"], count_kind=p["count_kind"], count_estimated=p["count_estimated"],
            direction=ep.direction, src_mac=ep.src_mac, seq=ep.seq, update=ep.seq > 1,
            scope=ep.scope,
            dst_port=(ep.ports.bit_length() - 1) if n_ports == 1 else None,
            probe_types=list(ep.probe_types) or None,
            sensitive_ports=None if ep.sensitive is None else bits_text(ep.sensitive),
            outcomes=None if ep.outcomes is None else dict(ep.outcomes),
            open_ports=None if ep.open_ports is None else bits_text(ep.open_ports),
            rules=list(ep.rules), rule_evidence=evidence, emitted_ns=at_ns,
            slow=True if ep.slow else None, **(ep.slow or {}))

    # --- checkpoints ---------------------------------------------------------
    def capture(self):
        """Plain values for a checkpoint (``sensor/state_tables.py``)."""
        live = [list(e[:4]) for e in sorted(self.events)
                if e[3] in self.episodes and self.episodes[e[3]].version == e[4]]
        return {"episodes": [ep.state() for ep in self.episodes.values()],
                "events": live, "counter": self.counter, "now_ns": self.now_ns}

    def restore(self, saved):
        """Take ``capture()`` output (from this or an earlier engine); returns
        messages worth logging."""
        if not saved or not saved.get("episodes"):
            return []
        if not self.active:
            return [f"{len(saved['episodes'])} prober episode(s) in the saved state dropped: "
                    "alerts.group is \"rule\" (or one rule runs); their unsent changes are lost"]
        self.counter = saved.get("counter", 0)
        self.now_ns = saved.get("now_ns", 0)
        for s in saved.get("episodes", []):
            ep = Episode.from_state(s)
            self.episodes[ep.src_ip] = ep
        # the queued events as they were (their order breaks ties of packet time)
        for time_ns, counter, kind, src in saved.get("events", []):
            if src in self.episodes:
                self.events.append((time_ns, counter, kind, src, self.episodes[src].version))
        heapq.heapify(self.events)
        return []
