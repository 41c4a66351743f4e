"""Tests of the experiment harness (server, client, synthetic engine).

Run from the repository root:
    python3 -m unittest discover -s docker/harness/tests -v
Standard library only; real server processes on temporary Unix sockets.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HARNESS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(HARNESS, "server.py")
CLIENT = os.path.join(HARNESS, "client.py")
if HARNESS not in sys.path:
    sys.path.insert(0, HARNESS)
sys.dont_write_bytecode = True

import dataset  # noqa: E402
import runner  # noqa: E402
import stats  # noqa: E402
from engines.synthetic import SyntheticEngine  # noqa: E402
from protocol import ConfigError  # noqa: E402

FLOOR_CAP = 0.05


def start_server(sock, *extra, stdout=subprocess.DEVNULL):
    proc = subprocess.Popen(
        [sys.executable, SERVER, "--socket", sock, *extra],
        stdout=stdout, stderr=subprocess.STDOUT,
    )
    wait_socket(sock, proc)
    return proc


def wait_socket(path, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("server exited early with %s" % proc.returncode)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    raise AssertionError("server socket %s never came up" % path)


def stop_server(sock, proc, timeout=10.0):
    """Ask a server started by start_server to shut down; kill it if it won't."""
    try:
        send(sock, {"type": "shutdown"}, timeout=timeout / 2)
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def send(sock_path, request, timeout=30.0):
    """Send one request (dict or raw bytes); return the list of events."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    data = request if isinstance(request, bytes) else (json.dumps(request) + "\n").encode()
    s.sendall(data)
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.decode().splitlines() if line.strip()]


def config(model="m", n_prompts=6, max_out=8, warmup=None, **params):
    ep = {"batch_size": 2, "load_seconds": 0.2, "input_length": "uniform"}
    ep.update(params)
    return {
        "engine": "synthetic",
        "serving_mode": "offline",
        "task": {"model": model, "dataset": {"n_prompts": n_prompts},
                 "max_input_tokens": 64, "max_output_tokens": max_out, "random_seed": 7},
        "offline": {"warmup": warmup if warmup is not None else {"enabled": False}},
        "synthetic": {"engine_params": ep},
    }


def run_req(cfg, run_id="r", force=False, dataset_path=None):
    return {"type": "run", "run_id": run_id, "config": cfg, "force_cold_start": force,
            "dataset_path": dataset_path}


def pid_gone(pid):
    """True if the process is gone or a zombie (exited, not yet reaped by init)."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class TmpDirMixin:
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="hns")
        self.tmp = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def sock(self, name="s"):
        return os.path.join(self.tmp, name + ".sock")


# --------------------------------------------------------------------------------------
class SharedServerTests(unittest.TestCase):
    """Tests against one long-lived server (as the worker would use it)."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="hns")
        cls.sock = os.path.join(cls._tmp.name, "h.sock")
        cls.proc = start_server(cls.sock, "--slot", "3",
                                "--max-thermal-floor-seconds", str(FLOOR_CAP),
                                "--prefill-window-seconds", "0")

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.sock, cls.proc)
        cls._tmp.cleanup()

    def assert_alive(self):
        ev = send(self.sock, {"type": "ping"})
        self.assertEqual(ev[-1]["event"], "pong")
        return ev[-1]

    def error_of(self, events):
        self.assertEqual(events[-1]["event"], "error", events)
        self.assertIn(events[-1]["class"], ("configuration", "infrastructure"))
        self.assertTrue(events[-1]["message"])
        return events[-1]

    def test_ping(self):
        before = time.monotonic_ns()
        ev = send(self.sock, {"type": "ping"})
        after = time.monotonic_ns()
        self.assertEqual(len(ev), 1)
        pong = ev[0]
        self.assertEqual(pong["event"], "pong")
        self.assertEqual(pong["pid"], self.proc.pid)
        self.assertIn("synthetic", pong["engines"])
        self.assertIn("loaded_model_key", pong)
        self.assertRegex(pong["python"], r"^3\.\d+\.\d+")
        self.assertEqual(pong["slot"], 3)
        # same CLOCK_MONOTONIC as this process
        self.assertTrue(before <= pong["t_mono_ns"] <= after)

    def test_run_event_order_and_totals(self):
        warm = {"enabled": True, "n_prompts": 2, "thermal_floor_seconds": 30}
        ev = send(self.sock, run_req(config("order-model", warmup=warm), "run-order"))
        names = [e["event"] for e in ev]
        self.assertEqual(names[-1], "result", ev[-1])
        for e in ev:
            self.assertEqual(e["run_id"], "run-order")
            self.assertIsInstance(e["t_mono_ns"], int)
        stamps = [e["t_mono_ns"] for e in ev]
        self.assertEqual(stamps, sorted(stamps))

        expected = ["loaded", "warmup_start", "warmup", "warmup", "warmup_done",
                    "thermal_floor", "measure_start"]
        for b in range(3):
            expected += ["phase", "first_token", "first_token", "phase",
                         "request_end", "request_end"]
        expected += ["phase", "measure_end", "result"]
        self.assertEqual(names, expected)

        loaded = ev[0]
        self.assertEqual(loaded["model"], "order-model")
        self.assertEqual(loaded["engine"], "synthetic")
        self.assertRegex(loaded["model_key"], r"^[0-9a-f]{64}$")
        self.assertFalse(loaded["already_loaded"])
        self.assertGreaterEqual(loaded["load_seconds"], 0.15)

        wd = ev[4]
        self.assertTrue(wd["converged"])
        self.assertEqual(wd["iterations_completed"], 2)
        self.assertEqual(len(wd["latencies_ms"]), 2)
        self.assertEqual(wd["thermal_floor_seconds"], FLOOR_CAP)
        self.assertEqual(wd["thermal_floor_requested_seconds"], 30.0)
        self.assertEqual(ev[5]["seconds"], FLOOR_CAP)
        self.assertGreaterEqual(ev[6]["t_mono_ns"] - ev[5]["t_mono_ns"], FLOOR_CAP * 1e9 * 0.9)
        for w in ev[2:4]:
            self.assertGreater(w["latency_ms"], 0)
            self.assertGreater(w["tokens_per_second"], 0)

        phases = [e for e in ev if e["event"] == "phase"]
        self.assertEqual([p["phase"] for p in phases], ["prefill", "decode"] * 3 + ["idle"])
        prefill_inputs = [n for p in phases if p["phase"] == "prefill" for n in p["input_tokens"]]
        ends = [e for e in ev if e["event"] == "request_end"]
        self.assertEqual([e["request"] for e in ends], list(range(6)))
        self.assertEqual([e["batch_index"] for e in ends], [0, 0, 1, 1, 2, 2])
        self.assertEqual([e["input_tokens"] for e in ends], prefill_inputs)
        for e in ends:
            self.assertEqual(e["output_tokens"], 8)
            self.assertEqual(len(e["token_times_ms"]), 8)
            self.assertEqual(e["token_times_ms"][0], 0.0)
            self.assertEqual(e["token_times_ms"], sorted(e["token_times_ms"]))
        for n in prefill_inputs:
            self.assertTrue(16 <= n <= 64)  # uniform in [max_in/4, max_in]

        m = ev[-1]["metrics"]
        self.assertEqual(m["n_prompts"], 6)
        self.assertEqual(m["output_tokens"], 48)
        self.assertEqual(m["input_tokens"], sum(prefill_inputs))
        self.assertEqual(m["batches"], 3)
        self.assertEqual(m["batch_size"], 2)
        self.assertEqual(m["ttft_ms"]["samples"], 6)
        self.assertEqual(m["itl_ms"]["samples"], 6 * 7)
        self.assertEqual(m["itl_measurement_mode"], "true_streaming")
        self.assertEqual(m["output_token_lengths"]["p95"], 8)
        self.assertEqual(m["input_token_lengths"]["max"], max(prefill_inputs))
        # decode step = 2.0 + 0.25 * 2 ms (+- noise, sleep overshoot)
        self.assertTrue(2.0 < m["itl_ms"]["median"] < 5.0, m["itl_ms"])
        span = (ev[-2]["t_mono_ns"] - ev[6]["t_mono_ns"]) / 1e9
        self.assertAlmostEqual(m["inference_seconds"], span, places=6)
        self.assertEqual(ev[-1]["engine"], "synthetic")
        self.assertEqual(ev[-1]["versions"]["harness"], "0.1.0")
        self.assertIn("python", ev[-1]["versions"])
        self.assertIn("engine_version", ev[-1])

    def test_quiet_spans_around_the_windows(self):
        req = run_req(config("quiet-model"), "run-quiet")
        req["quiet_seconds"] = 0.2
        req["prefill_window_seconds"] = 0.05
        ev = send(self.sock, req)
        names = [e["event"] for e in ev]
        self.assertEqual(names[-1], "result", ev[-1])
        at = {n: i for i, n in reversed(list(enumerate(names)))}  # first index of each
        ms, me = names.index("measure_start"), names.index("measure_end")
        ps, pe = names.index("prefill_window_start"), names.index("prefill_window_end")
        # quiet, window, quiet, prefill window, quiet, result
        self.assertEqual(names[ms - 2:ms], ["quiet_start", "quiet_end"])
        self.assertEqual(names[me + 1:me + 3], ["quiet_start", "quiet_end"])
        self.assertEqual(ps, me + 3)
        self.assertEqual(names[pe + 1:pe + 4], ["quiet_start", "quiet_end", "result"])
        self.assertEqual(names.count("quiet_start"), 3)
        self.assertEqual(at["quiet_start"], ms - 2)
        for i, n in enumerate(names):
            if n == "quiet_start":
                span = ev[i + 1]["t_mono_ns"] - ev[i]["t_mono_ns"]
                self.assertEqual(ev[i]["seconds"], 0.2)
                self.assertGreaterEqual(span, 0.2e9)
                # The window edge follows the quiet span at once.
                self.assertLess(ev[i + 2]["t_mono_ns"] - ev[i + 1]["t_mono_ns"], 5e6)
        m = ev[-1]["metrics"]
        self.assertEqual(m["quiet_seconds"], 0.2)
        self.assertEqual(m["per_token_timing"], "always")
        self.assertFalse(m["latency_profiling"])
        # The quiet spans are outside the measured window.
        span = (ev[me]["t_mono_ns"] - ev[ms]["t_mono_ns"]) / 1e9
        self.assertAlmostEqual(m["inference_seconds"], span, places=6)

    def test_bad_quiet_or_timing_requests(self):
        for key, value in [("quiet_seconds", -1), ("quiet_seconds", 11), ("quiet_seconds", True),
                           ("per_token_timing", "sometimes")]:
            req = run_req(config("bad-quiet"), "bad")
            req[key] = value
            ev = send(self.sock, req)
            self.assertEqual(ev[-1]["event"], "error", (key, value, ev[-1]))
            self.assertEqual(ev[-1]["class"], "infrastructure")
            self.assertIn(key, ev[-1]["message"])

    def test_an_engine_that_always_streams_reports_true_streaming(self):
        req = run_req(config("timing-model"), "timing")
        req["per_token_timing"] = "when_profiling"
        ev = send(self.sock, req)
        m = ev[-1]["metrics"]
        self.assertEqual(m["per_token_timing"], "when_profiling")
        self.assertEqual(m["itl_measurement_mode"], "true_streaming")
        self.assertIsNone(m["request_latency_ms"])
        self.assertEqual(m["ttft_ms"]["samples"], 6)

    def test_model_reuse(self):
        cfg = config("reuse-model")
        ev = send(self.sock, run_req(cfg, "a"))
        self.assertEqual(ev[-1]["event"], "result")
        self.assertFalse(ev[0]["already_loaded"])
        key = ev[0]["model_key"]
        self.assertEqual(self.assert_alive()["loaded_model_key"], key)

        ev = send(self.sock, run_req(cfg, "b"))
        self.assertTrue(ev[0]["already_loaded"])
        self.assertLess(ev[0]["load_seconds"], 0.05)

        cfg3 = config("reuse-model", batch_size=3)
        ev = send(self.sock, run_req(cfg3, "c"))
        self.assertTrue(ev[0]["already_loaded"], "batch_size must not cause a reload")
        self.assertEqual(ev[0]["model_key"], key)
        self.assertEqual(ev[-1]["metrics"]["batches"], 2)

        ev = send(self.sock, run_req(cfg3, "d", force=True))
        self.assertFalse(ev[0]["already_loaded"])
        self.assertGreaterEqual(ev[0]["load_seconds"], 0.15)
        self.assertEqual(ev[-1]["event"], "result")

        ev = send(self.sock, run_req(config("reuse-model", dtype="float32"), "e"))
        self.assertFalse(ev[0]["already_loaded"])
        self.assertNotEqual(ev[0]["model_key"], key)

        ev = send(self.sock, {"type": "unload"})
        self.assertEqual(ev[-1]["event"], "unloaded")
        self.assertTrue(ev[-1]["had_model"])
        self.assertIsNone(self.assert_alive()["loaded_model_key"])

    def test_malformed_requests_keep_server_alive(self):
        for raw in (b"this is not json\n", b"[1, 2]\n", b"\n", b'{"type": "dance"}\n',
                    b'{"type": "run", "config": {}}\n', b'{"type": "run", "run_id": "x"}\n'):
            ev = send(self.sock, raw)
            self.assertEqual(len(ev), 1, (raw, ev))
            self.assertEqual(self.error_of(ev)["class"], "infrastructure")
            self.assert_alive()

    def test_configuration_errors(self):
        bad = config("cfg-err")
        bad["engine"] = "no-such-engine"
        self.assertEqual(self.error_of(send(self.sock, run_req(bad)))["class"], "configuration")

        bad = config("cfg-err", batch_sise=4)
        err = self.error_of(send(self.sock, run_req(bad)))
        self.assertEqual(err["class"], "configuration")
        self.assertIn("batch_size", err["message"])

        bad = config("cfg-err", batch_size=0)
        self.assertEqual(self.error_of(send(self.sock, run_req(bad)))["class"], "configuration")

        bad = config("cfg-err", warmup={"thermal_floor_seconds": 5})
        self.assertEqual(self.error_of(send(self.sock, run_req(bad)))["class"], "configuration")

        bad = config("cfg-err")
        bad["serving_mode"] = "server"
        self.assertEqual(self.error_of(send(self.sock, run_req(bad)))["class"], "configuration")

        missing = os.path.join(self._tmp.name, "nope.jsonl")
        err = self.error_of(send(self.sock, run_req(config("cfg-err"), dataset_path=missing)))
        self.assertEqual(err["class"], "configuration")
        self.assertIn("nope.jsonl", err["message"])

        bad = config("cfg-err", max_batch_tokens=50)  # emulated out of memory
        ev = send(self.sock, run_req(bad))
        err = self.error_of(ev)
        self.assertEqual(err["class"], "configuration")
        self.assertIn("out of memory", err["message"])
        self.assert_alive()

    def test_engine_failures(self):
        ev = send(self.sock, run_req(config("fault-model", fault="run")))
        err = self.error_of(ev)
        self.assertEqual(err["class"], "infrastructure")
        self.assertIsNone(self.assert_alive()["loaded_model_key"])  # unloaded after a crash

        ev = send(self.sock, run_req(config("fault-model", fault="load")))
        self.assertEqual(self.error_of(ev)["class"], "infrastructure")
        self.assertEqual(len(ev), 1)

        # A failing warmup prompt uses up an iteration but adds no latency (12.1).
        warm = {"n_prompts": 2, "thermal_floor_seconds": 30}
        ev = send(self.sock, run_req(config("fault-model", fault="warmup", warmup=warm)))
        self.assertEqual(ev[-1]["event"], "result")
        ws = [e for e in ev if e["event"] == "warmup"]
        self.assertEqual(len(ws), 2)
        self.assertIsNone(ws[0]["latency_ms"])
        self.assertIn("error", ws[0])
        wd = [e for e in ev if e["event"] == "warmup_done"][0]
        self.assertEqual(wd["iterations_completed"], 2)
        self.assertEqual(wd["latencies_ms"], [])
        self.assertEqual(wd["final_cv"], 0.0)

    def test_convergence_warmup(self):
        warm = {"convergence_detection": True, "cv_threshold": 0.5, "window_size": 3,
                "min_prompts": 3, "max_prompts": 6, "thermal_floor_seconds": 30}
        ev = send(self.sock, run_req(config("conv-model", warmup=warm, noise=0.0)))
        self.assertEqual(ev[-1]["event"], "result")
        wd = [e for e in ev if e["event"] == "warmup_done"][0]
        self.assertTrue(wd["converged"])
        self.assertEqual(wd["iterations_completed"], 3)
        self.assertEqual(wd["max_prompts"], 6)
        self.assertEqual(wd["target_cv"], 0.5)
        self.assertLess(wd["final_cv"], 0.5)

    def test_dataset_input_lengths(self):
        path = os.path.join(self._tmp.name, "p.jsonl")
        with open(path, "w") as fh:
            fh.write('{"_source": "header"}\n')
            for i in range(8):
                fh.write(json.dumps({"prompt": "x" * (40 * (i + 1))}) + "\n")
        cfg = config("ds-model", input_length="dataset")
        ev = send(self.sock, run_req(cfg, dataset_path=path))
        self.assertEqual(ev[-1]["event"], "result", ev[-1])
        ends = [e["input_tokens"] for e in ev if e["event"] == "request_end"]
        self.assertEqual(ends, [10, 20, 30, 40, 50, 60])
        err = self.error_of(send(self.sock, run_req(cfg)))  # no dataset_path
        self.assertEqual(err["class"], "configuration")

    def test_client_exit_codes(self):
        def client(line, sock=None):
            return subprocess.run([sys.executable, CLIENT, "--socket", sock or self.sock],
                                  input=line, capture_output=True, timeout=30)

        r = client(b'{"type": "ping"}\n')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["event"], "pong")

        r = client(json.dumps(run_req(config("client-model", n_prompts=2))).encode())
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
        self.assertEqual(lines[0]["event"], "loaded")
        self.assertEqual(lines[-1]["event"], "result")

        r = client(b'{"type": "run", "run_id": "z", "config": {"engine": "vllm", '
                   b'"task": {"model": "m"}}}\n')
        self.assertEqual(r.returncode, 3)
        # vllm is known but not installed here: the wrong image, not the config's fault
        error = json.loads(r.stdout)
        self.assertEqual(error["class"], "infrastructure")
        self.assertIn("vllm is not installed in this image", error["message"])

        r = client(b'{"type": "run", "run_id": "z", "config": {"engine": "nope", '
                   b'"task": {"model": "m"}}}\n')
        self.assertEqual(r.returncode, 3)
        self.assertEqual(json.loads(r.stdout)["class"], "configuration")

        r = client(b"garbage\n")
        self.assertEqual(r.returncode, 3)

        r = client(b"")
        self.assertEqual(r.returncode, 2)

        r = client(b'{"type": "ping"}\n', sock=os.path.join(self._tmp.name, "absent.sock"))
        self.assertEqual(r.returncode, 4)
        self.assertEqual(r.stdout, b"")


# --------------------------------------------------------------------------------------
class LifecycleTests(TmpDirMixin, unittest.TestCase):
    def test_shutdown_request(self):
        sock = self.sock()
        proc = start_server(sock)
        ev = send(sock, {"type": "shutdown"})
        self.assertEqual(ev[-1]["event"], "bye")
        self.assertEqual(proc.wait(10), 0)
        self.assertFalse(os.path.exists(sock))

    def test_sigterm_idle(self):
        sock = self.sock()
        proc = start_server(sock)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        self.assertFalse(os.path.exists(sock))

    def test_sigterm_during_run(self):
        sock = self.sock()
        proc = start_server(sock)
        result = {}
        t = threading.Thread(target=lambda: result.update(
            ev=send(sock, run_req(config("slow", load_seconds=5.0))))
        )
        t.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        t.join(10)
        self.assertEqual(result["ev"][-1]["event"], "error")
        self.assertEqual(result["ev"][-1]["class"], "infrastructure")
        self.assertFalse(os.path.exists(sock))

    def test_crash_gives_client_exit_5(self):
        sock = self.sock()
        proc = start_server(sock)
        line = json.dumps(run_req(config("crash", fault="exit", load_seconds=0.0))).encode()
        r = subprocess.run([sys.executable, CLIENT, "--socket", sock], input=line,
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertEqual(proc.wait(10), 70)

    def _orphan(self, extra, wait_for_socket):
        sock = self.sock()
        code = ("import os, subprocess, sys, time\n"
                "extra = [a.replace('SELF', str(os.getpid())) for a in %r]\n"
                "p = subprocess.Popen([sys.executable, %r, '--socket', %r] + extra,"
                " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                "print(p.pid, flush=True)\n"
                "time.sleep(60)\n" % (list(extra), SERVER, sock))
        mid = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        try:
            pid = int(mid.stdout.readline())
            if wait_for_socket:
                wait_socket(sock)
        finally:
            mid.kill()  # SIGKILL: the server gets no chance to be told
            mid.wait()
            mid.stdout.close()
        self.assertTrue(wait_until(lambda: pid_gone(pid), 8), "orphaned server kept running")
        self.assertTrue(wait_until(lambda: not os.path.exists(sock), 2))

    def test_orphan_exits_when_parent_dies(self):
        self._orphan([], wait_for_socket=True)

    def test_orphan_with_parent_pid_when_parent_dies_at_once(self):
        self._orphan(["--parent-pid", "SELF"], wait_for_socket=False)

    def test_idle_exit(self):
        sock = self.sock()
        proc = start_server(sock, "--idle-exit-seconds", "0.5")
        send(sock, {"type": "ping"})
        self.assertEqual(proc.wait(10), 0)
        self.assertFalse(os.path.exists(sock))

    def test_log_file(self):
        sock = self.sock()
        log = os.path.join(os.path.dirname(sock), "harness.log")
        with open(log, "w") as fh:
            fh.write("earlier line\n")
        proc = subprocess.Popen([sys.executable, SERVER, "--socket", sock, "--log-file", log],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_socket(sock, proc)
            send(sock, {"type": "shutdown"})
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 0)
        self.assertEqual((out, err), (b"", b""))
        with open(log) as fh:
            text = fh.read()
        self.assertTrue(text.startswith("earlier line\n"), text)
        self.assertIn("listening on", text)
        bad = subprocess.run([sys.executable, SERVER, "--socket", sock,
                              "--log-file", os.path.join(log, "nope")],
                             capture_output=True, timeout=30)
        self.assertEqual(bad.returncode, 2)
        self.assertIn(b"cannot open --log-file", bad.stderr)

    def test_stale_socket_removed_live_socket_kept(self):
        sock = self.sock()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock)
        stale.close()  # leaves the file, nobody listening
        self.assertTrue(os.path.exists(sock))
        proc = start_server(sock)
        try:
            self.assertEqual(send(sock, {"type": "ping"})[-1]["event"], "pong")
            second = subprocess.run([sys.executable, SERVER, "--socket", sock],
                                    capture_output=True, timeout=30)
            self.assertEqual(second.returncode, 2)
            self.assertEqual(send(sock, {"type": "ping"})[-1]["pid"], proc.pid)
        finally:
            proc.terminate()
            proc.wait(10)

    def test_runs_from_another_directory(self):
        sock = self.sock()
        proc = subprocess.Popen([sys.executable, SERVER, "--socket", sock], cwd="/",
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_socket(sock, proc)
            r = subprocess.run([sys.executable, CLIENT, "--socket", sock], cwd="/",
                               input=b'{"type":"ping"}\n', capture_output=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
        finally:
            proc.terminate()
            proc.wait(10)


# --------------------------------------------------------------------------------------
class UnitTests(TmpDirMixin, unittest.TestCase):
    def test_client_reads_event_names_and_arguments_without_argparse(self):
        import client
        self.assertEqual(client.event_name(b'{"event":"pong","pid":1}'), "pong")
        self.assertEqual(client.event_name(b'{"pid": 1, "event": "result"}'), "result")
        self.assertEqual(client.event_name(b'{"event":"a\\"b","x":1}'), 'a"b')
        self.assertIsNone(client.event_name(b"garbage"))
        self.assertIsNone(client.event_name(b'["event"]'))
        self.assertEqual(client.parse_args(["--socket", "/s"]), (("/s", 0.0), None))
        self.assertEqual(client.parse_args(["--socket=/s", "--connect-wait-seconds", "2.5"]),
                         (("/s", 2.5), None))
        for bad in ([], ["--socket"], ["--sock", "/s"], ["--socket", "/s",
                                                         "--connect-wait-seconds", "x"]):
            parsed, problem = client.parse_args(bad)
            self.assertIsNone(parsed, bad)
            self.assertIn("usage:", problem)

    def test_percentile_matches_numpy_linear(self):
        # Reference values from numpy 2.4 numpy.percentile (default method "linear"),
        # bit for bit (numpy gives 3.8499999999999996, not 3.85).
        self.assertEqual(stats.percentile([1, 2, 3, 4], 95), 3.8499999999999996)
        self.assertEqual(stats.percentile([1, 2, 3, 4], 50), 2.5)
        self.assertEqual(stats.percentile([15, 20, 35, 40, 50], 40), 29.0)
        self.assertEqual(stats.percentile(list(range(1, 11)), 99), 9.91)
        self.assertEqual(stats.percentile([1.1, 2.2, 3.3, 4.4], 50), 2.75)
        self.assertEqual(stats.percentile([7], 99), 7.0)
        self.assertEqual(stats.percentile([3, 1, 2], 0), 1.0)
        self.assertEqual(stats.percentile([3, 1, 2], 100), 3.0)
        self.assertIsNone(stats.percentile([], 50))

    def test_percentile_against_numpy_if_installed(self):
        try:
            import numpy as np
        except ImportError:
            self.skipTest("numpy not installed (optional cross-check)")
        import random
        rng = random.Random(5)
        for _ in range(300):
            xs = [rng.lognormvariate(0, 1) for _ in range(rng.randint(1, 40))]
            for q in (0, 5, 50, 95, 99, 100, rng.uniform(0, 100)):
                self.assertEqual(stats.percentile(xs, q), float(np.percentile(xs, q)))

    def test_cv(self):
        self.assertEqual(stats.cv_population([2, 2, 2]), 0.0)
        self.assertAlmostEqual(stats.cv_population([1, 3]), 0.5)
        self.assertEqual(stats.cv_population([0, 0]), float("inf"))
        self.assertEqual(stats.cv_reported([0, 0]), 0.0)
        self.assertEqual(stats.cv_reported([]), 0.0)

    def test_convergence_rule(self):
        cw = runner.converged_window
        # need max(min_prompts, window) values, every window within the threshold
        self.assertFalse(cw([10, 10], 3, 3, 0.05))
        self.assertTrue(cw([10, 10, 10], 3, 3, 0.05))
        self.assertFalse(cw([10, 10, 10], 3, 5, 0.05))
        self.assertTrue(cw([50, 10, 10, 10, 10, 10], 3, 5, 0.05))
        self.assertFalse(cw([10, 50, 10, 10, 10, 10], 3, 5, 0.05))

    def test_model_key(self):
        base = config("k")
        key = SyntheticEngine.model_key(base)
        self.assertEqual(SyntheticEngine.model_key(config("k", batch_size=16)), key)
        explicit = config("k", load_seconds=0.2, noise=0.02, dtype="bfloat16")
        self.assertEqual(SyntheticEngine.model_key(explicit), key)
        self.assertNotEqual(SyntheticEngine.model_key(config("k", noise=0.1)), key)
        self.assertNotEqual(SyntheticEngine.model_key(config("k2")), key)

    def test_input_lengths(self):
        eng = SyntheticEngine()
        for mode in ("fixed", "uniform", "lognormal"):
            cfg = config("k", n_prompts=200, input_length=mode)
            lens = eng.prepare_prompts(cfg, None)
            self.assertEqual(len(lens), 200)
            self.assertTrue(all(1 <= n <= 64 for n in lens))
            self.assertEqual(lens, eng.prepare_prompts(cfg, None))  # seeded
            if mode == "fixed":
                self.assertEqual(set(lens), {64})
            if mode == "uniform":
                self.assertGreaterEqual(min(lens), 16)

    def test_dataset_loader(self):
        path = os.path.join(self.tmp, "d.jsonl")
        with open(path, "w") as fh:
            fh.write('{"_source": "x", "prompt": "header"}\n\nnot json\n')
            fh.write('{"prompt": "  a  ", "source": "z"}\n{"text": "b", "source": "y"}\n')
            fh.write('{"prompt": "   ", "question": "c"}\n{"other": "skip"}\n')
            fh.write('{"input": "d"}\n')
        self.assertEqual(dataset.load_prompts(path, 2), ["a", "b"])
        self.assertEqual(dataset.load_prompts(path, 4), ["a", "b", "c", "d"])
        self.assertEqual(dataset.load_prompts(path, 4, "grouped"), ["c", "d", "b", "a"])
        s1 = dataset.load_prompts(path, 4, "shuffled", 1)
        self.assertEqual(sorted(s1), ["a", "b", "c", "d"])
        self.assertEqual(s1, dataset.load_prompts(path, 4, "shuffled", 1))
        with self.assertRaises(ConfigError):
            dataset.load_prompts(path, 5)
        with self.assertRaises(ConfigError):
            dataset.load_prompts(os.path.join(self.tmp, "missing.jsonl"), 1)


if __name__ == "__main__":
    unittest.main()
