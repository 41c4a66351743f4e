#!/usr/bin/env python3
"""Harness client: forwards one JSON request line from stdin to the harness server
and copies the server's JSON-line events to stdout.

    python3 client.py --socket PATH [--connect-wait-seconds S]

Exit status:
  0  the final event was `result`, `pong`, `unloaded` or `bye`
  2  usage error (no request line on stdin, bad arguments)
  3  the final event was `error`
  4  the server is unreachable (no socket, nobody listening) within the wait
  5  the connection ended without a final event (server crashed or was stopped)
Diagnostics go to stderr. Standard library only, no imports from this directory.

The docker runtime starts this once per run (`docker exec`), so it imports as little
as it can: no argparse, the C cores of socket and signal only, and `json` only for an event line whose name is not in its
usual place (the server always writes `{"event":"NAME",...` first).
"""

import sys

try:
    # The C module behind `socket`: importing `socket` itself costs about 10 ms
    # (enum, selectors), half of this client's start, and nothing of it is needed.
    import _socket as socket
except ImportError:  # pragma: no cover (an interpreter without it)
    import socket

SUCCESS_EVENTS = ("result", "pong", "unloaded", "bye")
EXIT_OK, EXIT_USAGE, EXIT_ERROR_EVENT, EXIT_UNREACHABLE, EXIT_NO_FINAL = 0, 2, 3, 4, 5
USAGE = "usage: client.py --socket PATH [--connect-wait-seconds S]"
EVENT_PREFIX = b'{"event":"'


def err(message):
    sys.stderr.write("harness client: %s\n" % message)
    sys.stderr.flush()


def parse_args(argv):
    """(socket path, connect wait seconds), or an error message."""
    opts = {"--socket": None, "--connect-wait-seconds": "0"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            return None, USAGE
        name, eq, value = arg.partition("=")
        if name not in opts:
            return None, "unknown argument %r\n%s" % (arg, USAGE)
        if not eq:
            i += 1
            if i == len(argv):
                return None, "%s needs a value\n%s" % (name, USAGE)
            value = argv[i]
        opts[name] = value
        i += 1
    if opts["--socket"] is None:
        return None, "--socket is required\n%s" % USAGE
    try:
        wait = float(opts["--connect-wait-seconds"])
    except ValueError:
        return None, "--connect-wait-seconds must be a number\n%s" % USAGE
    return (opts["--socket"], wait), None


def event_name(line):
    """The `event` of an event line, or None if it is not a JSON object with one."""
    if line.startswith(EVENT_PREFIX):
        end = line.find(b'"', len(EVENT_PREFIX))
        name = line[len(EVENT_PREFIX):end]
        if end > 0 and b"\\" not in name:
            return name.decode("utf-8", "replace")
    import json  # noqa: E402  (rare: only for lines written some other way)
    try:
        event = json.loads(line.decode("utf-8")).get("event")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return event if isinstance(event, str) else None


def connect(path, wait_s):
    import time  # noqa: E402

    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as exc:
            s.close()
            if time.monotonic() >= deadline:
                err("cannot reach harness server at %s: %s" % (path, exc))
                return None
            time.sleep(0.1)


def main(argv=None):
    parsed, problem = parse_args(sys.argv[1:] if argv is None else argv)
    if problem is not None:
        if problem == USAGE:
            sys.stdout.write(USAGE + "\n")
            return EXIT_OK
        err(problem)
        return EXIT_USAGE
    path, wait_s = parsed
    try:
        # `_signal`, not `signal`, which would import enum (5 ms).
        import _signal  # noqa: E402

        _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)  # stdout closed: just die
    except (ImportError, AttributeError, ValueError):
        pass

    line = sys.stdin.buffer.readline()
    if not line.strip():
        err("no request line on stdin")
        return EXIT_USAGE
    # The line is forwarded as is, even if it is not valid JSON: the server answers
    # such a request with an `error` event, so the caller sees one error path.
    if not line.endswith(b"\n"):
        line += b"\n"

    sock = connect(path, wait_s)
    if sock is None:
        return EXIT_UNREACHABLE
    out = sys.stdout.buffer
    final = None
    try:
        sock.sendall(line)
        buf = b""
        while final is None:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf and final is None:
                ev_line, buf = buf.split(b"\n", 1)
                if not ev_line.strip():
                    continue
                out.write(ev_line + b"\n")
                out.flush()
                event = event_name(ev_line)
                if event in SUCCESS_EVENTS or event == "error":
                    final = event
    except OSError as exc:
        err("connection to harness server failed: %s" % exc)
    finally:
        sock.close()
    if final is None:
        err("connection closed without a final event (server crashed or stopped?)")
        return EXIT_NO_FINAL
    return EXIT_ERROR_EVENT if final == "error" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
