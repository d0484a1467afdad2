"""CIDR lists from config -> the arrays kernels/classify.py matches against."""
import ipaddress

import numpy as np

from kernels.classify import LIST_DST_IGNORE, LIST_EXPOSED, LIST_HOME, LIST_SRC_ALLOW

MASK64 = (1 << 64) - 1
MAPPED = 0xFFFF_0000_0000


def network_words(text):
    """CIDR text -> (net_hi, net_lo, mask_hi, mask_lo) in the kernels' 128-bit form."""
    net = ipaddress.ip_network(text, strict=False)
    if net.version == 4:
        value = (MAPPED << 0) | int(net.network_address)
        prefix = 96 + net.prefixlen
    else:
        value = int(net.network_address)
        prefix = net.prefixlen
        mapped = net.network_address.ipv4_mapped
        if mapped is None and value >> 32 == 0 and prefix >= 96 and value > 1:
            value |= MAPPED       # IPv4-compatible ::a.b.c.d/n means the IPv4 network
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    value &= mask
    return value >> 64, value & MASK64, mask >> 64, mask & MASK64


def compile_lists(cfg):
    """Tuple of arrays (net_hi, net_lo, mask_hi, mask_lo, list_id) for classify_rows."""
    entries = []
    for key, list_id in (("net.home_net", LIST_HOME), ("net.allow_sources", LIST_SRC_ALLOW),
                         ("net.ignore_destinations", LIST_DST_IGNORE),
                         ("net.exposed_hosts", LIST_EXPOSED)):
        for text in cfg[key]:
            entries.append((*network_words(text), list_id))
    cols = list(zip(*entries)) if entries else [[], [], [], [], []]
    return (np.array(cols[0], np.uint64), np.array(cols[1], np.uint64),
            np.array(cols[2], np.uint64), np.array(cols[3], np.uint64),
            np.array(cols[4], np.int64))
