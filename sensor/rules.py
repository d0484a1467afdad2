"""The rules: what each detects, which counter kernel serves it, its defaults.

Every rule has the same settings (threshold, window, directions, ...) with
rule-specific defaults; ``sensor/config.py`` builds its setting table from
here and ``sensor/presets.py`` overrides them to mimic the SIEM rules.
"""
import dataclasses

from kernels import rules as kr

ALL_DIRECTIONS = ["inbound", "outbound", "internal", "external"]


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    table: str            # "port_set" or "host_set"
    mode: int             # kernels/rules.py mode
    about: str
    count_kind: str       # what `count` counts
    threshold: int
    window_s: float
    directions: tuple = tuple(ALL_DIRECTIONS)
    mitre: tuple = ("T1046",)
    mitre_from_outside: tuple = ("T1046", "T1595.001")
    exclude_ports: tuple = ()
    max_keys: int = 4096
    max_listed: int = 64
    extra: tuple = ()     # (name, default, help, bounds dict) of rule-specific settings


COUNT_OPEN = ("count_open", False,
              "Also count attempts that succeeded (the SIEM rules' behaviour). false: count "
              "only attempts that were refused, filtered or never seen answered, decided by "
              "the probe table (up to `probes.timeout_s` later).", {})

RULES = (
    Rule("port_scan", "port_set", kr.PS_PORT_SCAN,
         "One prober sending TCP connection attempts (SYN without ACK/RST) to many distinct "
         "destination ports (vertical scan). Counted per source (`scope = \"source\"`, "
         "Sentinel style) or per source and destination pair (`\"pair\"`, Elastic/Zeek style).",
         "distinct_ports", threshold=50, window_s=300.0,
         extra=(("scope", "source", "What a key is: \"source\" (one prober, all its targets) "
                 "or \"pair\" (one prober and one target).", {"choices": ("source", "pair")}),
                ("sensitive_ports", [], "Ports whose probing matters more (e.g. 22, 445, 3389).",
                 {"item_check": "port"}),
                ("sensitive_threshold", 0, "Also alert when this many distinct `sensitive_ports` "
                 "were probed within the window, whatever the total. 0: off.",
                 {"min": 0, "max": 65536}))),
    Rule("host_sweep", "host_set", kr.HS_HOST_SWEEP,
         "One prober sending TCP connection attempts to many distinct hosts on the same "
         "destination port (horizontal scan; Zeek address scan, Elastic network sweep). By "
         "default only attempts that did not succeed count (closed, filtered, or unknown when "
         "the sensor sees one direction), so a busy NAT gateway, proxy or crawler whose "
         "connections succeed is not a sweep.",
         "distinct_hosts", threshold=25, window_s=300.0,
         extra=(COUNT_OPEN,)),
    Rule("port_sweep", "host_set", kr.HS_PORT_SWEEP,
         "Many hosts in home_net hit on one destination port, by any number of probers "
         "(Sentinel \"Network Port Sweep from External Network\"). The alert names every "
         "prober of the episode (`sources`: address, probes, the hosts it touched), up to "
         "`max_sources`, most probes first; `source_count` is exact while all are listed "
         "and an estimate (`source_count_estimated`) beyond; `src_ip` is the top source. By "
         "default only attempts that did not succeed count, so clients of a server farm "
         "are not a sweep.",
         "distinct_hosts", threshold=50, window_s=300.0, directions=("inbound",),
         max_keys=1024,
         extra=(COUNT_OPEN,
                ("max_sources", 256, "Sources (probers) listed exactly per key and episode, "
                 "each with its probes and the hosts it touched (named among the episode's "
                 "first 64 hosts; `hosts_omitted` counts the rest, estimated). Past it a "
                 "prober is counted but not listed, and `source_count` becomes a linear-"
                 "counting estimate (`source_count_estimated`, `sources_omitted`). Memory: "
                 "about 44 B per source per key, plus 1.5 KiB per key (12.5 KiB per key at "
                 "256).", {"min": 8, "max": 4096}))),
    Rule("failed_connections", "host_set", kr.HS_FAILED,
         "A prober whose connection attempts fail: refused (TCP RST or ICMP port "
         "unreachable from the target) or never answered (filtered), as decided by the "
         "probe table (`[probes]`). Graceful closes, unsolicited RSTs and ICMP errors "
         "(backscatter) and the probes of a traceroute (time exceeded on the way, and the "
         "last hops' answers while the pair is being traced: outcome `traced`) never "
         "count (Palo Alto \"possible internal to external port scanning\"). Counts distinct "
         "failed host+port pairs, or failures (`count = \"attempts\"`).",
         "failed_pairs", threshold=10, window_s=300.0, max_keys=1024, max_listed=1024,
         extra=(("count", "distinct", "\"distinct\": distinct failed host+port pairs; "
                 "\"attempts\": every failed attempt.", {"choices": ("distinct", "attempts")}),
                ("count_filtered", True, "Count attempts that were never answered or were "
                 "filtered (ICMP admin-prohibited, host unreachable); false counts refusals only "
                 "(TCP RST, ICMP port unreachable).", {}))),
    Rule("exposed_host_probe", "port_set", kr.PS_EXPOSED_PROBE,
         "TCP connection attempts from outside home_net to the hosts listed in "
         "`net.exposed_hosts` (Defender \"port scanning on internet-facing devices\"): "
         "counts attempts per remote address within the window (a retransmitted SYN is the "
         "same attempt; each is counted once decided by the probe table). Does nothing while "
         "that list is empty.",
         "attempts", threshold=3, window_s=3600.0, directions=("inbound", "external"),
         max_keys=1024),
    Rule("stealth_scan", "port_set", kr.PS_STEALTH,
         "TCP probes that belong to no connection: segments with none of SYN, ACK and RST "
         "(nmap -sF FIN, -sN NULL, -sX Xmas), counted whatever the answer; and ACK or "
         "FIN+ACK segments of no flow the probe table knows (nmap -sA ACK, -sM Maimon), "
         "counted when the target answers with a RST (a segment of a flow that began "
         "before the sensor is answered with data, not a reset). Each probe counts once "
         "decided (answer or `probes.timeout_s`).",
         "distinct_ports", threshold=5, window_s=300.0, max_keys=1024),
    Rule("udp_scan", "port_set", kr.PS_UDP_PROBES,
         "A prober sending UDP datagrams to many distinct ports that do not answer with UDP "
         "(nmap -sU, masscan, zmap UDP): each probe counts once the probe table has decided "
         "it closed (ICMP port unreachable), filtered (another ICMP unreachable) or unknown "
         "(no answer within `probes.timeout_s`); one answered by UDP (open) never counts, nor "
         "one of a traceroute (time-exceeded answers: outcome `traced`), nor an ICMP error "
         "that answers no datagram the sensor saw (forged: counted as `backscatter_icmp`). "
         "Counted per prober and target by default (`scope = \"pair\"`): busy clients "
         "that send to random high ports of many hosts (BitTorrent DHT, WebRTC/ICE, games) "
         "stay at a few ports per target, and so does a one-directional capture of a "
         "server's answers, while a UDP port scan probes tens to thousands of one host's "
         "ports; `\"source\"` counts one prober's ports over all its targets. The default "
         "`exclude_ports` are the UDP services a network talks to all day (DNS, DHCP, NTP, "
         "NetBIOS, SNMP traps, QUIC, IKE/NAT-T, syslog, DHCPv6, SSDP, STUN, WS-Discovery, "
         "mDNS, LLMNR, WireGuard); they count neither as destination nor as source port "
         "(a datagram from port 53 is a DNS answer whose query the sensor missed), so a "
         "scan sent from one of them (`nmap -g 53`) is not seen: empty the list to see it.",
         "distinct_ports", threshold=10, window_s=300.0, max_keys=1024,
         exclude_ports=(53, "67-68", 123, "137-138", 162, 443, 500, 514, "546-547", 1900,
                        "3478-3479", 3702, 4500, 5353, 5355, 19302, 51820),
         extra=(("scope", "pair", "What a key is: \"pair\" (one prober and one target) or "
                 "\"source\" (one prober, all its targets).",
                 {"choices": ("source", "pair")}),)),
    Rule("trw_scanner", "host_set", kr.HS_TRW,
         "Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan, IEEE S&P 2004) over each "
         "prober's first contacts with hosts: a failed first contact (closed or filtered) "
         "multiplies the likelihood ratio by (1-theta1)/(1-theta0), a successful one by "
         "theta1/theta0; the prober is flagged when the ratio reaches P_D/P_F and left alone "
         "once it falls to (1-P_D)/(1-P_F). With the paper's defaults a prober is flagged on "
         "its 4th net failure. `threshold` is the minimum number of failed first contacts.",
         "failed_first_contacts", threshold=1, window_s=3600.0, directions=("inbound",),
         max_listed=256,
         extra=(("theta0", 0.8, "P(first contact succeeds | benign).", {"min": 0.001, "max": 0.999}),
                ("theta1", 0.2, "P(first contact succeeds | scanner).", {"min": 0.001, "max": 0.999}),
                ("p_detect", 0.99, "Desired detection probability P_D.", {"min": 0.5, "max": 0.999999}),
                ("p_false", 0.01, "Desired false-positive probability P_F.", {"min": 1e-6, "max": 0.5}))),
    Rule("icmp_sweep", "host_set", kr.HS_ICMP_SWEEP,
         "One prober sending ICMP/ICMPv6 echo requests to many distinct hosts (ping sweep).",
         "distinct_hosts", threshold=25, window_s=300.0,
         mitre=("T1018",), mitre_from_outside=("T1018", "T1595.001")),
)
RULE_BY_NAME = {r.name: r for r in RULES}

DIRECTION_BITS = {name: bit for bit, name in kr.DIRECTION_NAMES.items()}


def direction_mask(names):
    mask = 0
    for name in names:
        mask |= DIRECTION_BITS[name]
    return mask
