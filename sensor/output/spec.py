"""Output specifications: ``--syslog URL``, ``--jsonl PATH`` and ``[[output]]`` tables.

``parse_output_url("tcp://collector:514?format=cef&framing=lf")`` returns an
``OutputSpec``; every problem is a ``SpecError`` (a ``ValueError``) whose
message names the part of the URL (or the table key, in ``part``) that is
wrong, so the config layer can say ``output[2].ca: ...``.

URL forms::

    udp://HOST[:514]   tcp://HOST[:514]   tls://HOST[:6514]     HOST may be [IPv6]
    ?format=rfc5424|rfc3164|cef|leef|ecs|json      (default rfc5424)
    &framing=octet|lf        TCP/TLS only; default octet (RFC 6587 octet counting)
    &facility=NAME|0-23      default: the format's (13, log audit)
    &app_name=NAME           default scan-sensor
    &rate=N                  messages per minute of packet time, 0 = unlimited (default)
    &max_bytes=N             UDP only: largest datagram (default delivery.udp_max_bytes)
    &name=NAME               name in stats and of the spool directory (default from the URL)
    TLS: &ca=PATH  &cert=PATH&key=PATH (client certificate)  &verify=yes|no
         (verify=no skips the host-name check only; the chain is still verified)
"""
import dataclasses
import os
import re
import urllib.parse

from sensor.output.formats import DEFAULT_FORMAT, FORMAT_NAMES

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "audit": 13,
    "security": 13, "alert": 14, "clock": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
OPTIONS = ("format", "framing", "facility", "app_name", "rate", "max_bytes", "name",
           "ca", "cert", "key", "verify")
STREAM_ONLY = ("framing",)
TLS_ONLY = ("ca", "cert", "key", "verify")
UDP_ONLY = ("max_bytes",)
_APP_NAME = re.compile(r"[!-~]{1,48}")       # RFC 5424 APP-NAME: 1*48PRINTUSASCII
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


class SpecError(ValueError):
    """A bad output specification; ``part`` is the URL part or table key at fault."""

    def __init__(self, message, part="url"):
        super().__init__(message)
        self.part = part


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    kind: str                    # "udp", "tcp", "tls" or "jsonl"
    name: str                    # stats key and spool directory name
    source: str                  # the URL or path as the user gave it (for messages)
    host: str = None
    port: int = None
    format: str = DEFAULT_FORMAT
    framing: str = "octet"       # TCP/TLS: "octet" (RFC 6587 octet counting) or "lf"
    facility: int = None         # None: the format's default
    app_name: str = None         # None: "scan-sensor"
    rate_per_min: int = 0        # 0: unlimited
    max_bytes: int = None        # UDP datagram limit; None: delivery.udp_max_bytes
    ca: str = None
    cert: str = None
    key: str = None
    verify_hostname: bool = True
    path: str = None             # jsonl: file path or "-" for stdout

    @property
    def is_stream(self):
        return self.kind in ("tcp", "tls")


def _readable(path, part, url):
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise SpecError(f"{url}: {part}={path}: cannot read: {exc.strerror or exc}",
                        part) from None
    return os.path.abspath(path)


def _int(value, part, url, lo, hi):
    try:
        n = int(str(value).strip())
    except ValueError:
        raise SpecError(f"{url}: {part}={value!r}: not an integer", part) from None
    if not lo <= n <= hi:
        raise SpecError(f"{url}: {part}={n}: must be {lo}..{hi}", part)
    return n


def _bool(value, part, url):
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off"):
        return False
    raise SpecError(f"{url}: {part}={value!r}: expected yes or no", part)


def _options(kind, options, url):
    """Validated keyword arguments for OutputSpec from option strings."""
    out = {}
    for key, value in options.items():
        if key not in OPTIONS:
            raise SpecError(f"{url}: unknown option {key!r} (known: {', '.join(OPTIONS)})", key)
        if key in STREAM_ONLY and kind not in ("tcp", "tls"):
            raise SpecError(f"{url}: {key}= applies to tcp:// and tls:// only", key)
        if key in TLS_ONLY and kind != "tls":
            raise SpecError(f"{url}: {key}= applies to tls:// only", key)
        if key in UDP_ONLY and kind != "udp":
            raise SpecError(f"{url}: {key}= applies to udp:// only", key)
        value = str(value) if not isinstance(value, bool) else ("yes" if value else "no")
        if key == "format":
            if value not in FORMAT_NAMES:
                raise SpecError(f"{url}: format={value!r}: unknown format "
                                f"(known: {', '.join(FORMAT_NAMES)})", key)
            out["format"] = value
        elif key == "framing":
            if value not in ("octet", "lf"):
                raise SpecError(f"{url}: framing={value!r}: expected octet or lf", key)
            out["framing"] = value
        elif key == "facility":
            if value.strip().lower() in FACILITIES:
                out["facility"] = FACILITIES[value.strip().lower()]
            elif value.strip().isdigit():
                out["facility"] = _int(value, key, url, 0, 23)
            else:
                raise SpecError(f"{url}: facility={value!r}: expected 0-23 or one of "
                                f"{', '.join(FACILITIES)}", key)
        elif key == "app_name":
            if not _APP_NAME.fullmatch(value):
                raise SpecError(f"{url}: app_name={value!r}: 1-48 printable ASCII "
                                "characters, no spaces (RFC 5424 APP-NAME)", key)
            out["app_name"] = value
        elif key == "rate":
            out["rate_per_min"] = _int(value, key, url, 0, 10_000_000)
        elif key == "max_bytes":
            out["max_bytes"] = _int(value, key, url, 480, 65507)
        elif key == "name":
            if not _NAME.fullmatch(value):
                raise SpecError(f"{url}: name={value!r}: 1-100 of A-Z a-z 0-9 _ . : -", key)
            out["name"] = value
        elif key in ("ca", "cert", "key"):
            out[key] = _readable(value, key, url)
        elif key == "verify":
            out["verify_hostname"] = _bool(value, key, url)
    if ("cert" in out) != ("key" in out):
        raise SpecError(f"{url}: cert= and key= go together (client certificate)",
                        "key" if "cert" in out else "cert")
    return out


def _split_url(url):
    if not isinstance(url, str) or "://" not in url:
        raise SpecError(f"{url!r}: expected udp://HOST:PORT, tcp://HOST:PORT or "
                        "tls://HOST:PORT", "url")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise SpecError(f"{url}: {exc}", "url") from None
    kind = parts.scheme.lower()
    if kind not in DEFAULT_PORTS:
        raise SpecError(f"{url}: scheme {parts.scheme!r}: expected udp, tcp or tls", "url")
    if parts.username is not None or parts.password is not None:
        raise SpecError(f"{url}: host: user names and passwords are not supported", "url")
    if parts.path not in ("", "/") or parts.fragment:
        raise SpecError(f"{url}: path {parts.path + parts.fragment!r}: an output URL has "
                        "no path; options go after ?", "url")
    host = parts.hostname
    if parts.netloc.count(":") > 1 and "[" not in parts.netloc:
        raise SpecError(f"{url}: host: write an IPv6 address in brackets, e.g. [::1]:514",
                        "url")
    if not host:
        raise SpecError(f"{url}: host: missing", "url")
    try:
        port = parts.port
    except ValueError:
        raise SpecError(f"{url}: port: not a number within 1-65535", "url") from None
    if port == 0:
        raise SpecError(f"{url}: port: not a number within 1-65535", "url")
    options = {}
    if parts.query:
        try:
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                           strict_parsing=True)
        except ValueError:
            raise SpecError(f"{url}: query {parts.query!r}: expected key=value&key=value",
                            "url") from None
        for key, value in pairs:
            if key in options:
                raise SpecError(f"{url}: option {key!r} given twice", "url")
            options[key] = value
    return kind, host, port or DEFAULT_PORTS[kind], options


def _default_name(kind, host, port, fmt, framing):
    name = f"{kind}-{host}-{port}-{fmt}" + ("-lf" if framing == "lf" else "")
    return name.replace(":", "_")


def parse_output_url(url, extra_options=None):
    """``udp|tcp|tls://host[:port][?options]`` -> OutputSpec (SpecError on any problem).

    ``extra_options`` (from a config table) add options; one given both in the
    URL and in the table is an error.
    """
    kind, host, port, options = _split_url(url)
    for key, value in (extra_options or {}).items():
        if key in options:
            raise SpecError(f"{url}: option {key!r} is given in the URL and as a key", key)
        options[key] = value
    try:
        fields = _options(kind, options, url)
    except SpecError as exc:
        if extra_options is None or exc.part not in extra_options:
            exc.part = "url"
        raise
    fmt = fields.get("format", DEFAULT_FORMAT)
    fields.setdefault("name", _default_name(kind, host, port, fmt,
                                            fields.get("framing", "octet")))
    return OutputSpec(kind=kind, source=url, host=host, port=port, **fields)


def jsonl_spec(path, name=None):
    """``--jsonl PATH|-``: alerts as JSON lines appended to PATH, or stdout."""
    if not isinstance(path, str) or not path:
        raise SpecError(f"{path!r}: expected a file path or - for stdout", "jsonl")
    return OutputSpec(kind="jsonl", name=name or ("jsonl-stdout" if path == "-" else
                                                  "jsonl-" + os.path.basename(path)),
                      source=path, path=path, format="json")


def spec_from_table(table):
    """One ``[[output]]`` table -> OutputSpec. Keys: ``url`` or ``jsonl``, plus options."""
    if not isinstance(table, dict):
        raise SpecError("expected a table with `url` or `jsonl`", "url")
    table = dict(table)
    if ("url" in table) == ("jsonl" in table):
        raise SpecError("give exactly one of `url` (udp/tcp/tls) or `jsonl` (a path)", "url")
    if "jsonl" in table:
        name = table.pop("name", None)
        path = table.pop("jsonl")
        if table:
            key = sorted(table)[0]
            raise SpecError(f"unknown key {key!r} for a jsonl output (known: jsonl, name)",
                            key)
        if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
            raise SpecError(f"name={name!r}: 1-100 of A-Z a-z 0-9 _ . : -", "name")
        return jsonl_spec(path, name)
    url = table.pop("url")
    if not isinstance(url, str):
        raise SpecError(f"{url!r}: expected a string", "url")
    return parse_output_url(url, table)
