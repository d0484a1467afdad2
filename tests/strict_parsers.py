"""Strict parsers of the wire formats, written from the specs for the tests (not from
sensor/output): RFC 5424 (header, SD with escapes, BOM), RFC 3164, CEF (header and
extension unescaping, key syntax) and LEEF 2.0. Anything a spec forbids raises
``ParseError``; nothing is guessed or repaired.
"""
import re


class ParseError(ValueError):
    pass


PRINTUSASCII = re.compile(r"[\x21-\x7e]+")
TIMESTAMP_5424 = re.compile(
    r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)")
BOM = b"\xef\xbb\xbf"


def _decode(data):
    if b"\n" in data or b"\r" in data:
        raise ParseError("raw CR or LF in a message")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(f"not UTF-8: {exc}") from None


def _pri(text):
    m = re.match(r"<(0|[1-9]\d{0,2})>", text)
    if not m or int(m.group(1)) > 191:
        raise ParseError(f"bad PRI in {text[:8]!r}")
    return int(m.group(1)), text[m.end():]


def _header_field(value, max_len, what):
    if value != "-" and (not PRINTUSASCII.fullmatch(value) or len(value) > max_len):
        raise ParseError(f"bad {what}: {value!r}")
    return value


def _sd_name(name, what="SD-NAME"):
    if not (1 <= len(name) <= 32) or any(c in '= ]"' or not 33 <= ord(c) <= 126 for c in name):
        raise ParseError(f"bad {what}: {name!r}")
    return name


def parse_rfc5424(data):
    """bytes -> dict(pri, version, timestamp, hostname, app_name, procid, msgid,
    sd=[(sd_id, [(name, value), ...]), ...] or None, msg (str or None), bom)."""
    text = _decode(data)
    pri, rest = _pri(text)
    parts = rest.split(" ", 6)
    if len(parts) < 7:
        raise ParseError("header has fewer than 7 fields")
    version, ts, host, app, procid, msgid, rest = parts
    if version != "1":
        raise ParseError(f"VERSION {version!r}")
    if ts != "-" and not TIMESTAMP_5424.fullmatch(ts):
        raise ParseError(f"TIMESTAMP {ts!r}")
    out = dict(pri=pri, version=1, timestamp=ts, hostname=_header_field(host, 255, "HOSTNAME"),
               app_name=_header_field(app, 48, "APP-NAME"),
               procid=_header_field(procid, 128, "PROCID"),
               msgid=_header_field(msgid, 32, "MSGID"))
    if rest.startswith("-"):
        out["sd"], i = None, 1
    elif rest.startswith("["):
        out["sd"], i = [], 0
        while i < len(rest) and rest[i] == "[":
            element, i = _sd_element(rest, i)
            if any(e[0] == element[0] for e in out["sd"]):
                raise ParseError(f"SD-ID {element[0]!r} twice")
            out["sd"].append(element)
    else:
        raise ParseError("no STRUCTURED-DATA")
    tail = rest[i:]
    if tail == "":
        out["msg"], out["bom"] = None, False
    elif tail.startswith(" "):
        msg = tail[1:]
        out["bom"] = msg.startswith("\ufeff")
        out["msg"] = msg[1:] if out["bom"] else msg
        if not out["bom"] and not out["msg"].isascii():
            raise ParseError("non-ASCII MSG without the BOM (RFC 5424 6.4: MSG-UTF8 starts with it)")
    else:
        raise ParseError(f"junk after STRUCTURED-DATA: {tail[:20]!r}")
    return out


def _sd_element(s, i):
    assert s[i] == "["
    j = i + 1
    while j < len(s) and s[j] not in " ]":
        j += 1
    sd_id = _sd_name(s[i + 1:j], "SD-ID")
    params = []
    while True:
        if j >= len(s):
            raise ParseError("unterminated SD-ELEMENT")
        if s[j] == "]":
            return (sd_id, params), j + 1
        if s[j] != " ":
            raise ParseError(f"expected SP or ] at {j}")
        eq = s.find("=", j + 1)
        if eq < 0:
            raise ParseError("SD-PARAM without =")
        name = _sd_name(s[j + 1:eq], "PARAM-NAME")
        if eq + 1 >= len(s) or s[eq + 1] != '"':
            raise ParseError(f"PARAM-VALUE of {name} not quoted")
        k, value = eq + 2, []
        while True:
            if k >= len(s):
                raise ParseError(f"unterminated PARAM-VALUE of {name}")
            c = s[k]
            if c == "\\":
                if k + 1 >= len(s) or s[k + 1] not in '"\\]':
                    raise ParseError(f"stray backslash in PARAM-VALUE of {name}")
                value.append(s[k + 1])
                k += 2
            elif c == '"':
                break
            elif c == "]":
                raise ParseError(f"unescaped ] in PARAM-VALUE of {name}")
            else:
                value.append(c)
                k += 1
        params.append((name, "".join(value)))
        j = k + 1


MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TIMESTAMP_3164 = re.compile(r"(%s) ( [1-9]|[12]\d|3[01]) ([01]\d|2[0-3]):[0-5]\d:[0-5]\d"
                            % "|".join(MONTHS))


def parse_3164_header(data):
    """bytes -> (pri, timestamp, hostname, content) of '<PRI>Mmm dd hh:mm:ss HOST content'."""
    text = _decode(data)
    pri, rest = _pri(text)
    m = TIMESTAMP_3164.match(rest)
    if not m or rest[m.end():m.end() + 1] != " ":
        raise ParseError(f"bad RFC 3164 TIMESTAMP in {rest[:20]!r}")
    host, sep, content = rest[m.end() + 1:].partition(" ")
    if not sep or not PRINTUSASCII.fullmatch(host) or len(host) > 255:
        raise ParseError(f"bad HOSTNAME {host!r}")
    return pri, m.group(0), host, content


def parse_rfc3164(data):
    """-> dict(pri, timestamp, hostname, tag, pairs=[(name, value)]) for 'TAG: k="v" ...'."""
    pri, ts, host, content = parse_3164_header(data)
    m = re.match(r"([A-Za-z0-9_.-]{1,32})(\[[A-Za-z0-9_.-]{1,128}\])?: ", content)
    if not m:
        raise ParseError(f"bad TAG in {content[:40]!r}")
    return dict(pri=pri, timestamp=ts, hostname=host, tag=m.group(0)[:-2],
                pairs=parse_quoted_pairs(content[m.end():]))


def parse_quoted_pairs(s):
    """'k="v" k2="v2"' with \\" and \\\\ escapes -> [(k, v)]; anything else is an error."""
    pairs, i = [], 0
    while i < len(s):
        m = re.match(r'([A-Za-z0-9_]+)="', s[i:])
        if not m:
            raise ParseError(f"expected name=\" at {i}: {s[i:i + 20]!r}")
        k, value = i + m.end(), []
        while True:
            if k >= len(s):
                raise ParseError("unterminated value")
            c = s[k]
            if c == "\\":
                if k + 1 >= len(s) or s[k + 1] not in '"\\':
                    raise ParseError("stray backslash")
                value.append(s[k + 1])
                k += 2
            elif c == '"':
                break
            else:
                value.append(c)
                k += 1
        pairs.append((m.group(1), "".join(value)))
        i = k + 1
        if i < len(s):
            if s[i] != " ":
                raise ParseError(f"expected SP after value at {i}")
            i += 1
            if i == len(s):
                raise ParseError("trailing SP")
    return pairs


def _split_unescaped_pipes(s, count):
    """First `count` |-separated CEF header fields (\\| and \\\\ unescaped) + the rest."""
    fields, cur, i = [], [], 0
    while len(fields) < count:
        if i >= len(s):
            raise ParseError("CEF header has too few fields")
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s) or s[i + 1] not in "|\\":
                raise ParseError("stray backslash in CEF header")
            cur.append(s[i + 1])
            i += 2
        elif c == "|":
            fields.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    return fields, s[i:]


def parse_cef(content):
    """'CEF:0|...' -> dict(version, vendor, product, device_version, signature_id, name,
    severity, ext=[(key, value)]) with every escape undone; errors on anything off-spec."""
    if not content.startswith("CEF:0|"):
        raise ParseError("not CEF:0")
    header, ext = _split_unescaped_pipes(content[len("CEF:0|"):], 6)
    vendor, product, version, sig, name, severity = header
    if not re.fullmatch("[0-9]{1,2}", severity) or not 0 <= int(severity) <= 10:
        raise ParseError(f"CEF severity {severity!r}")
    return dict(version=0, vendor=vendor, product=product, device_version=version,
                signature_id=sig, name=name, severity=int(severity), ext=parse_cef_extension(ext))


def parse_cef_extension(ext):
    # positions of unescaped '=' (escapes are \\, \=, \n, \r; nothing else)
    eqs, i = [], 0
    while i < len(ext):
        c = ext[i]
        if c == "\\":
            if i + 1 >= len(ext) or ext[i + 1] not in "\\=nr":
                raise ParseError(f"stray backslash in CEF extension at {i}")
            i += 2
            continue
        if c == "=":
            eqs.append(i)
        i += 1
    keys = []
    for eq in eqs:
        start = eq
        while start > 0 and ext[start - 1].isascii() and ext[start - 1].isalnum():
            start -= 1
        if start == eq or (start > 0 and ext[start - 1] != " "):
            raise ParseError(f"unescaped = not after a key at {eq}: {ext[max(0, eq - 20):eq + 1]!r}")
        keys.append((start, eq))
    if ext and (not keys or keys[0][0] != 0):
        raise ParseError("CEF extension does not start with a key")
    pairs = []
    for n, (start, eq) in enumerate(keys):
        end = keys[n + 1][0] - 1 if n + 1 < len(keys) else len(ext)
        raw = ext[eq + 1:end]
        pairs.append((ext[start:eq], _cef_unescape(raw)))
    return pairs


def _cef_unescape(raw):
    return re.sub(r"\\(.)", lambda m: {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}[m.group(1)], raw)


def parse_leef(content):
    """'LEEF:2.0|v|p|ver|id|delim|attrs' -> dict(vendor, product, device_version, event_id,
    delimiter, attrs=[(key, value)]). Keys [A-Za-z0-9_]+, split at the first '='."""
    parts = content.split("|", 6)
    if len(parts) != 7 or parts[0] != "LEEF:2.0":
        raise ParseError("not LEEF:2.0 with 5 header fields and a delimiter")
    _, vendor, product, version, event_id, delim, attrs = parts
    m = re.fullmatch(r"(?:0x|x)([0-9A-Fa-f]{2,4})", delim)
    delimiter = chr(int(m.group(1), 16)) if m else delim
    if len(delimiter) != 1:
        raise ParseError(f"bad LEEF delimiter {delim!r}")
    out, seen = [], set()
    for attr in attrs.split(delimiter) if attrs else []:
        key, eq, value = attr.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise ParseError(f"bad LEEF attribute {attr[:40]!r}")
        if key in seen:
            raise ParseError(f"LEEF attribute {key} twice")
        seen.add(key)
        out.append((key, value))
    return dict(vendor=vendor, product=product, device_version=version, event_id=event_id,
                delimiter=delimiter, attrs=out)
