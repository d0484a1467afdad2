#!/usr/bin/env bash
# Regenerate the real scanner captures in pcaps/ (see pcaps/README.md).
#
#   sudo bash pcaps/make_captures.sh            # all captures
#   sudo bash pcaps/make_captures.sh nmap_udp_scan benign_clients   # a subset
#   sudo bash pcaps/make_captures.sh --out /tmp/x nmap_syn_scan     # write elsewhere
#
# Options (before the capture names):
#   --out DIR        write DIR/NAME.pcap and DIR/logs/NAME.log instead of
#                    pcaps/NAME.pcap and pcaps/logs/NAME.log (DIR is created)
#   --ns-prefix P    name the namespaces P-scan / P-target instead of
#                    ss-scan / ss-target, so a run (e.g. a test) cannot
#                    collide with another run; at most 12 characters
#
# Every capture gets a fresh pair of network namespaces:
#
#   ss-scan  [ssv-scan 02:00:0a:4d:00:01 10.77.0.1/24 fd77::1/64] <--veth-->
#   ss-target[ssv-tgt  02:00:0a:4d:00:02 10.77.0.2/24 fd77::2/64]
#
# Some captures add addresses: 10.77.0.10-49 on ssv-tgt (sweep targets) and
# 198.51.100.x/32 on ssv-scan (documentation-range "external" scanners; the
# target gets an on-link route 198.51.100.0/24 dev ssv-tgt to answer them).
#
# ss-target runs target_services.py (TCP 22/80/443, UDP 53, dual stack) and
# tcpdump on ssv-tgt.  No traffic ever leaves the two namespaces: the veth pair
# is the only non-loopback interface in either of them and there is no route
# anywhere else.
#
# Idempotent: stale namespaces of the same name are removed first, results are
# written to a temp dir and only copied over pcaps/*.pcap once every requested
# capture succeeded.  The EXIT trap kills everything this script started and
# deletes the namespaces, also on failure or Ctrl-C.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${HERE}
NS_PREFIX=ss
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) [[ $# -ge 2 ]] || { echo "make_captures.sh: --out needs a directory" >&2; exit 2; }
               OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --ns-prefix) [[ $# -ge 2 ]] || { echo "make_captures.sh: --ns-prefix needs a value" >&2; exit 2; }
               NS_PREFIX=$2; shift 2 ;;
        --ns-prefix=*) NS_PREFIX=${1#--ns-prefix=}; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "make_captures.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[[ -n ${OUT} ]] || { echo "make_captures.sh: --out is empty" >&2; exit 2; }
[[ ${NS_PREFIX} =~ ^[A-Za-z0-9_.-]{1,12}$ ]] \
    || { echo "make_captures.sh: bad --ns-prefix '${NS_PREFIX}'" >&2; exit 2; }

if [[ ${EUID} -ne 0 ]]; then
    echo "make_captures.sh: must run as root (namespaces, raw sockets, tcpdump)" >&2
    exit 1
fi

NS_SCAN=${NS_PREFIX}-scan
NS_TGT=${NS_PREFIX}-target
IF_SCAN=ssv-scan
IF_TGT=ssv-tgt
MAC_SCAN=02:00:0a:4d:00:01
MAC_TGT=02:00:0a:4d:00:02
SCAN4=10.77.0.1
TGT4=10.77.0.2
DNSCLIENT4=10.77.0.3
SCAN6=fd77::1
TGT6=fd77::2
SWEEP_NET=10.77.0             # sweep targets ${SWEEP_NET}.10 .. .49 (40 hosts)
SWEEP_FIRST=10
SWEEP_LAST=49
SWEEP_445_OPEN=(10.77.0.10 10.77.0.25 10.77.0.40)  # nmap_host_sweep: 445 listening here
EXT_NET=198.51.100            # RFC 5737 TEST-NET-2: the "external" scanners

ALL_CAPTURES=(nmap_syn_scan nmap_connect_scan nmap_udp_scan nmap_syn_filtered
              nmap_syn_scan_ipv6 nmap_stealth_scans benign_clients
              nmap_host_sweep nmap_ping_sweep distributed_port_sweep
              exposed_host_probe nmap_ack_maimon_scans)

WORK=$(mktemp -d /tmp/ss-captures.XXXXXX)
chmod 755 "${WORK}"
TCPDUMP_PID=""
SERVICES_PID=""
EXTRA_PID=""

exec 3>&2  # the script's own stderr, also while a generator's output is redirected
log() { printf '[make_captures] %s\n' "$*" >&3; }

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

kill_ns_processes() {
    # Every process inside our namespaces was started by this script.
    local ns=$1 pid
    ns_exists "${ns}" || return 0
    for pid in $(ip netns pids "${ns}" 2>/dev/null); do
        kill -TERM "${pid}" 2>/dev/null || true
    done
    sleep 0.2
    for pid in $(ip netns pids "${ns}" 2>/dev/null); do
        kill -KILL "${pid}" 2>/dev/null || true
    done
}

teardown_ns() {
    if [[ -n ${TCPDUMP_PID} ]]; then
        kill -INT "${TCPDUMP_PID}" 2>/dev/null || true
        wait "${TCPDUMP_PID}" 2>/dev/null || true
        TCPDUMP_PID=""
    fi
    local pid
    for pid in "${SERVICES_PID}" "${EXTRA_PID}"; do
        [[ -n ${pid} ]] || continue
        kill -TERM "${pid}" 2>/dev/null || true
        wait "${pid}" 2>/dev/null || true
    done
    SERVICES_PID=""
    EXTRA_PID=""
    local ns
    for ns in "${NS_SCAN}" "${NS_TGT}"; do
        if ns_exists "${ns}"; then
            kill_ns_processes "${ns}"
            ip netns del "${ns}"
        fi
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    teardown_ns
    rm -rf "${WORK}"
    if [[ ${rc} -ne 0 ]]; then
        log "FAILED (exit ${rc}); namespaces and helper processes cleaned up"
    fi
    exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

in_scan() { echo "+ ip netns exec ${NS_SCAN} $*" >&2; ip netns exec "${NS_SCAN}" "$@"; }
in_tgt() { ip netns exec "${NS_TGT}" "$@"; }

setup_ns() {
    teardown_ns
    ip netns add "${NS_SCAN}"
    ip netns add "${NS_TGT}"
    ip link add name "${IF_SCAN}" address "${MAC_SCAN}" netns "${NS_SCAN}" type veth \
        peer name "${IF_TGT}" address "${MAC_TGT}" netns "${NS_TGT}"
    local ns ifc
    for ns in "${NS_SCAN}" "${NS_TGT}"; do
        ip -n "${ns}" link set lo up
        # keep the captures quiet: no router solicitations / RAs
        ip netns exec "${ns}" sysctl -qw net.ipv6.conf.all.accept_ra=0 \
            net.ipv6.conf.default.accept_ra=0 \
            net.ipv6.conf.all.router_solicitations=0 \
            net.ipv6.conf.default.router_solicitations=0
    done
    # no rate limiting of ICMP errors (port unreachable for -sU etc.)
    in_tgt sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0
    in_scan sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0
    # no link-local autoconfiguration: the only IPv6 addresses are the ULAs
    for ifc in "${NS_SCAN}:${IF_SCAN}" "${NS_TGT}:${IF_TGT}"; do
        ip -n "${ifc%%:*}" link set dev "${ifc#*:}" addrgenmode none
    done
    ip -n "${NS_SCAN}" addr add "${SCAN4}/24" dev "${IF_SCAN}"
    ip -n "${NS_TGT}" addr add "${TGT4}/24" dev "${IF_TGT}"
    ip -n "${NS_SCAN}" -6 addr add "${SCAN6}/64" dev "${IF_SCAN}" nodad
    ip -n "${NS_TGT}" -6 addr add "${TGT6}/64" dev "${IF_TGT}" nodad
    ip -n "${NS_SCAN}" link set "${IF_SCAN}" up
    ip -n "${NS_TGT}" link set "${IF_TGT}" up

    rm -f "${WORK}/services.ready"
    ip netns exec "${NS_TGT}" python3 "${HERE}/target_services.py" "${WORK}/services.ready" \
        >"${WORK}/services.log" 2>&1 &
    SERVICES_PID=$!
    local i
    for i in $(seq 1 100); do
        [[ -s ${WORK}/services.ready ]] && break
        kill -0 "${SERVICES_PID}" 2>/dev/null || { cat "${WORK}/services.log" >&2; return 1; }
        sleep 0.05
    done
    [[ -s ${WORK}/services.ready ]] || { log "target services did not start"; return 1; }
    # sanity: the veth link works in both families
    in_scan python3 -c "import socket; socket.create_connection(('${TGT4}', 80), timeout=3).close()" >/dev/null
    in_scan python3 -c "import socket; socket.create_connection(('${TGT6}', 80), timeout=3).close()" >/dev/null
    # let the MLD reports sent when the interfaces came up go by before capturing
    sleep 2
}

# capture NAME FUNCTION: run FUNCTION (traffic generator) while tcpdump records
# everything on the target's veth into ${WORK}/out/NAME.pcap
capture() {
    local name=$1 fn=$2
    local pcap="${WORK}/out/${name}.pcap" tdlog="${WORK}/${name}.tcpdump.log"
    mkdir -p "${WORK}/out" "${WORK}/logs"
    : >"${tdlog}"
    # Job control on while starting it: otherwise bash starts background jobs
    # with SIGINT ignored and tcpdump keeps that disposition, so the SIGINT
    # used below to stop it cleanly would be lost.
    set -m
    ip netns exec "${NS_TGT}" tcpdump -i "${IF_TGT}" -w "${pcap}" -U -Z root >/dev/null 2>"${tdlog}" &
    TCPDUMP_PID=$!
    set +m
    local i
    for i in $(seq 1 100); do
        grep -q 'listening on' "${tdlog}" && break
        kill -0 "${TCPDUMP_PID}" 2>/dev/null || { cat "${tdlog}" >&2; return 1; }
        sleep 0.05
    done
    grep -q 'listening on' "${tdlog}" || { log "tcpdump not ready"; return 1; }
    sleep 0.5
    log "${name}: running traffic generator"
    "${fn}" >"${WORK}/logs/${name}.log" 2>&1
    sleep 1
    kill -INT "${TCPDUMP_PID}"
    wait "${TCPDUMP_PID}" || true
    TCPDUMP_PID=""
    [[ -s ${pcap} ]] || { log "${name}: empty capture"; return 1; }
    log "${name}: $(grep -E 'packets (captured|dropped by kernel)' "${tdlog}" | tr '\n' ' ')"
    if grep -qE '^[1-9][0-9]* packets dropped by kernel' "${tdlog}"; then
        log "${name}: tcpdump dropped packets"; return 1
    fi
}

# ---- traffic generators (all run in ss-scan) --------------------------------
gen_nmap_syn_scan() {
    in_scan nmap -sS -Pn -n -p 1-1000 --max-retries 1 "${TGT4}"
}
gen_nmap_connect_scan() {
    in_scan nmap -sT -Pn -n -p 1-1000 --max-retries 1 "${TGT4}"
}
gen_nmap_udp_scan() {
    in_scan nmap -sU -Pn -n -p 50-60 --max-retries 1 "${TGT4}"
}
gen_nmap_syn_filtered() {
    in_scan nmap -sS -Pn -n -p 1-100 --max-retries 1 "${TGT4}"
}
gen_nmap_syn_scan_ipv6() {
    in_scan nmap -6 -sS -Pn -n -p 1-200 --max-retries 1 "${TGT6}"
}
gen_nmap_stealth_scans() {
    in_scan nmap -sF -Pn -n -p 1-50 --max-retries 1 "${TGT4}"
    sleep 1
    in_scan nmap -sN -Pn -n -p 1-50 --max-retries 1 "${TGT4}"
    sleep 1
    in_scan nmap -sX -Pn -n -p 1-50 --max-retries 1 "${TGT4}"
}
gen_nmap_ack_maimon_scans() {
    in_scan nmap -sA -Pn -n -p 1-50 --max-retries 1 "${TGT4}"
    sleep 1
    in_scan nmap -sM -Pn -n -p 1-50 --max-retries 1 "${TGT4}"
}
gen_benign_clients() {
    local i
    # 20 plain HTTP GETs over IPv4 (10.77.0.1 -> :80), one connection each
    for i in $(seq 1 20); do
        in_scan curl -sS --noproxy '*' --max-time 5 -o /dev/null \
            -w '%{http_code} %{local_ip}:%{local_port} -> %{remote_ip}:%{remote_port}\n' \
            "http://${TGT4}/index-${i}.html"
        sleep 0.1
    done
    # 3 HTTP GETs over IPv6 (fd77::1 -> :80)
    for i in $(seq 1 3); do
        in_scan curl -sS -g --noproxy '*' --max-time 5 -o /dev/null \
            -w '%{http_code} %{local_ip}:%{local_port} -> %{remote_ip}:%{remote_port}\n' \
            "http://[${TGT6}]/v6-${i}.html"
        sleep 0.1
    done
    # 3 connects to :22, 3 to :443 (10.77.0.1), 5 DNS queries (10.77.0.3 -> udp/53)
    in_scan python3 "${HERE}/benign_clients.py"
}

gen_nmap_host_sweep() {
    in_scan nmap -sS -Pn -n -p 445 --max-retries 1 "${SWEEP_NET}.${SWEEP_FIRST}-${SWEEP_LAST}"
}
gen_nmap_ping_sweep() {
    # On an Ethernet link nmap (as root) replaces -PE by an ARP ping unless
    # told not to; --disable-arp-ping makes it really send ICMP echo requests.
    in_scan nmap -sn -PE -n --disable-arp-ping "${SWEEP_NET}.${SWEEP_FIRST}-${SWEEP_LAST}"
}
gen_distributed_port_sweep() {
    # 8 scanners 198.51.100.1..8, all at once, each sweeping 5 of the 40 hosts
    # on TCP 3389 (198.51.100.K -> 10.77.0.(5K+5) .. 10.77.0.(5K+9)).
    local k lo pids=() rc=0
    for k in $(seq 1 8); do
        lo=$((SWEEP_FIRST + 5 * (k - 1)))
        in_scan nmap -sS -Pn -n -p 3389 -S "${EXT_NET}.${k}" -e "${IF_SCAN}" --max-retries 0 \
            "${SWEEP_NET}.${lo}-$((lo + 4))" >"${WORK}/dps.${k}.log" 2>&1 &
        pids+=($!)
    done
    for k in $(seq 1 8); do
        wait "${pids[k - 1]}" || rc=1
        echo "---- scanner ${EXT_NET}.${k} ----"
        cat "${WORK}/dps.${k}.log"
    done
    return "${rc}"
}
gen_exposed_host_probe() {
    # 198.51.100.20: 5 connection attempts; 198.51.100.21: 2 (one SYN per port,
    # --max-retries 0).
    in_scan nmap -sS -Pn -n -p 22,80,443,8080,3306 -S "${EXT_NET}.20" -e "${IF_SCAN}" \
        --max-retries 0 "${TGT4}"
    sleep 1
    in_scan nmap -sS -Pn -n -p 80,443 -S "${EXT_NET}.21" -e "${IF_SCAN}" \
        --max-retries 0 "${TGT4}"
}

# ---- per-capture extra setup ------------------------------------------------
add_sweep_hosts() {
    # one namespace answers for all 40 sweep targets: extra addresses on ssv-tgt
    local i
    for i in $(seq "${SWEEP_FIRST}" "${SWEEP_LAST}"); do
        ip -n "${NS_TGT}" addr add "${SWEEP_NET}.${i}/24" dev "${IF_TGT}"
    done
}
add_external_scanners() {
    # documentation-range source addresses on the scanner's veth (/32, no
    # route of their own needed there); the target reaches them on-link
    local k
    for k in "$@"; do
        ip -n "${NS_SCAN}" addr add "${EXT_NET}.${k}/32" dev "${IF_SCAN}"
    done
    ip -n "${NS_TGT}" route add "${EXT_NET}.0/24" dev "${IF_TGT}"
}
prepare_nmap_host_sweep() {
    add_sweep_hosts
    local args=() a i
    for a in "${SWEEP_445_OPEN[@]}"; do args+=(--listen "${a}:445"); done
    rm -f "${WORK}/extra.ready"
    ip netns exec "${NS_TGT}" python3 "${HERE}/target_services.py" "${WORK}/extra.ready" "${args[@]}" \
        >"${WORK}/extra.log" 2>&1 &
    EXTRA_PID=$!
    for i in $(seq 1 100); do
        [[ -s ${WORK}/extra.ready ]] && break
        kill -0 "${EXTRA_PID}" 2>/dev/null || { cat "${WORK}/extra.log" >&2; return 1; }
        sleep 0.05
    done
    [[ -s ${WORK}/extra.ready ]] || { log "445 listeners did not start"; return 1; }
}
prepare_nmap_ping_sweep() {
    add_sweep_hosts
}
prepare_distributed_port_sweep() {
    add_sweep_hosts
    add_external_scanners $(seq 1 8)
}
prepare_exposed_host_probe() {
    add_external_scanners 20 21
}
prepare_nmap_syn_filtered() {
    # No nft/iptables binaries are installed (and nothing may be installed), so
    # the "firewall" is policy routing: inbound TCP (iif ssv-tgt) to any port
    # except 80 hits a blackhole rule and is dropped silently.  The local
    # table rule has to move behind these rules (it is pref 0 by default).
    # fib rules cannot express dport 65535 (kernel requires end < 0xffff); the
    # scan only covers 1-100, so that is irrelevant here.
    ip -n "${NS_TGT}" rule add pref 10 iif "${IF_TGT}" ipproto tcp dport 1-79 blackhole
    ip -n "${NS_TGT}" rule add pref 11 iif "${IF_TGT}" ipproto tcp dport 81-65534 blackhole
    ip -n "${NS_TGT}" rule add pref 100 lookup local
    ip -n "${NS_TGT}" rule del pref 0
    ip -n "${NS_TGT}" -4 rule show >&2
}
prepare_benign_clients() {
    ip -n "${NS_SCAN}" addr add "${DNSCLIENT4}/24" dev "${IF_SCAN}"
}

# ---- main ---------------------------------------------------------------------
if [[ $# -gt 0 ]]; then
    REQUESTED=("$@")
else
    REQUESTED=("${ALL_CAPTURES[@]}")
fi
for name in "${REQUESTED[@]}"; do
    declare -F "gen_${name}" >/dev/null || { log "unknown capture: ${name}"; exit 2; }
done

for name in "${REQUESTED[@]}"; do
    log "=== ${name} ==="
    setup_ns
    if declare -F "prepare_${name}" >/dev/null; then
        "prepare_${name}"
    fi
    capture "${name}" "gen_${name}"
    teardown_ns
done

mkdir -p "${OUT}/logs"
OUT=$(cd "${OUT}" && pwd)
for name in "${REQUESTED[@]}"; do
    install -m 0644 "${WORK}/out/${name}.pcap" "${OUT}/${name}.pcap"
    {
        echo "# ${name}.pcap -- generated by make_captures.sh"
        echo "# date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "# kernel: $(uname -r)"
        echo "# nmap: $(nmap --version | head -1)"
        echo "# tcpdump: $(tcpdump --version 2>&1 | head -1); $(tcpdump --version 2>&1 | sed -n 2p)"
        echo "# curl: $(curl --version | head -1)"
        echo "# python3: $(python3 --version 2>&1)"
        echo "# sha256: $(sha256sum "${OUT}/${name}.pcap" | cut -d' ' -f1)"
        echo "# packets: $(tcpdump -r "${OUT}/${name}.pcap" 2>/dev/null | wc -l)"
        echo "# --- generator output ---"
        cat "${WORK}/logs/${name}.log"
    } >"${OUT}/logs/${name}.log"
    log "wrote ${OUT}/${name}.pcap ($(stat -c %s "${OUT}/${name}.pcap") bytes)"
done
log "done"
