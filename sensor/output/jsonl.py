"""JSON lines sink: one alert per line, flushed as it is written."""
import json
import sys


class JsonlSink:
    def __init__(self, path):
        self.path = path
        if path == "-":
            self._fh = sys.stdout
        else:
            try:
                self._fh = open(path, "a", encoding="utf-8")
            except OSError as exc:
                raise OSError(f"{path}: cannot open for writing: {exc.strerror or exc}") from None
        self.written = 0

    def write(self, alert):
        self._fh.write(json.dumps(alert.to_dict(), separators=(",", ":")) + "\n")
        self._fh.flush()
        self.written += 1

    def close(self):
        if self._fh is not sys.stdout:
            self._fh.close()
