"""The docs promise what the project does."""
import re

from conftest import ROOT


def readme_commands():
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    assert "scan-sensor replay" in commands[0] and "pcaps/" in commands[0]
    assert "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_sample_capture_exists():
    sample = re.search(r"(pcaps/\S+\.pcap)", readme_commands()[0]).group(1)
    assert (ROOT / sample).is_file()


def test_every_preset_is_documented_in_the_readme():
    from sensor.presets import PRESETS
    text = (ROOT / "README.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in text


def test_every_shipped_capture_and_script_is_in_a_pcaps_readme():
    """Each capture (and the script that made it) under pcaps/ is named in
    pcaps/README.md or in the README of its own directory."""
    top = (ROOT / "pcaps" / "README.md").read_text()
    missing = []
    for path in sorted((ROOT / "pcaps").rglob("*")):
        if not re.search(r"\.(pcap|pcapng|gz|py|sh)$", path.name) or "__pycache__" in path.parts:
            continue
        own = path.parent / "README.md"
        texts = top + (own.read_text() if own.is_file() and own.parent != ROOT / "pcaps" else "")
        if path.name not in texts:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in pcaps/README.md nor its directory's README: {missing}"
