"""Checks on the paths a command will write, made before any input is read.

``check_output_paths(outputs, inputs)`` refuses (``UsageError``, exit status 2)
an output whose directory is missing or not writable, an output that is a
directory, an output that is also an input (a capture file, the config file,
what standard input is redirected from) and two outputs that are one file;
files are compared by device and inode when they exist (so through symlinks
and hard links), else by their resolved path. Character devices such as
``/dev/null`` and ``/dev/full`` are never a collision. A write that fails
later (a full disk) is reported where it happens.
"""
import os
import stat


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2); message shown as is."""


def _identity(path):
    """(kind, key) naming the file ``path`` is or would be; None for devices."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    if not stat.S_ISREG(st.st_mode):
        return None
    return ("inode", (st.st_dev, st.st_ino))


def _stdin_identity():
    try:
        st = os.fstat(0)
    except OSError:
        return None
    return ("inode", (st.st_dev, st.st_ino)) if stat.S_ISREG(st.st_mode) else None


def _writable_problem(path):
    if os.path.isdir(path):
        return "is a directory"
    if os.path.lexists(path):
        return None if os.access(path, os.W_OK) else "is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"cannot be created: directory {parent} does not exist"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: directory {parent} is not writable"
    return None


def check_output_paths(outputs, inputs):
    """``outputs``: [(option, path)] to be written ("-" = stdout, skipped);
    ``inputs``: [(what, path)] to be read ("-" = standard input)."""
    seen_inputs = []
    for what, path in inputs:
        ident = _stdin_identity() if path == "-" else _identity(path)
        if ident is not None:
            seen_inputs.append((what, path, ident))
    seen_outputs = []
    for option, path in outputs:
        if path == "-":
            continue
        problem = _writable_problem(path)
        if problem:
            raise UsageError(f"{option} {path}: {problem}")
        ident = _identity(path)
        if ident is None:
            continue
        for what, other, other_ident in seen_inputs:
            if ident == other_ident:
                shown = "standard input" if other == "-" else other
                raise UsageError(f"{option} {path} is also {what} {shown}: refusing to "
                                 "write over it")
        for other_option, other, other_ident in seen_outputs:
            if ident == other_ident:
                raise UsageError(f"{option} {path} and {other_option} {other} are the "
                                 "same file: give each output its own")
        seen_outputs.append((option, path, ident))
