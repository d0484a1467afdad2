"""The systemd units: hardening score, syntax, and command lines the CLI accepts."""
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from sensor.cli import build_parser
from sensor.config import load_config

UNITS = ("scan-sensor.service", "scan-sensor@.service")
INSTALLED = "/opt/scan-sensor/bin/scan-sensor"
GOOD_LEVELS = ("PERFECT", "SAFE", "OK")

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def unit_lines(name, key):
    text = (ROOT / "systemd" / name).read_text()
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_unit_scores_ok_or_better_offline(name, tmp_path):
    unit = tmp_path / name.replace("@", "@eth1")
    shutil.copy(ROOT / "systemd" / name, unit)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", r.stdout)
    assert m, f"no overall exposure level in:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
    assert m.group(2) in GOOD_LEVELS, f"{name}: exposure {m.group(1)} {m.group(2)}"
    assert float(m.group(1)) < 2.0
    # the hardening the unit promises is really there
    for line in ("NoNewPrivileges=", "DynamicUser=", "CapabilityBoundingSet=",
                 "RestrictAddressFamilies=", "SystemCallFilter="):
        assert re.search(rf"✓ {line}", r.stdout) or line.rstrip("=") in r.stdout


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_with_the_installed_command(name, tmp_path):
    """`systemd-analyze verify` finds nothing once the command path exists."""
    script = pathlib.Path(sys.executable).with_name("scan-sensor")
    if not script.exists():
        pytest.skip(f"{script} not installed")
    text = (ROOT / "systemd" / name).read_text().replace(INSTALLED, str(script))
    unit = tmp_path / name.replace("@", "@eth1")
    unit.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    # verify prints each problem (an unknown key, a value it cannot parse) as a line
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_command_lines_parse(name):
    parser = build_parser()
    for key in ("ExecStartPre", "ExecStart"):
        for line in unit_lines(name, key):
            argv = shlex.split(line.replace("%i", "eth1"))
            assert argv[0] == INSTALLED
            args = parser.parse_args(argv[1:])
            assert args.command in ("run", "compile")


def test_unit_keeps_mdwe_off_and_says_why():
    text = (ROOT / "systemd" / "scan-sensor.service").read_text()
    assert "MemoryDenyWriteExecute=no" in text
    assert "check_jit_execution" in text


def test_sample_config_loads():
    cfg = load_config(ROOT / "systemd" / "scan-sensor.toml")
    assert cfg["capture.interfaces"] == ["eth1"]
    assert cfg["sensor.state_dir"] == "/var/lib/scan-sensor"
