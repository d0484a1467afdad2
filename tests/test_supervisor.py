"""port_sweep merged across capture workers: exported rows counted elsewhere give the
same alerts as one engine counting everything (``Engine(export=...)`` and
``Engine.count_exported``, used by ``sensor/supervisor.py``)."""
import pytest

from conftest import shipped
from sensor.capture.files import CaptureFile
from sensor.config import load_config
from sensor.engine import Engine

CASES = [
    ("distributed_port_sweep.pcap", [], None),
    ("distributed_port_sweep.pcap", ["port_sweep.threshold=20"], None),
    ("distributed_port_sweep.pcap", [], "sentinel-port-sweep"),
    ("distributed_sweep_445.pcap", [], None),
    ("distributed_sweep_445.pcap", [], "sentinel-port-sweep"),
    ("distributed_sweep_445.pcap", ["port_sweep.max_sources=8"], "sentinel-port-sweep"),
    ("distributed_port_sweep.pcap", ["port_sweep.count_open=true",
                                     "port_sweep.threshold=10"], None),
    ("nmap_host_sweep.pcap", ["port_sweep.threshold=5", "port_sweep.directions=[\"internal\"]"],
     None),
    ("benign_clients.pcap", [], None),
]


def run(engine, path, merger=None):
    alerts, merged = [], []

    def drain():
        for export in engine.take_exports():
            merged.extend(merger.count_exported(*export))

    with CaptureFile(path) as capture:
        for batch in capture.batches(engine.batches, engine.decode_stats):
            alerts += engine.process(batch)
            if merger is not None:
                drain()
    alerts += engine.finish()
    if merger is not None:
        drain()
        merged += merger.finish()
    return [a.to_dict() for a in alerts], [a.to_dict() for a in merged]


@pytest.mark.parametrize("name,sets,preset", CASES)
@pytest.mark.parametrize("batch", [64, 65536])
def test_exported_port_sweep_counts_like_one_engine(name, sets, preset, batch):
    cfg = load_config(None, ["sensor.hash_seed=7", f"capture.batch_packets={batch}", *sets],
                      preset)
    path = shipped(name)
    whole, _ = run(Engine(cfg), path)
    rest, merged = run(Engine(cfg, export=("port_sweep",)), path,
                       Engine(cfg, rules={"port_sweep"}))
    assert merged == [a for a in whole if a["rule"] == "port_sweep"]
    assert rest == [a for a in whole if a["rule"] not in ("port_sweep", "alert_rate_limited")]
    if name == "distributed_sweep_445.pcap":
        assert len(merged) == 1 and len(merged[0]["sources"]) == (8 if sets else 40)
    if name == "distributed_port_sweep.pcap" and (sets or preset):
        assert merged, "the case is meant to raise a port_sweep alert"


def test_an_exporting_engine_counts_nothing_of_that_rule():
    cfg = load_config(None, ["port_sweep.threshold=20"])
    engine = Engine(cfg, export=("port_sweep",))
    alerts, _ = run(engine, shipped("distributed_port_sweep.pcap"))
    assert not [a for a in alerts if a["rule"] == "port_sweep"]
    assert "port_sweep_counted" not in engine.stats()
