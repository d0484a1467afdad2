from hypothesis import given, strategies as st

from sensor.addresses import from_text, to_text
from sensor.alerts import compress_ports, expand_ports, rfc3339


def test_compress_ports_examples():
    assert compress_ports([80, 21, 22, 23, 443]) == "21-23,80,443"
    assert compress_ports([]) == ""
    assert compress_ports(range(65536)) == "0-65535"


@given(st.sets(st.integers(0, 65535), max_size=300))
def test_compress_expand_round_trip(ports):
    assert expand_ports(compress_ports(ports)) == sorted(ports)


@given(st.sets(st.integers(0, 65535), max_size=300))
def test_episode_port_bits_round_trip(ports):
    from sensor.episodes import bits_text, port_bits
    text = compress_ports(ports)
    assert bits_text(port_bits(text)) == text
    assert port_bits(text) == sum(1 << p for p in ports)


def test_port_text_of_a_random_order_full_scan():
    """Every other port of 0-65535 (32,768 ranges, the worst case) converts exactly,
    numpy arrays and sets alike."""
    import numpy as np
    from sensor.episodes import bits_text, port_bits
    ports = np.arange(0, 65536, 2)
    np.random.default_rng(1).shuffle(ports)
    text = compress_ports(ports)
    assert text == ",".join(str(p) for p in range(0, 65536, 2))
    assert compress_ports(set(ports.tolist())) == text
    assert compress_ports(ports.astype(np.uint16)) == text
    assert bits_text(port_bits(text)) == text
    assert bits_text(port_bits(text) | port_bits("1-65535")) == "0-65535"


def test_canonical_addresses():
    assert to_text(*from_text("::ffff:10.1.2.3")) == "10.1.2.3"
    assert from_text("::ffff:10.1.2.3") == from_text("10.1.2.3")
    assert from_text("::10.1.2.3") == from_text("10.1.2.3")      # IPv4-compatible
    assert to_text(*from_text("::1")) == "::1"
    assert to_text(*from_text("::")) == "::"
    assert to_text(*from_text("2001:db8::ffff:10.1.2.3")) == "2001:db8::ffff:a01:203"


def test_rfc3339():
    assert rfc3339(1_719_198_070_258_764_300) == "2024-06-24T03:01:10.258764Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
