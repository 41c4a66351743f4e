#!/usr/bin/env python3
"""Resident experiment harness server (one per backend and GPU slot).

    python3 server.py --socket PATH [--slot N] [--idle-exit-seconds S]
                      [--prefill-window-seconds S]
                      [--parent-pid PID | --no-parent-watch] [--log-file PATH]
                      [--max-thermal-floor-seconds S]

Serves JSON-line requests over a Unix stream socket, one connection at a time;
see README.md for the protocol. stdout/stderr are a human-readable log only.
Standard library only.
"""

import os

INITIAL_PPID = os.getppid()  # before anything slow, so a parent dying early is noticed

import argparse  # noqa: E402
import json
import platform
import signal
import socket
import stat
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # keep the directory the worker wrote us into clean

import engines  # noqa: E402
from engines import hf_logic  # noqa: E402
from protocol import (  # noqa: E402
    HARNESS_VERSION,
    INFRASTRUCTURE,
    PROTOCOL_VERSION,
    ClientGone,
    Emitter,
    read_line,
    remove_quietly,
    socket_is_live,
)
from runner import DEFAULT_PREFILL_WINDOW_S, MAX_PREFILL_WINDOW_S, EngineState, execute_run  # noqa: E402,E501

REQUEST_READ_TIMEOUT_S = 10.0  # a connection must deliver its request line within this
SEND_TIMEOUT_S = 120.0  # a client that stops reading for this long is dropped
ACCEPT_POLL_S = 0.5
PARENT_POLL_S = 1.0

EXIT_OK = 0
EXIT_USAGE = 2


class Terminate(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT/SIGHUP (also used for parent death)."""


class Shutdown(BaseException):
    """A `shutdown` request was answered."""


def log(message):
    print("[harness %s] %s" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message), flush=True)


class Server:
    def __init__(self, args):
        self.socket_path = os.path.abspath(args.socket)
        self.slot = args.slot
        self.idle_exit_s = args.idle_exit_seconds
        self.max_floor = args.max_thermal_floor_seconds
        self.prefill_window_s = args.prefill_window_seconds
        self.parent_watch = not args.no_parent_watch
        # Recorded as early as possible; --parent-pid closes the remaining race (a parent
        # that dies before this line runs).
        self.parent_pid = args.parent_pid if args.parent_pid is not None else INITIAL_PPID
        self.state = EngineState()
        self.listener = None
        self.socket_ino = None
        self.started_ns = time.monotonic_ns()
        self.last_activity = time.monotonic()
        self.exit_reason = None
        self.stopping = False

    # --- signals and watchdogs ----------------------------------------------------
    def _on_signal(self, signum, _frame):
        if self.stopping:
            return
        self.stopping = True
        if self.exit_reason is None:
            self.exit_reason = "signal %s" % signal.Signals(signum).name
        raise Terminate()

    def _install_signals(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _ignore_signals(self):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError):
                pass

    def _start_parent_watch(self):
        initial = self.parent_pid
        if not self.parent_watch or os.getpid() == 1 or initial <= 1:
            # PID 1 (container main process) or already adopted by init: nothing to watch.
            log("parent watch off (pid %d, ppid %d)" % (os.getpid(), initial))
            return

        def watch():
            while True:
                time.sleep(PARENT_POLL_S)
                if os.getppid() != initial:
                    self.exit_reason = "parent process %d died" % initial
                    log(self.exit_reason + "; exiting")
                    try:
                        os.kill(os.getpid(), signal.SIGTERM)
                    except OSError:
                        os._exit(EXIT_OK)
                    time.sleep(10.0)  # main thread did not react: leave hard
                    remove_quietly(self.socket_path)
                    os._exit(EXIT_OK)

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()
        log("watching parent pid %d" % initial)

    # --- socket -------------------------------------------------------------------
    def _prepare_path(self):
        path = self.socket_path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return True
        if not stat.S_ISSOCK(st.st_mode):
            log("refusing to start: %s exists and is not a socket" % path)
            return False
        if socket_is_live(path):
            log("refusing to start: another server is listening on %s" % path)
            return False
        log("removing stale socket %s" % path)
        remove_quietly(path)
        return True

    def _bind(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # socket file mode 0600: only our user may talk to us
        try:
            s.bind(self.socket_path)
        finally:
            os.umask(old_umask)
        s.listen(16)
        s.settimeout(ACCEPT_POLL_S)
        self.listener = s
        self.socket_ino = os.lstat(self.socket_path).st_ino

    def _cleanup(self):
        if self.listener is not None:
            try:
                self.listener.close()
            except OSError:
                pass
        # Remove the socket only if it is still ours (not replaced by a newer server).
        try:
            if self.socket_ino is not None and os.lstat(self.socket_path).st_ino == self.socket_ino:
                os.unlink(self.socket_path)
        except OSError:
            pass
        self.state.unload()

    # --- requests -----------------------------------------------------------------
    def _pong_fields(self):
        return {
            "pid": os.getpid(),
            "engines": engines.available_engines(),
            # The host's remote-code policy as this server sees it (its environment):
            # the worker checks it is the one it was started with.
            "trust_remote_code": hf_logic.trust_remote_code_enabled(),
            "loaded_model_key": self.state.model_key,
            "loaded_engine": self.state.engine_name,
            "loaded_model": self.state.model,
            "python": platform.python_version(),
            "harness": HARNESS_VERSION,
            "protocol": PROTOCOL_VERSION,
            "slot": self.slot,
            "runs": self.state.runs,
        }

    def _bad_request(self, em, message):
        log("bad request: " + message)
        em.emit("error", {"class": INFRASTRUCTURE, "message": "bad request: " + message})

    def handle(self, conn):
        em = Emitter(conn)
        try:
            try:
                raw = read_line(conn, timeout=REQUEST_READ_TIMEOUT_S)
            except socket.timeout:
                self._bad_request(em, "no complete request line within %.0f s; send one JSON "
                                      "object terminated by a newline" % REQUEST_READ_TIMEOUT_S)
                return
            except ValueError as exc:
                self._bad_request(em, str(exc))
                return
            conn.settimeout(SEND_TIMEOUT_S)
            if not raw.strip():
                self._bad_request(em, "empty request line")
                return
            try:
                req = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                self._bad_request(em, "request is not valid JSON (%s)" % exc)
                return
            if not isinstance(req, dict):
                self._bad_request(em, "request must be a JSON object")
                return
            kind = req.get("type")
            if kind == "ping":
                em.emit("pong", self._pong_fields())
            elif kind == "run":
                run_id = req.get("run_id")
                if not isinstance(run_id, str) or not run_id:
                    self._bad_request(em, "run request needs a non-empty string `run_id`")
                    return
                log("run %s: start" % run_id)
                run_em = Emitter(conn, run_id=run_id)
                try:
                    execute_run(self.state, req, run_em, self.max_floor,
                                self.prefill_window_s)
                except Terminate:
                    try:
                        run_em.emit("error", {
                            "class": INFRASTRUCTURE,
                            "message": "harness server stopped during the run (%s); the run "
                                       "was abandoned, retry it" % (self.exit_reason or "signal"),
                        })
                    except BaseException:
                        pass
                    raise
                log("run %s: done (%d events)" % (run_id, run_em.sent))
            elif kind == "unload":
                old = self.state.unload()
                if old:
                    log("unloaded model %s on request" % old[:12])
                em.emit("unloaded", {"had_model": old is not None, "model_key": old})
            elif kind == "shutdown":
                em.emit("bye", {"pid": os.getpid()})
                self.exit_reason = "shutdown request"
                raise Shutdown()
            else:
                self._bad_request(em, "unknown request type %r (expected ping, run, unload, "
                                      "shutdown)" % (kind,))
        except ClientGone as exc:
            log("client went away (%s); request abandoned" % exc)
        except (Terminate, Shutdown):
            raise
        except Exception:
            # Last resort: a bug in the server itself must not kill it.
            log("internal error:\n" + traceback.format_exc())
            try:
                em.emit("error", {"class": INFRASTRUCTURE,
                                  "message": "internal harness error (see harness log)"})
            except BaseException:
                pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    # --- main loop ----------------------------------------------------------------
    def serve(self):
        self._install_signals()
        try:
            if (self.parent_watch and os.getpid() != 1 and self.parent_pid > 1
                    and os.getppid() != self.parent_pid):
                self.exit_reason = "parent process %d died before the server started" % (
                    self.parent_pid)
                return EXIT_OK
            # Block the stop signals while the socket is created, so that a signal can
            # not land between bind() and noting the socket's inode (cleanup would then
            # leave the file behind); a pending signal is delivered on unblock.
            stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            try:
                if not self._prepare_path():
                    return EXIT_USAGE
                try:
                    self._bind()
                except OSError as exc:
                    log("cannot listen on %s: %s" % (self.socket_path, exc))
                    return EXIT_USAGE
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
            self._start_parent_watch()
            log("harness %s (protocol %d) pid %d slot %s listening on %s; python %s"
                % (HARNESS_VERSION, PROTOCOL_VERSION, os.getpid(), self.slot,
                   self.socket_path, platform.python_version()))
            # Probing transformers imports torch (seconds): do it off the main thread so
            # the accept loop, signals and the parent watch are live at once.
            engines.probe_in_background(lambda names: log("engines %s" % ",".join(names)))
            while True:
                try:
                    conn, _ = self.listener.accept()
                except socket.timeout:
                    if self.idle_exit_s > 0 and time.monotonic() - self.last_activity > self.idle_exit_s:
                        self.exit_reason = "idle for %.0f s" % self.idle_exit_s
                        break
                    continue
                self.last_activity = time.monotonic()
                try:
                    self.handle(conn)
                finally:
                    self.last_activity = time.monotonic()
        except (Terminate, Shutdown):
            pass
        finally:
            self.stopping = True
            self._ignore_signals()
            self._cleanup()
            log("exiting: %s" % (self.exit_reason or "done"))
        return EXIT_OK


def parse_args(argv):
    p = argparse.ArgumentParser(description="lem fleet experiment harness server")
    p.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p.add_argument("--slot", type=int, default=None, help="GPU slot (for logs and ping)")
    p.add_argument("--idle-exit-seconds", type=float, default=0.0,
                   help="exit after this long without a request (0 = never)")
    p.add_argument("--max-thermal-floor-seconds", type=float, default=None,
                   help="TEST ONLY: cap offline.warmup.thermal_floor_seconds (llem requires "
                        ">= 30 s); the cap is reported in warmup_done/thermal_floor events")
    p.add_argument("--prefill-window-seconds", type=float, default=DEFAULT_PREFILL_WINDOW_S,
                   help="length of the prefill-only differential window after each run's "
                        "measured window (default %(default)s; 0 = off); a run request's "
                        "prefill_window_seconds overrides it")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="pid of the spawning process (default: the parent pid at start); the "
                        "server exits once its parent pid differs from this")
    p.add_argument("--no-parent-watch", action="store_true",
                   help="do not exit when the parent process dies")
    p.add_argument("--log-file", default=None,
                   help="append the log (stdout and stderr) to this file instead of writing "
                        "it to stdout/stderr (the docker runtime keeps it in the slot's "
                        "directory)")
    return p.parse_args(argv)


def redirect_log(path):
    """Points fds 1 and 2 at `path` (appending), so engine libraries' own output lands
    there too. Returns an error message, or None."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        return "cannot open --log-file %s: %s" % (path, exc)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return None


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.log_file:
        problem = redirect_log(args.log_file)
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_USAGE
    if not 0 <= args.prefill_window_seconds <= MAX_PREFILL_WINDOW_S:
        print("--prefill-window-seconds must be in [0, %g]" % MAX_PREFILL_WINDOW_S,
              file=sys.stderr)
        return EXIT_USAGE
    return Server(args).serve()


if __name__ == "__main__":
    sys.exit(main())
