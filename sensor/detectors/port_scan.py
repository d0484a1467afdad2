"""port_scan: owns the kernel state, turns kernel events into Alert records."""
import math

import numpy as np

from kernels import port_scan as k
from sensor.addresses import to_text
from sensor.alerts import Alert, alert_id, compress_ports, rfc3339

RULE = "port_scan"


class PortScanDetector:
    name = RULE

    def __init__(self, cfg, seed, sensor_name):
        s = cfg.section(RULE)
        ways = s["table_ways"]
        capacity = -(-s["max_sources"] // ways) * ways
        self.threshold = s["threshold"]
        self.window_s = s["window_s"]
        self.sensor_name = sensor_name
        self.seed = np.uint64(seed)
        self.state = k.PortScanState(
            capacity=capacity, ways=ways, max_dst=s["max_dst_ips"],
            max_pending=s["max_pending_alerts"], threshold=self.threshold,
            window_ns=int(round(self.window_s * 1e9)),
            delay_ns=int(round(s["report_delay_s"] * 1e9)), seed=seed)
        self.alerts_raised = 0

    def process(self, batch):
        """Feed one batch; return the alerts that fell due inside it."""
        alerts = []
        cols = batch.columns
        st = self.state.arrays
        i = 0
        while True:
            i, event, slot = k.port_scan_update(cols, i, batch.n, st, self.seed)
            if event == k.EV_NONE:
                return alerts
            alerts.append(self._report(slot))

    def flush(self):
        """End of input: report every alert still waiting, oldest due first."""
        st = self.state
        n = int(st.meta[k.M_NPENDING])
        slots = sorted(st.pending[:n].tolist(), key=lambda s: (st.due_ns[s], s))
        return [self._report(s) for s in slots]

    def stats(self):
        m = self.state.meta
        return {
            "port_scan_probes": int(m[k.M_PROBES]),
            "port_scan_evictions": int(m[k.M_EVICTIONS]),
            "port_scan_forced_reports": int(m[k.M_FORCED]),
            "port_scan_table_bytes": int(self.state.nbytes()),
        }

    def _report(self, slot):
        alert = self.snapshot(slot)
        k.release_slot(self.state.arrays, slot)
        self.alerts_raised += 1
        return alert

    def snapshot(self, slot):
        st = self.state
        words = st.ports[slot, 0] | st.ports[slot, 1]
        ports = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
        n_list = int(st.dst_n[slot])
        dst_ips = [to_text(st.dst_hi[slot, j], st.dst_lo[slot, j]) for j in range(n_list)]
        dst_count, estimated = n_list, False
        if n_list >= st.dst_hi.shape[1]:
            dst_count, estimated = max(n_list, self._sketch_estimate(st.dst_sketch[slot])), True
        src = to_text(st.key_hi[slot], st.key_lo[slot])
        first = int(st.first_seen_ns[slot])
        count = int(st.port_count[slot])
        return Alert(
            rule=RULE, src_ip=src, dst_ips=dst_ips, dst_ip_count=dst_count,
            dst_ips_omitted=dst_count - len(dst_ips), dst_ip_count_estimated=estimated,
            dst_ports=compress_ports(ports), dst_port_count=count,
            first_seen=rfc3339(first), last_seen=rfc3339(st.last_seen_ns[slot]),
            packets=int(st.probes[slot]),
            severity="high" if count >= 10 * self.threshold else "medium",
            mitre=["T1046"], sensor=self.sensor_name,
            id=alert_id(self.sensor_name, RULE, src, first),
            threshold=self.threshold, window_s=self.window_s)

    @staticmethod
    def _sketch_estimate(sketch):
        """Linear counting over the 4,096-bit destination sketch."""
        bits = k.DST_SKETCH_BITS
        zeros = bits - int(np.unpackbits(sketch.view(np.uint8)).sum())
        if zeros == 0:
            return bits * int(math.log(bits))  # saturated: a lower bound, flagged as estimated
        return int(round(-bits * math.log(zeros / bits)))
