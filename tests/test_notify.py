"""sd_notify against a real datagram socket: messages as systemd reads them, and a
receiver that stopped reading never stalls the daemon."""
import socket
import time

from sensor.notify import WAIT_S, Notifier


def receiver(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock, str(path)


def test_messages_arrive_as_newline_separated_assignments(tmp_path):
    sock, path = receiver(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("listening on eth0")
    n.status("stats: 1 packet")
    n.stopping()
    got = [sock.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=listening on eth0", "STATUS=stats: 1 packet", "STOPPING=1"]


def test_a_receiver_that_never_reads_does_not_stall_the_loop(tmp_path):
    sock, path = receiver(tmp_path)        # bound, never read: its queue fills
    warnings = []
    n = Notifier({"NOTIFY_SOCKET": path}, warn=warnings.append)
    start = time.monotonic()
    for i in range(200):
        n.status(f"stats: {i}")
    assert time.monotonic() - start < 20.0  # a hang bound: 200 blocking sends would take 200 s
    assert n.skipped > 0 and not warnings
    start = time.monotonic()
    n.stopping()                             # waits at most WAIT_S, then says so once
    n.stopping()
    assert time.monotonic() - start < 2 * WAIT_S + 1.0
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0]
    sock.close()


def test_outside_systemd_nothing_is_sent():
    n = Notifier({})
    assert not n.enabled and n.send("READY=1") is False
