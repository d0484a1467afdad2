"""Presets: settings that make the sensor reproduce one reference SIEM rule.

Each preset enables one rule and sets its threshold, window, direction and
exclusions as the original query does. What still differs (and why) is in
``differences`` and in the README.
"""
import dataclasses

from sensor.rules import RULES


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    reference: str
    settings: dict
    differences: str


def only(rule, **settings):
    out = {f"{r.name}.enabled": r.name == rule for r in RULES}
    out.update({f"{rule}.{k}": v for k, v in settings.items()})
    return out


PRESETS = {p.name: p for p in (
    Preset("default", "scan-sensor's own judgement for a SPAN port", {},
           "All rules on with their defaults (CONFIG.md)."),
    Preset("sentinel-port-scan", "Sentinel \"Port scan detected (ASIM Network Session schema)\"",
           only("port_scan", threshold=51, window_s=300.0, scope="source",
                directions=["inbound", "external"], count_open=True),
           "Original: > 50 distinct ports per non-private source per fixed 5-minute bin, run "
           "hourly over session logs, `make_set(…, 100)` keeps 100 ports. Here: the same "
           "threshold (>= 51) over a sliding 5-minute window, in real time, counting TCP "
           "connection attempts (SYN) rather than sessions; every port is listed; an "
           "IPv4-mapped source (::ffff:10.x) is internal like its IPv4 twin."),
    Preset("sentinel-port-sweep",
           "Sentinel \"Network Port Sweep from External Network (ASIM Network Session schema)\"",
           only("port_sweep", threshold=21, window_s=3600.0, directions=["inbound"],
                count_open=True),
           "Original: > 20 distinct destination IPs on one port, inbound, per hour, with no "
           "source in the alert and 100 destinations kept. Here: >= 21 over a sliding hour "
           "(successful connections count too, as in the original), the alert names every "
           "source with its probes and the hosts it touched, lists destinations up to "
           "`max_listed` and says how many were left out."),
    Preset("defender-internet-facing",
           "Defender XDR \"Detecting Port Scanning On Internet Facing Devices\"",
           only("exposed_host_probe", threshold=3, window_s=3600.0,
                directions=["inbound", "external"]),
           "Original: >= 3 InboundConnectionAttempt events per public remote IP against "
           "devices flagged internet-facing, over the last hour. Here: >= 3 TCP connection "
           "attempts (a retransmitted SYN is one attempt) per remote address outside home_net "
           "to a host in `net.exposed_hosts` (you list the internet-facing hosts) within a "
           "sliding hour, each counted once answered or timed out. Set `net.exposed_hosts`."),
    Preset("panos-internal-scan", "Palo Alto \"possible internal to external port scanning\"",
           only("failed_connections", threshold=10, window_s=3600.0, count="attempts",
                count_filtered=False, directions=["outbound"],
                exclude_ports=[0, 53, 80, 389, 443, 880, 8080, 8888, "49512-65535"]),
           "Original: >= 10 sessions ending in a server reset with application \"incomplete\" "
           "from an internal source to a public destination per destination and port, hourly, "
           "excluding ports 443, 53, 389, 80, 0, 880, 8888, 8080 and 49512-65535 (sic, not "
           "49152). Here: >= 10 connection attempts from one internal prober refused by public "
           "hosts (a TCP RST answering its SYN, or ICMP port unreachable) within an hour, same "
           "port exclusions, counted across destinations; graceful closes (FIN) and resets "
           "that answer no attempt the sensor saw (backscatter) never count."),
    Preset("elastic-network-scan", "Elastic \"Potential Network Scan Detected\"",
           only("port_scan", threshold=50, window_s=60.0, scope="pair",
                directions=["internal", "outbound"], sensitive_threshold=5, count_open=True,
                sensitive_ports=[21, 22, 23, 53, 88, 139, 389, 445, 3389, 5900, 5985, 5986, 9389]),
           "Original: >= 50 distinct destination ports (or >= 5 of 13 sensitive ports) per "
           "private source and destination per 1-minute bucket, every 5 minutes over flow "
           "logs. Here: the same two conditions (>= 50 ports, or >= 5 of the same 13 sensitive "
           "ports) per source and destination over a sliding minute, in real time; sources "
           "in home_net rather than RFC 1918 only; connection attempts (SYN) rather than "
           "flow records."),
)}
