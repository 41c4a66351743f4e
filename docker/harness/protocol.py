"""Wire protocol helpers shared by the harness server and its engines.

Standard library only. The contract itself is documented in README.md next to
this file; keep the two in step.
"""

import json
import os
import socket
import time

HARNESS_VERSION = "0.1.0"
PROTOCOL_VERSION = 1

# Longest request line the server accepts (a full llem config dump is a few KiB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024

# Events after which the server closes the connection.
TERMINAL_EVENTS = frozenset({"result", "error", "pong", "unloaded", "bye"})

CONFIGURATION = "configuration"
INFRASTRUCTURE = "infrastructure"


def now_ns():
    """CLOCK_MONOTONIC in nanoseconds (the clock the Rust worker also reads)."""
    return time.monotonic_ns()


class HarnessError(Exception):
    """An error reported to the client as an `error` event."""

    error_class = INFRASTRUCTURE

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class ConfigError(HarnessError):
    """The config itself is bad: retrying the same config elsewhere will fail too."""

    error_class = CONFIGURATION


class InfraError(HarnessError):
    """Anything that is not the config's fault (crash, missing package, ...)."""

    error_class = INFRASTRUCTURE


class ClientGone(BaseException):
    """The client connection broke while the server was writing events.

    A BaseException so that engine code catching Exception cannot swallow it.
    """


def encode_event(event, fields=None, t_mono_ns=None):
    """One event as a JSON line (bytes). `event` and `t_mono_ns` come first."""
    obj = {"event": event}
    if fields:
        for key, value in fields.items():
            if key not in ("event", "t_mono_ns"):
                obj[key] = value
    obj["t_mono_ns"] = now_ns() if t_mono_ns is None else int(t_mono_ns)
    # allow_nan=False: NaN/Infinity are not JSON; callers must send null instead.
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


class Emitter:
    """Writes event lines to one client connection, flushing each line."""

    def __init__(self, conn, run_id=None):
        self.conn = conn
        self.run_id = run_id
        self.sent = 0
        self.broken = False

    def emit(self, event, fields=None, t_mono_ns=None):
        if self.run_id is not None:
            merged = {"run_id": self.run_id}
            if fields:
                merged.update(fields)
            fields = merged
        line = encode_event(event, fields, t_mono_ns)
        if self.broken:
            raise ClientGone("client connection already broken")
        try:
            self.conn.sendall(line)
        except OSError as exc:  # BrokenPipeError, ConnectionResetError, timeout
            self.broken = True
            raise ClientGone(str(exc)) from exc
        self.sent += 1


def read_line(conn, limit=MAX_REQUEST_BYTES, timeout=None):
    """Read bytes up to the first newline (or EOF). Returns bytes without newline.

    Raises ValueError when the line is longer than `limit`, socket.timeout when
    nothing completes within `timeout` seconds.
    """
    conn.settimeout(timeout)
    chunks = []
    total = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        nl = chunk.find(b"\n")
        if nl >= 0:
            chunks.append(chunk[:nl])
            total += nl
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ValueError("request line longer than %d bytes" % limit)
    if total > limit:
        raise ValueError("request line longer than %d bytes" % limit)
    return b"".join(chunks)


def socket_is_live(path, timeout=1.0):
    """True if something accepts connections on the Unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass
