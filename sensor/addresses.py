"""128-bit address values (as the kernels hold them) <-> canonical text.

The kernels keep every address as (hi, lo) uint64 halves with IPv4 as
IPv4-mapped IPv6. Output always prints the canonical form: an IPv4-mapped
address prints as plain IPv4 (``10.1.2.3``, never ``::ffff:10.1.2.3``).
"""
import ipaddress

MAPPED_PREFIX = 0xFFFF_0000_0000


def to_ip(hi, lo):
    hi = int(hi)
    lo = int(lo)
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return ipaddress.IPv4Address(lo & 0xFFFF_FFFF)
    return ipaddress.IPv6Address((hi << 64) | lo)


def to_text(hi, lo):
    return str(to_ip(hi, lo))


def from_text(text):
    """Parse an address into the kernels' (hi, lo); IPv4, mapped and compatible forms agree."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        return 0, MAPPED_PREFIX | int(ip)
    value = int(ip)
    hi, lo = value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF
    if hi == 0 and (lo >> 32) == 0 and lo > 1:
        lo |= MAPPED_PREFIX
    return hi, lo


def mac_text(value):
    """48-bit MAC as the kernels hold it (an int) -> ``aa:bb:cc:dd:ee:ff``."""
    value = int(value)
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def mac_value(text):
    """Inverse of mac_text (``aa:bb:cc:dd:ee:ff`` or ``aa-bb-...``)."""
    return int(text.replace("-", "").replace(":", ""), 16)
