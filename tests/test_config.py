import pytest

from conftest import ROOT
from sensor.config import (SETTINGS, ConfigError, config_reference_markdown, default_config_toml,
                           load_config, parse_override)

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib


def test_config_md_is_current():
    assert (ROOT / "CONFIG.md").read_text() == config_reference_markdown() + "\n", \
        "regenerate with: python -m sensor.config > CONFIG.md"


def test_dump_covers_every_setting_with_its_default():
    table = tomllib.loads(default_config_toml())
    for s in SETTINGS:
        section, name = s.key.split(".")
        assert table[section][name] == s.default


def test_override_types():
    assert parse_override("port_scan.window_s=60") == ("port_scan.window_s", 60.0)
    assert parse_override("sensor.name=edge-1") == ("sensor.name", "edge-1")
    assert parse_override("port_scan.enabled=false") == ("port_scan.enabled", False)
    with pytest.raises(ConfigError, match="`port_scan.enabled` must be true or false"):
        parse_override("port_scan.enabled=1")


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[portscan]\nthreshold = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[portscan\]"):
        load_config(p)


def test_invalid_toml_names_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[port_scan\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)
