"""Alert rate cap: at most N alerts per minute of packet time, the rest counted, never hidden.

Alerts over the cap in a minute are held back; when that minute is over (the
next alert or the end of input shows a later time) one ``alert_rate_limited``
record states how many were held back, per rule, and the first and last
source among them, so a SIEM sees that a flood happened and how large it was.

With ``run --workers N`` the supervisor holds the one gate for all workers
(``sensor/supervisor.py``): their alerts arrive merged, a ring block or so out
of packet-time order, so an alert of a minute already closed counts in the
current one rather than reopening it.
"""
import collections

from sensor.alerts import rfc3339

MINUTE_NS = 60_000_000_000


class AlertGate:
    def __init__(self, max_per_minute, sensor_name):
        self.cap = max_per_minute
        self.sensor_name = sensor_name
        self.minute = None
        self.passed = 0
        self.held = collections.Counter()
        self.held_sources = []
        self.total_held = 0

    def admit(self, alerts):
        """Alerts to deliver now (including rate-limit summaries), in order."""
        out = []
        for alert in alerts:
            if isinstance(alert, RateLimited):      # another gate's summary: passed on
                out.append(alert)
                continue
            minute = alert.emitted_ns // MINUTE_NS
            if self.minute is None or minute > self.minute:
                out.extend(self._close_minute())
                self.minute = minute
                self.passed = 0
            if self.cap and self.passed >= self.cap:
                self.held[alert.rule] += 1
                self.total_held += 1
                if len(self.held_sources) < 2:
                    self.held_sources.append(alert.src_ip)
                else:
                    self.held_sources[1] = alert.src_ip
                continue
            self.passed += 1
            out.append(alert)
        return out

    def finish(self):
        return self._close_minute()

    def _close_minute(self):
        if not self.held:
            return []
        record = RateLimited(
            rule="alert_rate_limited", sensor=self.sensor_name,
            minute_start=rfc3339(self.minute * MINUTE_NS), max_per_minute=self.cap,
            suppressed=dict(self.held), suppressed_total=sum(self.held.values()),
            example_sources=list(self.held_sources))
        self.held.clear()
        self.held_sources = []
        return [record]


class RateLimited:
    """The summary record for alerts held back by the cap."""

    def __init__(self, **fields):
        self.fields = fields
        self.rule = fields["rule"]
        self.src_ip = ""

    def to_dict(self):
        return dict(self.fields)
