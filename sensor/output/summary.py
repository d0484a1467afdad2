"""Human-readable end-of-run summary (stderr, for a terminal)."""


def _table(headers, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line("-" * w for w in widths)] + [line(r) for r in rows])


def render_summary(alerts, stats, files, seconds):
    records = stats.get("records", 0)
    rate = records / seconds if seconds > 0 else 0.0
    out = [f"scan-sensor: {files} file(s), {records:,} packets ({stats.get('decoded', 0):,} "
           f"decoded) in {seconds:.2f} s, {rate / 1e6:.2f} Mpps; {len(alerts)} alert(s)"]
    if alerts:
        rows = [(a.rule, a.src_ip, a.dst_port_count, a.dst_ip_count, a.packets,
                 a.severity, a.first_seen) for a in alerts]
        out.append(_table(("rule", "source", "ports", "hosts", "packets", "severity",
                           "first seen"), rows))
    skipped = {k: v for k, v in stats.items()
               if v and k not in ("records", "decoded") and not k.startswith("port_scan_")}
    if skipped:
        out.append("skipped: " + ", ".join(f"{k} {v:,}" for k, v in skipped.items()))
    if stats.get("port_scan_evictions"):
        out.append(f"port_scan table evictions: {stats['port_scan_evictions']:,} "
                   "(raise port_scan.max_sources if scans are missed)")
    return "\n".join(out)
