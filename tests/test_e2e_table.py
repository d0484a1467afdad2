"""The end-to-end table (issue 11): real scanners and real benign traffic in a
routed network of namespaces (``tests/e2e_lab.py``), each row captured by
tcpdump on the scanner's link and replayed by ``python -m sensor replay``.

    sudo python -m pytest -q tests/test_e2e_table.py          # about 2-3 minutes
    SCAN_SENSOR_E2E_TABLE=build/e2e.md sudo python -m pytest -q tests/test_e2e_table.py

Each scanner row states what the sensor should say: one alert for the
scanner's address (one prober, one episode: issue 11 finding 2) whose rules
include one of the row's rules, whose ports cover the probed set, whose
outcomes show what the probes met. Each benign row states that nothing is
raised at all. The expectations are the issue's *target* behaviour; the rows
today's main fails carry ``xfail(strict=True)`` naming the finding, so a row
turns red the day its fix lands until its mark is removed.

Expectations read alerts tolerantly, so they keep their meaning as the alert
format grows: ``rules_of(alert)`` is ``alert["rules"]`` when present, else
``[alert["rule"]]``; ports are read from ``dst_ports`` (ranges) or
``dst_port``; each alert is judged by its last message (the update carrying
the most evidence).

Per row the table records alerts (distinct ids), messages (alerts and
updates), rules, packets captured, the tool's and the sensor's wall time
(``sensor_s``: the whole replay process, start-up included). With
``SCAN_SENSOR_E2E_TABLE=PATH`` it is written there as markdown (the README
carries it). Skipped, with the reason, unless root with the tools installed.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

import e2e_lab as lab_mod
from e2e_lab import DROPPED, OPEN_TCP, OPEN_UDP, SCANNER, SWEEP_NET, TARGET

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAB = str(pathlib.Path(lab_mod.__file__))
PY = sys.executable
BASE_TOOLS = ("ip", "tcpdump", "curl", "sysctl", "timeout")
SENSOR_TIMEOUT_S = 120
NMAP = ["nmap", "-n", "-Pn", "-T4", "--max-retries", "0"]


class LabError(RuntimeError):
    """A tool or the sensor failed: never hidden by a row's xfail mark (which
    accepts only AssertionError, the row's expectation falling short)."""


def port_set(text):
    """``"1-3,80"`` -> {1, 2, 3, 80}."""
    out = set()
    for part in str(text).split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def rules_of(alert):
    return alert.get("rules") or [alert["rule"]]


def ports_of(alert):
    if alert.get("dst_ports") is not None:
        return port_set(alert["dst_ports"])
    if alert.get("dst_port") is not None:
        return {int(alert["dst_port"])}
    return set()


@dataclass(frozen=True)
class Expect:
    """One alert for the scanner (``one_alert``) that matches all of these."""
    rules: frozenset                       # its rules include one of these
    ports: frozenset = frozenset()         # its ports cover these
    hosts_min: int = 1                     # dst_ip_count at least
    outcomes_min: tuple = ()               # (("closed", 90), ("filtered+unknown", 90))
    open_ports: frozenset = frozenset()    # its open_ports cover these
    one_alert: bool = True


@dataclass(frozen=True)
class Row:
    name: str
    argv: tuple
    expect: Expect = None                  # None: benign, nothing may be raised
    xfail: str = None                      # the issue 11 finding today's main fails
    tools: tuple = ()
    timeout_s: float = 60
    ok_returncodes: tuple = (0,)
    what: str = ""                         # the expectation in words, for the table


def nmap_row(flag, ports, expect, xfail=None, extra=(), target=TARGET, what=""):
    return Row(f"nmap {flag}", tuple(NMAP + [flag, *extra, "-p", ports, target]), expect, xfail,
               ("nmap",), what=what)


P100 = frozenset(range(1, 101))
OPEN_IN_100 = frozenset(p for p in OPEN_TCP if p <= 100)
TCP_SCAN = Expect(frozenset({"port_scan"}), P100, outcomes_min=(("closed", 90),),
                  open_ports=OPEN_IN_100)
STEALTH = Expect(frozenset({"stealth_scan"}), P100, outcomes_min=(("closed", 90),))
MASSCAN = ("timeout", "-s", "KILL", "4", "masscan")     # masscan does not exit by itself here
MASSCAN_KILLED = (0, 124, 137, -9)                       # timeout killed it (and itself)


def rows(router_mac="ROUTER_MAC", dev="DEV"):
    mass = ("-e", dev, "--adapter-ip", SCANNER, "--router-mac", router_mac, "--rate", "2000",
            "--wait", "1")
    return [
        nmap_row("-sS", "1-100", TCP_SCAN, None, what="port_scan, ports 1-100, closed, open ports"),
        nmap_row("-sT", "1-100", TCP_SCAN, None, what="port_scan, ports 1-100, closed, open ports"),
        *[nmap_row(f, "1-100", STEALTH, what="stealth_scan, ports 1-100, closed")
          for f in ("-sF", "-sN", "-sX", "-sA", "-sM", "-sW")],
        nmap_row("-sU", "1-100", Expect(frozenset({"udp_scan"}), P100,
                                        outcomes_min=(("closed", 90),),
                                        open_ports=frozenset(OPEN_UDP)), None,
                 what="udp_scan, ports 1-100, closed (ICMP), open 7, 53"),
        Row("nmap -sU, dropped range", tuple(NMAP + ["-sU", "--min-rate", "500", "-p", "1-200",
                                                     DROPPED]),
            Expect(frozenset({"udp_scan", "port_scan"}), frozenset(range(1, 201)),
                   outcomes_min=(("filtered+unknown", 190),)), None, ("nmap",),
            what="a UDP scan alert, ports 1-200, filtered"),
        nmap_row("-sV", "1-60,80,443", Expect(frozenset({"port_scan"}),
                                              frozenset([*range(1, 61), 80, 443]),
                                              outcomes_min=(("closed", 50),),
                                              open_ports=frozenset(OPEN_TCP)), None,
                 extra=("--version-light",), what="port_scan, 62 ports, open ports"),
        Row("nmap -sS -p445 routed /24", tuple(NMAP + ["-sS", "-p", "445", f"{SWEEP_NET}.0/24"]),
            Expect(frozenset({"host_sweep"}), frozenset({445}), hosts_min=250,
                   outcomes_min=(("closed", 250), ("open", 3))), None, ("nmap",),
            what="host_sweep, port 445, 250+ hosts, 3 open"),
        Row("nmap -sS -T2, 15 ports", ("nmap", "-n", "-Pn", "-T2", "--max-retries", "0", "-sS",
                                       "-p", "20-34", TARGET),
            Expect(frozenset({"port_scan", "failed_connections", "trw_scanner"}),
                   frozenset(range(20, 35)) - frozenset(OPEN_TCP),
                   outcomes_min=(("closed", 12),)), None, ("nmap",), timeout_s=90,
            what="an alert for the scanner, the 12 closed ports"),
        Row("masscan TCP", (*MASSCAN, TARGET, "-p1-100", *mass),
            Expect(frozenset({"port_scan"}), P100, outcomes_min=(("closed", 90),),
                   open_ports=OPEN_IN_100), None, ("masscan",), ok_returncodes=MASSCAN_KILLED,
            what="port_scan, ports 1-100, closed, open ports"),
        Row("masscan UDP, dropped range", (*MASSCAN, DROPPED, "-pU:1-100", *mass),
            Expect(frozenset({"udp_scan", "port_scan"}), P100,
                   outcomes_min=(("filtered+unknown", 90),)), None, ("masscan",),
            ok_returncodes=MASSCAN_KILLED, what="a UDP scan alert, ports 1-100, filtered"),
        Row("zmap -p23 routed /24", ("zmap", "-p", "23", f"{SWEEP_NET}.0/24", "-i", dev, "-G",
                                     router_mac, "-S", SCANNER, "-r", "2000", "-c", "1",
                                     "-b", "/dev/null", "-q"),
            Expect(frozenset({"host_sweep"}), frozenset({23}), hosts_min=250,
                   outcomes_min=(("closed", 250),)), None, ("zmap",),
            what="host_sweep, port 23, 250+ hosts, closed"),
        Row("hping3 --scan 1-100 -S", ("hping3", "--scan", "1-100", "-S", TARGET),
            TCP_SCAN, None, ("hping3",), what="port_scan, ports 1-100, closed, open ports"),
        # benign: nothing may be raised
        Row("traceroute (UDP)", ("traceroute", "-n", "-w", "1", TARGET), None, None,
            ("traceroute",)),
        Row("traceroute -I", ("traceroute", "-I", "-n", "-w", "1", TARGET), None, None,
            ("traceroute",)),
        Row("traceroute -T", ("traceroute", "-T", "-n", "-w", "1", TARGET), None, None,
            ("traceroute",)),
        Row("mtr -u -c 3 --report", ("mtr", "-u", "-n", "-c", "3", "--report", TARGET), None,
            None, ("mtr",)),
        Row("60 short HTTP connections (curl)",
            ("sh", "-c", f"for i in $(seq 60); do curl -s -o /dev/null http://{TARGET}/; done"),
            tools=("curl", "sh")),
        Row("DNS client, 100 queries to 3 servers", (PY, LAB, "dns", "100")),
        Row("NAT gateway, 300 connections to 3 servers x 4 ports", (PY, LAB, "nat", "300")),
        Row("passive FTP, 60 transfers", (PY, LAB, "ftp", "60")),
        Row("monitoring, 5 ports x 3 hosts every 1 s, 5 rounds", (PY, LAB, "monitor", "5", "1")),
    ]


ROWS = rows()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab():
    from sensor.testbed import why_not_runnable
    reason = why_not_runnable(BASE_TOOLS)
    if reason:
        pytest.skip(reason)
    the_lab = lab_mod.Lab(f"e2e{os.getpid() % 100000}")
    try:
        yield the_lab
    finally:
        the_lab.close()
        left = the_lab.left_behind()
        assert not left, f"network namespaces left behind: {left}"


@pytest.fixture(scope="module")
def table():
    results = {}
    yield results
    path = os.environ.get("SCAN_SENSOR_E2E_TABLE")
    if path and results:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(render_table(results))


# ---------------------------------------------------------------- running a row

def replay(pcap, out_dir):
    stats = out_dir / "stats.json"
    started = time.monotonic()
    r = subprocess.run([PY, "-m", "sensor", "replay", "--no-summary", "--set", "sensor.name=e2e",
                        "--stats-json", str(stats), str(pcap)], cwd=ROOT, capture_output=True,
                       text=True, timeout=SENSOR_TIMEOUT_S)
    seconds = time.monotonic() - started
    if r.returncode != 0 or "Traceback" in r.stderr:
        raise LabError(f"sensor exited {r.returncode}:\n{r.stderr[-3000:]}")
    records = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return records, json.loads(stats.read_text()), seconds


def last_messages(records):
    """Each alert id's last message (updates carry the grown evidence)."""
    by_id = {}
    for rec in records:
        by_id[rec.get("id") or id(rec)] = rec
    return list(by_id.values())


def outcome(alert, key):
    got = alert.get("outcomes") or {}
    return sum(int(got.get(k, 0)) for k in key.split("+"))


def problems_with(alert, exp):
    """What in ``alert`` falls short of ``exp`` (empty: it matches)."""
    out = []
    if not set(rules_of(alert)) & exp.rules:
        out.append(f"rules {rules_of(alert)} include none of {sorted(exp.rules)}")
    missing = exp.ports - ports_of(alert)
    if missing:
        out.append(f"ports miss {len(missing)} of the probed set (e.g. {sorted(missing)[:5]})")
    if int(alert.get("dst_ip_count") or 0) < exp.hosts_min:
        out.append(f"dst_ip_count {alert.get('dst_ip_count')} < {exp.hosts_min}")
    for key, least in exp.outcomes_min:
        if outcome(alert, key) < least:
            out.append(f"outcomes {key} {outcome(alert, key)} < {least}")
    missing = exp.open_ports - port_set(alert.get("open_ports") or "")
    if missing:
        out.append(f"open_ports {alert.get('open_ports')!r} miss {sorted(missing)}")
    return out


def judge(row, records):
    """Problems with the row's alerts (empty: as expected)."""
    alerts = last_messages(records)
    if row.expect is None:
        return [f"benign traffic raised {a.get('rule')} from {a.get('src_ip')}" for a in alerts]
    out = [f"{a.get('rule')} blames {a.get('src_ip')}, not the scanner"
           for a in alerts if a.get("src_ip") != SCANNER]
    mine = [a for a in alerts if a.get("src_ip") == SCANNER]
    if not mine:
        return out + ["no alert for the scanner"]
    if row.expect.one_alert and len(mine) > 1:
        out.append(f"{len(mine)} alerts for one scan: {[a.get('rule') for a in mine]}")
    near = [problems_with(a, row.expect) for a in mine]
    if all(near):
        best = min(near, key=len)
        out.append("no alert matches: " + "; ".join(best))
    return out


def run_row(lab, row, work):
    pcap = work / "capture.pcap"
    started = time.monotonic()
    with lab.capture(pcap):
        r = lab.run(list(row.argv), timeout=row.timeout_s, cwd=work)
    tool_s = time.monotonic() - started
    if r.returncode not in row.ok_returncodes:
        raise LabError(f"{row.argv[0]} exited {r.returncode}:\n{r.stdout[-2000:]}\n"
                       f"{r.stderr[-2000:]}")
    records, stats, sensor_s = replay(pcap, work)
    return records, stats, tool_s, sensor_s


def concrete(row, lab):
    """The row with the lab's router MAC and interface filled in."""
    fill = {"ROUTER_MAC": lab.router_mac, "DEV": lab.dev["scan"]}
    return Row(row.name, tuple(fill.get(a, a) for a in row.argv), row.expect, row.xfail,
               row.tools, row.timeout_s, row.ok_returncodes, row.what)


def params():
    out = []
    for row in ROWS:
        marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=row.xfail)] if row.xfail else []
        out.append(pytest.param(row, id=row.name, marks=marks))
    return out


@pytest.mark.parametrize("row", params())
def test_row(row, lab, table, tmp_path):
    missing = [t for t in row.tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    row = concrete(row, lab)
    records, stats, tool_s, sensor_s = run_row(lab, row, tmp_path)
    problems = judge(row, records)
    alerts = last_messages(records)
    table[row.name] = dict(
        row=row, alerts=len(alerts), messages=len(records),
        rules=sorted({r for a in alerts for r in rules_of(a)}),
        packets=int(stats["records"]),
        tool_s=tool_s, sensor_s=sensor_s, problems=problems)
    assert not problems, f"{row.name}: " + "; ".join(problems)


# ---------------------------------------------------------------- the table

def render_table(results):
    lines = ["| row | expected | alerts | messages | rules | packets | tool s | sensor s | today |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        got = results.get(row.name)
        if got is None:
            continue
        expected = (f"one alert: {row.what}" if row.expect is not None else "nothing")
        if got["problems"]:
            today = ("**fails** (" + (row.xfail.split(":")[0] if row.xfail else "not marked")
                     + "): " + "; ".join(got["problems"]))
        else:
            today = "as expected"
        lines.append(f"| {row.name} | {expected} | {got['alerts']} | {got['messages']} | "
                     f"{', '.join(got['rules']) or '-'} | {got['packets']:,} | "
                     f"{got['tool_s']:.1f} | {got['sensor_s']:.1f} | {today} |")
    return "\n".join(lines) + "\n"
