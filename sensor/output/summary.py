"""Human-readable end-of-run summary (stderr, for a terminal)."""
from kernels.batch import STATS

DECODE_SKIPS = tuple(s for s in STATS if s not in ("records", "decoded"))


def _table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line("-" * w for w in widths)] + [line(r) for r in rows])


def render_summary(alerts, stats, files, seconds):
    records = stats.get("records", 0)
    rate = records / seconds if seconds > 0 else 0.0
    out = [f"scan-sensor: {files} file(s), {records:,} packets ({stats.get('decoded', 0):,} "
           f"decoded) in {seconds:.2f} s ({rate:,.0f} packets/s); {len(alerts)} alert(s)"]
    rows = [(a.rule, a.src_ip, a.direction or "", a.count, a.dst_port_count, a.dst_ip_count,
             a.packets, a.severity, a.first_seen) for a in alerts if hasattr(a, "count")]
    if rows:
        out.append(_table(("rule", "source", "direction", "count", "ports", "hosts", "packets",
                           "severity", "first seen"), rows))
    for a in alerts:
        if not hasattr(a, "count"):
            f = a.to_dict()
            out.append(f"{f['rule']}: {f['suppressed_total']:,} alerts held back in the minute "
                       f"from {f['minute_start']} (alerts.max_per_minute = {f['max_per_minute']})")
    skipped = {k: v for k, v in stats.items() if v and k in DECODE_SKIPS}
    if skipped:
        out.append("skipped: " + ", ".join(f"{k} {v:,}" for k, v in skipped.items()))
    if stats.get("probes_tracked") and not stats.get("probe_replies_seen"):
        out.append("no reply to any connection attempt was seen: outcomes are `unknown` "
                   "(a one-directional capture or SPAN port?)")
    if stats.get("backscatter_synack") or stats.get("backscatter_rst"):
        out.append(f"backscatter (replies to attempts never seen, e.g. a spoofed flood's "
                   f"victims): {stats.get('backscatter_synack', 0):,} SYN-ACK, "
                   f"{stats.get('backscatter_rst', 0):,} RST")
    for key, value in stats.items():
        if key.endswith("_evictions") and value:
            rule = key[: -len("_evictions")]
            out.append(f"{rule}: {value:,} keys evicted from a full table "
                       f"(raise {rule}.max_keys if scans are missed)")
    return "\n".join(out)
