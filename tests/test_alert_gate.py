"""The alert rate cap (sensor/alert_gate.py): per minute of packet time, the rest
summarised, and, for the supervisor's merged stream of several workers, a late
alert of a minute already closed counted in the current one."""
from types import SimpleNamespace

from sensor.alert_gate import MINUTE_NS, AlertGate


def alert(minute, second, src="192.0.2.1", rule="port_scan"):
    return SimpleNamespace(rule=rule, src_ip=src, emitted_ns=minute * MINUTE_NS + second * 10**9)


def test_cap_per_minute_and_one_summary_when_the_minute_ends():
    gate = AlertGate(2, "s")
    out = gate.admit([alert(1, s, f"192.0.2.{s}") for s in range(5)])
    assert [a.src_ip for a in out] == ["192.0.2.0", "192.0.2.1"]
    out = gate.admit([alert(2, 0)])
    assert [a.rule for a in out] == ["alert_rate_limited", "port_scan"]
    summary = out[0].to_dict()
    assert summary["suppressed_total"] == 3 and summary["suppressed"] == {"port_scan": 3}
    assert summary["example_sources"] == ["192.0.2.2", "192.0.2.4"]
    assert gate.finish() == [] and gate.total_held == 3


def test_a_late_alert_counts_in_the_current_minute():
    gate = AlertGate(2, "s")
    assert len(gate.admit([alert(1, 59), alert(2, 0), alert(2, 1)])) == 3
    # a worker's alert from minute 1, arriving after minute 2 began: held in minute 2
    # (over its cap), not a reopened minute 1 with a summary of minute 2 sent early
    assert gate.admit([alert(1, 58)]) == []
    summary = gate.finish()
    assert len(summary) == 1 and summary[0].to_dict()["suppressed_total"] == 1
    assert summary[0].to_dict()["minute_start"].endswith("00:02:00.000000Z")


def test_no_cap():
    gate = AlertGate(0, "s")
    assert len(gate.admit([alert(1, s) for s in range(50)])) == 50
    assert gate.finish() == []


def test_another_gates_summary_is_passed_on():
    worker = AlertGate(1, "s")
    worker.admit([alert(1, 0), alert(1, 1)])
    summary = worker.finish()
    gate = AlertGate(1, "s")
    out = gate.admit([alert(1, 2)] + summary)
    assert [a.rule for a in out] == ["port_scan", "alert_rate_limited"]
    assert out[1] is summary[0] and gate.total_held == 0
