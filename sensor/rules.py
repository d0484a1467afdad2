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
    defaults: tuple = ()  # (name, value): this rule's defaults of the common settings


COUNT_OPEN = ("count_open", False,
              "Also count attempts that succeeded (the SIEM rules' behaviour). false: count "
              "only attempts that were refused, filtered or never seen answered, decided by "
              "the probe table (up to `probes.timeout_s` later).", {})

SENDER_MACS = ("max_sources", 8, "Sender MAC addresses kept per key and episode (the alert's "
               "`src_mac` is the one with the most requests).", {"min": 1, "max": 64})

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
                 {"min": 0, "max": 65536}),
                ("count_open", False, "true: every port probed counts (the SIEM rules' "
                 "behaviour). false: when the alert falls due, the ports the probe table saw "
                 "answered with a SYN-ACK are taken out of the count, and while fewer than "
                 "`threshold` (or `sensitive_threshold` sensitive ports) remain nothing is sent "
                 "(counted as `port_scan_withheld_open`; the key is looked at again when its "
                 "count reaches `growth_factor` times): one client's many successful "
                 "connections to a server's ephemeral ports (passive FTP data, RPC, media) are "
                 "not a scan.", {}))),
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
         "and an estimate (`source_count_estimated`) beyond; `src_ip` is the top source. A "
         "new source is worth an update, like a new target, and at the end of input an "
         "episode that grew since its last report is reported once more. By "
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
    Rule("arp_sweep", "host_set", kr.HS_ARP_SWEEP,
         "One sender on the local segment asking by ARP for many distinct addresses that "
         "never answer (arp-scan, nmap -sn or any nmap scan of the local subnet: for an "
         "absent host they put nothing but ARP on the wire). Each ARP request is a probe "
         "of the probe table, answered by the target's ARP reply (a host found, outcome "
         "`open`) or not within `probes.timeout_s` (`filtered`/`unknown`); only unanswered "
         "targets count, so a host or router refreshing its cache (answered) is not a "
         "sweep. Gratuitous ARP (sender address = target address), replies nobody asked "
         "for and the probes of address conflict detection (sender 0.0.0.0, RFC 5227, "
         "also sent by DHCP clients) are never probes; a DHCP server checking one address "
         "per lease stays far below the threshold. Keyed by sender address; the alert "
         "names the sender's MAC (`src_mac`) and counts the hosts found in "
         "`outcomes.open`. A router resolving addresses for traffic routed to absent hosts "
         "(an inbound sweep of its subnet), or a monitoring host polling 20 or more "
         "switched-off devices on its own segment, asks the same way: put it in "
         "`net.allow_sources` if its ARP alerts are noise.",
         "unanswered_hosts", threshold=20, window_s=300.0, max_keys=1024,
         mitre=("T1018",), mitre_from_outside=("T1018",),
         extra=(SENDER_MACS,)),
    Rule("ndp_sweep", "host_set", kr.HS_NDP_SWEEP,
         "The IPv6 twin of `arp_sweep`: one sender sending neighbour solicitations for "
         "many distinct target addresses that never answer with a neighbour advertisement "
         "(nmap -6 of on-link addresses, ndisc6 or a scapy loop). Duplicate address "
         "detection (solicitations from ::) never counts. `src_mac` comes from the "
         "solicitation's source link-layer address option. ICMPv6 echo requests to many "
         "on-link hosts are `icmp_sweep`.",
         "unanswered_hosts", threshold=20, window_s=300.0, max_keys=1024,
         mitre=("T1018",), mitre_from_outside=("T1018",),
         extra=(SENDER_MACS,)),
    Rule("slow_scan", "slow_tier", 0,
         "The long-horizon tier: a prober whose TCP connection attempts that did not succeed "
         "(refused, filtered, or never seen answered) reach, over hours (`window_s`, default "
         "6 h), `threshold` distinct ports on one target (a slow vertical scan: nmap -T1/-T0) "
         "or distinct targets on one port (a slow sweep: one host every 90 s across a /24). "
         "Only activity that took at least `min_span_s` to get there is reported here; "
         "faster scans are the five-minute rules' (and merge into the same alert). "
         "Successful connections never count, so a monitoring host polling its services or "
         "a busy client is not counted at all. A prober gets a slot only at its second failed "
         "attempt: the first marks the doorkeeper (`doorkeeper_entries`), so a spoofed flood, "
         "one attempt per forged source, claims no slot (ARCHITECTURE.md). The alert says "
         "`slow: true`, `span_s`, and the shape (`slow_shape`: \"ports_on_target\" or "
         "\"targets_on_port\").",
         "distinct_ports_or_targets", threshold=25, window_s=21600.0, max_keys=4096,
         max_listed=128,
         defaults=(("suppress_s", 86400.0), ("new_target_updates", False),
                   ("update_interval_s", 600.0), ("growth_factor", 2)),
         extra=(("min_span_s", 300.0, "Report only once the prober's failed attempts span at "
                 "least this many seconds (at most `window_s`).", {"min": 0, "max": 7 * 86400}),
                ("doorkeeper_entries", 1 << 20, "Entries (4 bytes each) of the doorkeeper that "
                 "holds a prober's first failed attempt; rounded up to a power of two. A real "
                 "prober is admitted at its second attempt unless about this many other new "
                 "probers came between the two.", {"min": 1024, "max": 1 << 26}))),
    Rule("vertical_scan", "slow_tier", 1,
         "A small vertical scan: one prober's TCP connection attempts that did not succeed "
         "(refused, filtered, or never seen answered) to `threshold` distinct ports of one "
         "target within the window (Zeek's port scan: 15 failed ports on one host; Elastic's "
         "first rule: 20). Catches the 20-30-port probes under port_scan's 50 on a SPAN port "
         "that sees only one direction (outcomes `unknown`, which failed_connections does not "
         "count). A benign client almost never fails on 20 ports of one host in 5 minutes; "
         "one that succeeds (passive FTP data ports, RPC) is not counted, unless the sensor "
         "sees only one direction: then its connections' outcomes are unknown too (allow-list "
         "such clients, or raise `threshold`).",
         "distinct_ports", threshold=20, window_s=300.0, max_keys=4096, max_listed=64,
         extra=(("min_span_s", 0.0, "Report only once the counted attempts span at least "
                 "this many seconds (at most `window_s`). 0: at once.",
                 {"min": 0, "max": 7 * 86400}),
                ("doorkeeper_entries", 0, "0: every prober is counted from its first failed "
                 "attempt. N > 0: as `slow_scan.doorkeeper_entries` (a prober gets a slot at its "
                 "second; costs the first attempt's evidence).", {"min": 0, "max": 1 << 26}))),
)
RULE_BY_NAME = {r.name: r for r in RULES}

DIRECTION_BITS = {name: bit for bit, name in kr.DIRECTION_NAMES.items()}


def direction_mask(names):
    mask = 0
    for name in names:
        mask |= DIRECTION_BITS[name]
    return mask
