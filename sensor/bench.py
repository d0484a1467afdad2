"""Benchmark: synthetic captures, then the sensor against tcpdump and a dpkt loop.

    python -m sensor.bench [--packets N] [--json PATH] [--keep DIR] [--flood]
    python -m sensor.bench --live [--packets N] [--workers N]   (root: sensor/bench_live.py)

Writes a synthetic classic pcap (60-byte Ethernet/IPv4/TCP frames, the mix
below), then measures on the same file, page cache warm:

* ``scan-sensor replay`` as a whole process (wall time, packets/s, peak RSS),
  and its steady-state rate (the replay loop only, from ``--stats-json``),
  with 1 and with 2 workers (``sensor_*`` and ``sensor2_*``; both must print
  the same alerts);
* ``tcpdump -r FILE -w /dev/null``;
* a straightforward dpkt loop keeping per-source port sets (the "write it in
  Python" baseline), on the first ``--dpkt-packets`` packets.

Mix (fractions of packets): background clients making whole TCP connections
(handshake, data both ways, FIN) to a few services, scanners (a few sources sweeping many ports), a random-source SYN
flood with spoofed addresses; ``--ipv6`` and ``--vlan`` shares re-encode that
fraction of frames. ``--flood`` streams an all-flood capture of ``--packets``
packets through standard input (no file) to show that memory stays at the
configured table budget.

Numbers are measurements on the machine it runs on; nothing here asserts a
speed.
"""
import argparse
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

LINE_RATE_PPS = 14_880_000          # 10 GbE, minimum-size frames
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


# one background connection: (TCP flags, sent by the server)
FLOW = [(0x02, False), (0x12, True), (0x10, False), (0x18, False), (0x10, True),
        (0x18, True), (0x10, False), (0x11, False), (0x11, True), (0x10, False)]


def synth_records(n, rng, start_s, flood=0.5, scanners=8, ipv6=0.0, vlan=0.0):
    """``n`` pcap records (header + frame) as one bytes object."""
    kind = rng.random(n)
    is_flood = kind < flood
    is_scan = (kind >= flood) & (kind < flood + (1 - flood) * 0.3)
    src = np.empty(n, np.uint32)
    dst = np.empty(n, np.uint32)
    dport = np.empty(n, np.uint16)
    sport = rng.integers(1024, 65535, n).astype(np.uint16)
    flags = np.full(n, 0x02, np.uint8)
    # spoofed flood: random sources and ports at one server
    src[is_flood] = rng.integers(1, 2**32 - 1, is_flood.sum(), dtype=np.uint64).astype(np.uint32)
    dst[is_flood] = 0x0A000050
    dport[is_flood] = 80
    # scanners: a few internal sources, every port of a few targets
    ns = is_scan.sum()
    src[is_scan] = 0x0A420000 + rng.integers(1, scanners + 1, ns).astype(np.uint32)
    dst[is_scan] = 0x0A010000 + rng.integers(1, 16, ns).astype(np.uint32)
    dport[is_scan] = rng.integers(1, 65535, ns).astype(np.uint16)
    # background: 2,000 clients to 20 servers on 3 services, whole TCP connections
    # (handshake, data both ways, FIN), each FLOW packets long
    bg = ~(is_flood | is_scan)
    nb = int(bg.sum())
    flow = np.arange(nb) // len(FLOW)
    nflows = int(flow[-1]) + 1 if nb else 0
    client = (0xC0A80000 + rng.integers(1, 2000, nflows)).astype(np.uint32)[flow]
    server = (0x0A000100 + rng.integers(1, 20, nflows)).astype(np.uint32)[flow]
    service = rng.choice(np.array([22, 80, 443], np.uint16), nflows)[flow]
    cport = rng.integers(1024, 65535, nflows).astype(np.uint16)[flow]
    step = np.arange(nb) % len(FLOW)
    reply = np.array([r for _, r in FLOW], bool)[step]
    src[bg] = np.where(reply, server, client)
    dst[bg] = np.where(reply, client, server)
    sport[bg] = np.where(reply, service, cport)
    dport[bg] = np.where(reply, cport, service)
    flags[bg] = np.array([f for f, _ in FLOW], np.uint8)[step]

    use6 = rng.random(n) < ipv6
    use6[bg] = (rng.random(nflows) < ipv6)[flow]      # a connection keeps its IP version
    use_vlan = rng.random(n) < vlan
    frame_len = np.where(use6, 74, 54) + np.where(use_vlan, 4, 0)
    caplen = np.maximum(frame_len, 60)
    rec_len = 16 + caplen
    offsets = np.concatenate(([0], np.cumsum(rec_len)[:-1]))
    buf = np.zeros(int(rec_len.sum()), np.uint8)

    def put(col_offsets, values, width):
        v = np.asarray(values).astype(">u%d" % width).view(np.uint8).reshape(-1, width)
        for k in range(width):
            buf[col_offsets + k] = v[:, k]

    idx = np.arange(n)
    ts_us = start_s * 1_000_000 + idx * 2          # 500 kpps of packet time
    put(offsets, (ts_us // 1_000_000).astype(np.uint32).byteswap(), 4)
    put(offsets + 4, (ts_us % 1_000_000).astype(np.uint32).byteswap(), 4)
    put(offsets + 8, caplen.astype(np.uint32).byteswap(), 4)
    put(offsets + 12, caplen.astype(np.uint32).byteswap(), 4)
    f = offsets + 16
    buf[f[:, None] + np.arange(12)] = np.frombuffer(bytes.fromhex("020000000002020000000001"), np.uint8)
    l3 = f + 14
    buf[f[use_vlan] + 12] = 0x81
    buf[f[use_vlan] + 13] = 0x00
    put(f[use_vlan] + 14, np.full(use_vlan.sum(), 100, np.uint16), 2)
    et_at = np.where(use_vlan, f + 16, f + 12)
    put(et_at, np.where(use6, 0x86DD, 0x0800).astype(np.uint16), 2)
    l3 = np.where(use_vlan, f + 18, f + 14)
    v4 = ~use6
    o = l3[v4]
    buf[o] = 0x45
    put(o + 2, np.full(v4.sum(), 40, np.uint16), 2)
    buf[o + 8] = 64
    buf[o + 9] = 6
    put(o + 12, src[v4], 4)
    put(o + 16, dst[v4], 4)
    o6 = l3[use6]
    buf[o6] = 0x60
    put(o6 + 4, np.full(use6.sum(), 20, np.uint16), 2)
    buf[o6 + 6] = 6
    buf[o6 + 7] = 64
    buf[o6[:, None] + np.arange(8, 10)] = 0xFD     # fdfd::/16 prefix, then the IPv4 value
    put(o6 + 20, src[use6], 4)
    buf[o6[:, None] + np.arange(24, 26)] = 0xFD
    put(o6 + 36, dst[use6], 4)
    l4 = np.where(use6, l3 + 40, l3 + 20)
    put(l4, sport, 2)
    put(l4 + 2, dport, 2)
    buf[l4 + 12] = 0x50
    buf[l4 + 13] = flags
    return buf.tobytes()


def write_capture(path, packets, seed=1, chunk=1_000_000, **mix):
    rng = np.random.default_rng(seed)
    with open(path, "wb") as fh:
        fh.write(PCAP_HEADER)
        done = 0
        while done < packets:
            n = min(chunk, packets - done)
            fh.write(synth_records(n, rng, 1_700_000_000 + done // 500_000, **mix))
            done += n


def run_measured(cmd):
    """Run ``cmd``; return (seconds, its peak RSS in bytes, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024, out


def _child_peak_rss():
    import resource
    # RUSAGE_CHILDREN is the maximum over all waited-for children so far, in KiB
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def dpkt_loop(path, limit):
    """The straightforward Python baseline: dpkt decode, per-source port sets."""
    import dpkt
    ports = {}
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.tcp.TCP):
                tcp = ip.data
                if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
                    ports.setdefault(bytes(ip.src), set()).add(tcp.dport)
            n += 1
            if n >= limit:
                break
    return n, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sensor.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--packets", type=int, default=5_000_000)
    p.add_argument("--flood-share", type=float, default=0.5)
    p.add_argument("--ipv6", type=float, default=0.1)
    p.add_argument("--vlan", type=float, default=0.1)
    p.add_argument("--dpkt-packets", type=int, default=200_000)
    p.add_argument("--flood", action="store_true",
                   help="stream an all-flood capture through stdin and report peak memory")
    p.add_argument("--live", action="store_true",
                   help="replay the capture into a veth at top speed with the daemon and "
                        "tcpdump listening; report received and dropped packets of both")
    p.add_argument("--workers", type=int, default=1,
                   help="with --live: also measure the daemon with this many workers")
    p.add_argument("--set", action="append", default=[], help="sensor setting override")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--keep", metavar="DIR", help="keep the capture in DIR")
    args = p.parse_args(argv)
    if args.live:
        from sensor import bench_live
        return bench_live.main(args)
    workdir = args.keep or tempfile.mkdtemp(prefix="scan-sensor-bench-")
    os.makedirs(workdir, exist_ok=True)
    # a fixed hash seed: both worker counts place keys alike and must print the same alerts
    sensor = [sys.executable, "-m", "sensor", "replay", "--no-summary", "--no-progress",
              "--set", "alerts.max_per_minute=0", "--set", "sensor.hash_seed=1"] + [x for s in args.set for x in ("--set", s)]
    results = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, "
                          f"Python {platform.python_version()}",
               "packets": args.packets}
    try:
        # warm the Numba cache so cold compilation is not measured
        warm = os.path.join(workdir, "warm.pcap")
        write_capture(warm, 1000)
        subprocess.run(sensor + [warm], check=True, capture_output=True)
        if args.flood:
            return _flood(args, sensor, results, workdir)
        path = os.path.join(workdir, "bench.pcap")
        t0 = time.perf_counter()
        write_capture(path, args.packets, flood=args.flood_share, ipv6=args.ipv6, vlan=args.vlan)
        results["generate_s"] = round(time.perf_counter() - t0, 2)
        results["file_bytes"] = os.path.getsize(path)
        with open(path, "rb") as fh:        # into the page cache
            while fh.read(1 << 24):
                pass
        outputs = {}
        for workers, prefix in ((1, "sensor"), (2, "sensor2")):
            stats_path = os.path.join(workdir, f"stats{workers}.json")
            secs, rss, out = run_measured(sensor + ["--workers", str(workers),
                                                    "--stats-json", stats_path, path])
            stats = json.load(open(stats_path))
            outputs[workers] = out
            results[prefix + "_wall_s"] = round(secs, 3)
            results[prefix + "_pps"] = round(args.packets / secs)
            results[prefix + "_steady_pps"] = round(args.packets / stats["seconds"])
            results[prefix + "_peak_rss_mib"] = round(rss / 2**20, 1)
        results["alerts"] = stats["alerts"]
        results["workers_same_alerts"] = outputs[1] == outputs[2]
        if shutil.which("tcpdump"):
            secs, _, _ = run_measured(["tcpdump", "-q", "-r", path, "-w", "/dev/null"])
            results["tcpdump_pps"] = round(args.packets / secs)
            for prefix in ("sensor", "sensor2"):
                results[prefix + "_vs_tcpdump"] = round(results[prefix + "_pps"]
                                                        / results["tcpdump_pps"], 3)
            best = max(results["sensor_pps"], results["sensor2_pps"])
            ratio = best / results["tcpdump_pps"]
            results["target_2x_tcpdump"] = "met" if ratio >= 2 else f"not met ({ratio:.2f}x)"
        steady = results["sensor2_steady_pps"]
        results["target_14.88_mpps_2_workers"] = (
            "met" if steady >= LINE_RATE_PPS else f"not met ({steady / 1e6:.2f} Mpps)")
        n, secs = dpkt_loop(path, args.dpkt_packets)
        results["dpkt_pps"] = round(n / secs)
        results["sensor_vs_dpkt"] = round(results["sensor_pps"] / results["dpkt_pps"], 1)
        _print(results)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def _flood(args, sensor, results, workdir):
    """All-flood capture streamed through a pipe: memory must stay at the table budget."""
    # the long-horizon tier must hold too: the flood's packet time (2 us a packet) is far
    # less than its min_span_s, so that is 0 here to let it report the hidden scanner
    proc = subprocess.Popen(sensor + ["--set", "slow_scan.min_span_s=0",
                                      "--stats-json", os.path.join(workdir, "s.json"), "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rng = np.random.default_rng(2)
    t0 = time.perf_counter()
    proc.stdin.write(PCAP_HEADER)
    done = 0
    while done < args.packets:
        n = min(1_000_000, args.packets - done)
        # a real scanner hides in the flood: 1 packet in 1,000, distinct ports
        recs = synth_records(n, rng, 1_700_000_000 + done // 500_000, flood=0.999, scanners=1)
        proc.stdin.write(recs)
        done += n
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait()
    secs = time.perf_counter() - t0
    stats = json.load(open(os.path.join(workdir, "s.json")))
    alerts = [json.loads(line) for line in out.splitlines()]
    results.update(
        flood_packets=args.packets, flood_wall_s=round(secs, 1),
        flood_pps=round(args.packets / secs), flood_peak_rss_mib=round(_child_peak_rss() / 2**20, 1),
        table_bytes_mib=round(sum(v for k, v in stats.items() if k.endswith("table_bytes")) / 2**20, 1),
        probes_evictions=stats["probes_evictions"],
        scanner_found=any(a["rule"] == "port_scan" and a["src_ip"].startswith("10.66.") for a in alerts),
        # the long-horizon tier: the flood writes doorkeeper marks, claims no slot
        slow_scan_table_mib=round(stats["slow_scan_table_bytes"] / 2**20, 1),
        slow_scan_doorkeeper_held=stats["slow_scan_doorkeeper_held"],
        slow_scan_doorkeeper_admitted=stats["slow_scan_doorkeeper_admitted"],
        slow_scan_evictions=stats["slow_scan_evictions"],
        slow_scanner_found=any("slow_scan" in (a.get("rules") or [a["rule"]])
                               and a["src_ip"].startswith("10.66.") for a in alerts))
    _print(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def _print(results):
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    raise SystemExit(main())
