#!/usr/bin/env python3
"""Harness client: forwards one JSON request line from stdin to the harness server
and copies the server's JSON-line events to stdout.

    python3 client.py --socket PATH [--connect-wait-seconds S]

Exit status:
  0  the final event was `result`, `pong`, `unloaded` or `bye`
  2  usage error (no request line on stdin)
  3  the final event was `error`
  4  the server is unreachable (no socket, nobody listening) within the wait
  5  the connection ended without a final event (server crashed or was stopped)
Diagnostics go to stderr. Standard library only, no imports from this directory.
"""

import argparse
import json
import signal
import socket
import sys
import time

SUCCESS_EVENTS = ("result", "pong", "unloaded", "bye")
EXIT_OK, EXIT_USAGE, EXIT_ERROR_EVENT, EXIT_UNREACHABLE, EXIT_NO_FINAL = 0, 2, 3, 4, 5


def err(message):
    sys.stderr.write("harness client: %s\n" % message)
    sys.stderr.flush()


def connect(path, wait_s):
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
    p = argparse.ArgumentParser(description="lem fleet harness client")
    p.add_argument("--socket", required=True)
    p.add_argument("--connect-wait-seconds", type=float, default=0.0,
                   help="keep retrying the connection this long (default 0: one try)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # stdout closed: just die
    except (AttributeError, ValueError):
        pass

    line = sys.stdin.buffer.readline()
    if not line.strip():
        err("no request line on stdin")
        return EXIT_USAGE
    # The line is forwarded as is, even if it is not valid JSON: the server answers
    # such a request with an `error` event, so the caller sees one error path.
    if not line.endswith(b"\n"):
        line += b"\n"

    sock = connect(args.socket, args.connect_wait_seconds)
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
                try:
                    event = json.loads(ev_line.decode("utf-8")).get("event")
                except (ValueError, UnicodeDecodeError, AttributeError):
                    continue
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
