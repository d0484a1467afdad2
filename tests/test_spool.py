"""The on-disk spool: order, restart, segment deletion, capacity, damage."""
import os

import msgpack

from sensor.output.spool import Spool


def messages(n, start=0):
    return [b"<13>1 - h a - m%05d - body %05d" % (i, i) for i in range(start, start + n)]


def drain(spool, batch=7):
    out = []
    while True:
        got = spool.read(batch)
        if not got:
            return out
        out += got
        spool.ack(got[-1][0])


def segment_files(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".spool"))


def test_in_order_across_segments_and_delivered_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, segment_bytes=4096)
    assert spool.append(messages(300)) == 300
    assert len(segment_files(tmp_path)) > 3
    got = drain(spool)
    assert [m for _, m in got] == messages(300)
    assert [s for s, _ in got] == list(range(1, 301))
    assert segment_files(tmp_path) == [] and spool.backlog == 0
    spool.close()


def test_rewind_resends_what_was_not_acknowledged(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, segment_bytes=4096)
    spool.append(messages(50))
    first = spool.read(20)
    spool.ack(first[9][0])              # 10 acknowledged, 10 written but lost
    spool.rewind()
    again = spool.read(100)
    assert [m for _, m in again] == messages(40, start=10)
    spool.close()


def test_survives_restart_and_continues_numbering(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, segment_bytes=4096, fsync_interval_s=10)
    spool.append(messages(100))
    got = spool.read(30)
    spool.ack(got[-1][0])
    spool.close()                       # close fsyncs and records the acknowledgement
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, segment_bytes=4096)
    assert spool.backlog == 70
    spool.append(messages(5, start=100))
    got = drain(spool)
    assert [m for _, m in got] == messages(75, start=30)
    assert [s for s, _ in got] == list(range(31, 106))
    spool.close()


def test_full_spool_refuses_and_says_how_many_it_took(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=8192, segment_bytes=4096)
    taken = spool.append(messages(1000))
    assert 0 < taken < 1000
    assert spool.total_bytes <= 8192
    assert [m for _, m in drain(spool)] == messages(taken)
    assert spool.append(messages(10, start=taken)) == 10    # room again once delivered
    spool.close()


def test_damage_costs_only_the_damaged_messages(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, segment_bytes=1 << 20)
    spool.append(messages(60))
    spool.close()
    (seg,) = segment_files(tmp_path)
    path = tmp_path / seg
    data = bytearray(path.read_bytes())
    data[data.index(b"body 00020") + 6] ^= 0x01           # a flipped bit: CRC mismatch
    at = data.index(b"<13>1 - h a - m00040") - 9           # the entry's msgpack header
    data[at:at + 20] = b"\xff" * 20                         # torn: header and message start
    path.write_bytes(bytes(data))
    log = []
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, log=log.append)
    got = [m for _, m in drain(spool)]
    expected = [m for i, m in enumerate(messages(60)) if i not in (20, 40)]
    assert got == expected
    assert spool.damaged == 2
    assert any(str(path) in line and "checksum" in line for line in log)
    assert any(str(path) in line and "not a valid entry" in line for line in log)
    spool.close()


def test_unknown_version_segment_is_reported_and_kept(tmp_path):
    foreign = tmp_path / "seg-0000000000000001.spool"
    foreign.write_bytes(msgpack.packb({"magic": "scan-sensor-spool", "version": 99}))
    log = []
    spool = Spool(tmp_path, "o", max_bytes=1 << 20, log=log.append)
    assert spool.read(10) == []
    assert any("version 99" in line for line in log)
    spool.close()
    assert foreign.exists()


def test_damaged_last_message_does_not_stay_in_the_backlog(tmp_path):
    spool = Spool(tmp_path, "o", max_bytes=1 << 20)
    spool.append(messages(5))
    spool.close()
    (seg,) = segment_files(tmp_path)
    data = bytearray((tmp_path / seg).read_bytes())
    data[-3] ^= 0x01
    (tmp_path / seg).write_bytes(bytes(data))
    spool = Spool(tmp_path, "o", max_bytes=1 << 20)
    got = spool.read(10)
    assert [m for _, m in got] == messages(4)
    assert spool.read(10) == [] and spool.unread == 0
    spool.ack(got[-1][0])
    assert spool.backlog == 0            # numbering goes on after the last valid message
    assert spool.append(messages(1, start=5)) == 1
    assert spool.read(10)[0][0] == 5
    spool.close()


def test_one_process_at_a_time(tmp_path):
    import subprocess
    import sys
    import pytest
    from sensor.output.spool import SpoolBusy
    spool = Spool(tmp_path, "o", max_bytes=1 << 20)
    code = ("import sys; from sensor.output.spool import Spool, SpoolBusy\n"
            "try:\n    Spool(sys.argv[1], 'o', 1 << 20)\nexcept SpoolBusy as e:\n"
            "    print(e); sys.exit(3)\n")
    from conftest import ROOT
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "in use by another scan-sensor process" in proc.stdout
    spool.close()
    Spool(tmp_path, "o", max_bytes=1 << 20).close()      # free again
    with pytest.raises(SpoolBusy):
        a = Spool(tmp_path, "o", max_bytes=1 << 20)
        try:
            Spool(tmp_path, "o", max_bytes=1 << 20)       # flock is per open file too
        finally:
            a.close()
