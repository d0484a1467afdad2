"""One TCP or TLS connection to a collector, and how much of it the collector has taken.

"Sent" on TCP is not "written to the socket": ``send()`` returns once the
bytes are in this kernel's send buffer, and a collector that stops (or a
connection that breaks) loses whatever it had not yet acknowledged. So every
frame's end is recorded as an offset in the connection's byte stream, and a
frame counts as delivered only when the peer's TCP has acknowledged every
byte of it: ``tcpi_bytes_acked`` from ``TCP_INFO`` (Linux >= 4.1, readable
even after a reset). For TLS the stream offset after each frame is read from
the kernel (bytes acknowledged + ``SIOCOUTQ``, the bytes written but not yet
acknowledged), so TLS record overhead needs no guessing.

Framing (RFC 6587): octet counting ``LEN SP MSG`` (the default; also what RFC
5425 prescribes for TLS) or LF-terminated (``MSG LF``; a LF inside the
message is replaced by a space so it cannot split it).
"""
import fcntl
import select
import socket
import ssl
import struct
import termios

TCP_INFO_BYTES_ACKED = 120          # offset of tcpi_bytes_acked in struct tcp_info (u64)
TCP_INFO_BYTES_RECEIVED = 128      # tcpi_bytes_received (u64); a FIN counts as one
TCP_INFO_LEN = 232


class PeerClosed(ConnectionError):
    """The collector closed the connection (FIN or TLS close_notify)."""


def frame(message, framing):
    if framing == "lf":
        return message.replace(b"\n", b" ") + b"\n"
    return b"%d %s" % (len(message), message)


def tls_context(spec):
    """An ssl.SSLContext for a tls:// output; ValueError naming the option on bad files."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=spec.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"{spec.source}: ca={spec.ca}: not a usable CA file ({exc})") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = spec.verify_hostname
    if spec.cert:
        try:
            ctx.load_cert_chain(spec.cert, spec.key)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{spec.source}: cert={spec.cert} key={spec.key}: not a usable "
                             f"certificate and key ({exc})") from None
    return ctx


class StreamLink:
    def __init__(self, spec, ssl_context, connect_timeout_s, send_timeout_s):
        self.spec = spec
        self.ssl_context = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.send_timeout_s = send_timeout_s
        self.sock = None
        self._base = 0
        self._written = 0

    def connect(self):
        sock = socket.create_connection((self.spec.host, self.spec.port),
                                        timeout=self.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:   # the SSLSocket takes over the descriptor
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.spec.host)
            sock.settimeout(self.send_timeout_s)
            self.sock = sock
            self._base = self._stream_offset()
            self._written = 0
            self._rx_base = self._received()
        except BaseException:
            sock.close()
            raise

    def _acked_abs(self):
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
        return struct.unpack_from("Q", info, TCP_INFO_BYTES_ACKED)[0]

    def _received(self):
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
        return struct.unpack_from("Q", info, TCP_INFO_BYTES_RECEIVED)[0]

    def peer_closed_cleanly(self):
        """After a failure: did the collector close (FIN, or TLS close_notify) rather
        than reset? A reset without a close means it closed with bytes it had
        acknowledged but not read (RFC 1122 4.2.2.13; Linux does so): those are lost."""
        return self._received() > self._rx_base

    def _outq(self):
        buf = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]

    def _stream_offset(self):
        """Bytes written into this connection so far, as the kernel counts them."""
        while True:
            before = self._acked_abs()
            unacked = self._outq()
            if self._acked_abs() == before:
                return before + unacked

    def write(self, data):
        """Write one frame; return the stream offset of its end (for ``acked()``)."""
        self.sock.sendall(data)
        if self.ssl_context is None:
            self._written += len(data)
            return self._written
        return self._stream_offset() - self._base

    def acked(self):
        """Stream bytes the peer's TCP has acknowledged (also valid after a reset)."""
        return self._acked_abs() - self._base

    def writable(self, timeout_s):
        return bool(select.select([], [self.sock], [], timeout_s)[1])

    def check_peer(self, timeout_s=0.0):
        """Raise PeerClosed / OSError if the collector closed or reset the connection."""
        if self.ssl_context is not None and self.sock.pending():
            self._drain()
        if select.select([self.sock], [], [], timeout_s)[0]:
            self._drain()

    def _drain(self):
        try:
            data = self.sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError, socket.timeout):
            self._rx_base = self._received()     # e.g. TLS 1.3 session tickets, consumed
            return
        except ssl.SSLError as exc:
            raise ConnectionError(f"TLS: {exc}") from None
        if not data:
            raise PeerClosed("the collector closed the connection")

    def close(self):
        if self.sock is None:
            return
        try:
            if self.ssl_context is not None:
                self.sock.settimeout(0.5)
                self.sock.unwrap()       # close_notify (RFC 5425 section 4.4)
        except (OSError, ValueError, ssl.SSLError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.sock = None
