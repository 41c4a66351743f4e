"""One `run` request: load (or reuse) the model, warm up, measure, report.

Engine-neutral: engines do the work, this module owns timing, events and metrics.
"""

import platform
import time
import traceback

import engines
from dataset import load_prompts
from engines.base import BatchObserver
from llem_config import task_settings, warmup_settings
from protocol import (
    CONFIGURATION,
    HARNESS_VERSION,
    INFRASTRUCTURE,
    PROTOCOL_VERSION,
    ConfigError,
    HarnessError,
    InfraError,
    now_ns,
)
from stats import cv_population, cv_reported, latency_summary, length_summary


DEFAULT_PREFILL_WINDOW_S = 3.0
MAX_PREFILL_WINDOW_S = 3600.0
MAX_QUIET_S = 10.0
PER_TOKEN_TIMING = ("always", "when_profiling")
MAX_PREFILL_CALLS = 100000  # checked after each pass: a guard against zero-cost prefills


def log(message):
    print("[harness %s] %s" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message), flush=True)


def classify(exc):
    """(error class, message) for an exception raised while serving a run."""
    if isinstance(exc, HarnessError):
        return exc.error_class, exc.message
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(exc):
        return CONFIGURATION, (
            "out of memory: %s: %s; lower the batch size, sequence lengths or model size"
            % (name, exc)
        )
    return INFRASTRUCTURE, (
        "engine failed: %s: %s (traceback in the harness log); retry the run, and check "
        "the engine install if it repeats" % (name, exc)
    )


class EngineState:
    """The resident model: at most one engine instance with one loaded model."""

    def __init__(self):
        self.engine = None
        self.engine_name = None
        self.model = None
        self.model_key = None
        self.runs = 0

    def unload(self):
        """Unload the current model (errors logged, never raised). Returns the old key."""
        old = self.model_key
        engine = self.engine
        self.engine = None
        self.engine_name = None
        self.model = None
        self.model_key = None
        if engine is not None:
            try:
                engine.unload()
            except Exception:
                log("unload failed (ignored):\n" + traceback.format_exc())
        return old


class _Recorder(BatchObserver):
    """Turns engine callbacks of one batch into events and keeps token times."""

    def __init__(self, emitter, batch_index, first_request, k, per_token=True):
        self.em = emitter
        self.b = batch_index
        self.base = first_request
        self.k = k
        # False: the engine is asked not to time each token inside the window (llem's
        # latency_profiling off); it reports the batch's requests when it ends.
        self.per_token = per_token
        self.inputs = None
        self.prefill_ns = None
        self.first_ns = [None] * k
        self.times = [[] for _ in range(k)]
        self.outputs = [None] * k
        self.decode_seen = False
        self.estimated = False

    def _idx(self, i):
        if not isinstance(i, int) or not 0 <= i < self.k:
            raise InfraError("engine reported request %r outside batch of %d" % (i, self.k))
        return i

    def prefill(self, input_tokens):
        if self.prefill_ns is not None:
            raise InfraError("engine reported prefill twice for batch %d" % self.b)
        if len(input_tokens) != self.k:
            raise InfraError("engine reported %d prefill inputs for a batch of %d"
                             % (len(input_tokens), self.k))
        self.inputs = [int(x) for x in input_tokens]
        self.prefill_ns = now_ns()
        self.em.emit("phase", {"phase": "prefill", "batch_index": self.b, "batch_size": self.k,
                               "input_tokens": self.inputs}, self.prefill_ns)

    def first_token(self, i):
        i = self._idx(i)
        if self.prefill_ns is None or self.first_ns[i] is not None:
            raise InfraError("engine reported first_token out of order (request %d)" % i)
        t = now_ns()
        self.first_ns[i] = t
        self.times[i].append(t)
        self.em.emit("first_token", {"request": self.base + i, "batch_index": self.b}, t)

    def decode(self):
        if self.decode_seen:
            raise InfraError("engine reported decode twice for batch %d" % self.b)
        self.decode_seen = True
        self.em.emit("phase", {"phase": "decode", "batch_index": self.b, "batch_size": self.k})

    def tokens(self, indices):
        t = now_ns()
        for i in indices:
            self.times[self._idx(i)].append(t)

    def token_times(self, i, times_ns):
        i = self._idx(i)
        if self.first_ns[i] is None or self.outputs[i] is not None:
            raise InfraError("engine reported token_times out of order (request %d)" % i)
        times = [int(t) for t in times_ns]
        if not times:
            raise InfraError("engine reported no token times for request %d" % i)
        self.times[i] = times
        self.estimated = True

    def batch_latency_ms(self):
        """llem's per_request_batch latency: the batch's wall time / its size."""
        return (self.first_ns[0] - self.prefill_ns) / 1e6 / self.k

    def first_time(self, i):
        """Time of request i's first output token (estimated when not streamed)."""
        return self.times[i][0] if self.times[i] else self.first_ns[i]

    def request_end(self, i, output_tokens):
        i = self._idx(i)
        if self.first_ns[i] is None or self.outputs[i] is not None:
            raise InfraError("engine reported request_end out of order (request %d)" % i)
        self.outputs[i] = int(output_tokens)
        t0 = self.first_time(i)
        offsets = [round((t - t0) / 1e6, 3) for t in self.times[i]]
        fields = {
            "request": self.base + i, "batch_index": self.b,
            "input_tokens": self.inputs[i], "output_tokens": self.outputs[i],
            "token_times_ms": offsets,
        }
        if not self.per_token and not self.estimated:
            # llem's per_request_batch: no token was timed; the request's latency is
            # its batch's wall time over the batch size.
            fields["token_times_ms"] = []
            fields["per_request_batch"] = True
            fields["latency_ms"] = round(self.batch_latency_ms(), 3)
        if self.estimated:
            fields["estimated"] = True
            fields["ttft_ms"] = round((t0 - self.prefill_ns) / 1e6, 3)
        self.em.emit("request_end", fields)

    def check_complete(self):
        if self.prefill_ns is None or not self.decode_seen or None in self.outputs:
            raise InfraError("engine returned from batch %d without reporting every phase "
                             "and request_end" % self.b)


class _PrefillRecorder(BatchObserver):
    """Observer of one prefill-only call in the prefill window: only prefill()."""

    def __init__(self, emitter, batch_index, k, call):
        self.em = emitter
        self.b = batch_index
        self.k = k
        self.call = call
        self.prefill_ns = None

    def prefill(self, input_tokens):
        if self.prefill_ns is not None:
            raise InfraError("engine reported prefill twice in prefill call %d" % self.call)
        if len(input_tokens) != self.k:
            raise InfraError("engine reported %d prefill inputs for a batch of %d"
                             % (len(input_tokens), self.k))
        self.prefill_ns = now_ns()
        self.em.emit("phase", {"phase": "prefill", "batch_index": self.b, "batch_size": self.k,
                               "input_tokens": [int(x) for x in input_tokens],
                               "prefill_call": self.call}, self.prefill_ns)

    def _unexpected(self, *_args):
        raise InfraError("engine reported decode progress in a prefill-only call")

    first_token = decode = tokens = request_end = token_times = _unexpected


def hold_quiet(engine, seconds, em):
    """A quiet span beside a window edge (README: "Quiet spans"): the GPU's queued work
    is finished first, then nothing is submitted for `seconds` (the model stays
    loaded), so the worker, reading the energy counter back to back meanwhile, can
    anchor the edge in a span of constant power. No-op for 0."""
    if seconds <= 0:
        return
    engine.synchronize()
    em.emit("quiet_start", {"seconds": seconds})
    time.sleep(seconds)
    em.emit("quiet_end", None)


def run_prefill_window(engine, config, batches, batch_size, target_s, em):
    """The prefill-only differential window (README: "Prefill window").

    Repeats every batch of the run as a prefill-only call (one new token), in order,
    in whole passes, until at least `target_s` seconds have passed (or
    MAX_PREFILL_CALLS calls). Returns the summary that `prefill_window_end` carries.
    """
    per_pass = sum(sum(inputs) for _, inputs, _ in batches)
    start_ns = now_ns()
    em.emit("prefill_window_start", {"target_seconds": target_s, "batches": len(batches),
                                     "batch_size": batch_size,
                                     "input_tokens_per_pass": per_pass}, start_ns)
    deadline = start_ns + int(target_s * 1e9)
    calls = passes = tokens = 0
    call_ms = []
    capped = False
    while True:
        for b, inputs, texts in batches:
            rec = _PrefillRecorder(em, b, len(inputs), calls)
            engine.run_prefill(config, b, inputs, texts, rec)
            done = now_ns()
            if rec.prefill_ns is None:
                raise InfraError("engine returned from a prefill-only call without reporting "
                                 "prefill")
            call_ms.append((done - rec.prefill_ns) / 1e6)
            calls += 1
            tokens += sum(inputs)
        passes += 1
        if now_ns() >= deadline:
            break
        if calls >= MAX_PREFILL_CALLS:
            capped = True
            break
    em.emit("phase", {"phase": "idle"})
    end_ns = now_ns()
    summary = {
        "calls": calls, "passes": passes, "batches": len(batches), "batch_size": batch_size,
        "input_tokens": tokens, "input_tokens_per_pass": per_pass,
        "seconds": (end_ns - start_ns) / 1e9, "target_seconds": target_s,
        "call_ms": latency_summary(call_ms), "capped": capped,
    }
    em.emit("prefill_window_end", summary, end_ns)
    return summary


def converged_window(latencies, window_size, min_prompts, cv_threshold):
    """FORMAT.md 12.1 convergence test on the latencies collected so far."""
    need = max(min_prompts, window_size)
    if len(latencies) < need:
        return False
    tail = latencies[-need:]
    return all(
        cv_population(tail[j:j + window_size]) <= cv_threshold
        for j in range(need - window_size + 1)
    )


def run_warmup(engine, config, ws, inputs, texts, em, max_floor):
    """Warmup per FORMAT.md 12.1; emits warmup_start/warmup/warmup_done/thermal_floor."""
    if not ws["enabled"]:
        return None
    conv = ws["convergence_detection"]
    planned = ws["max_prompts"] if conv else ws["n_prompts"]
    em.emit("warmup_start", {"mode": "convergence" if conv else "fixed", "max_prompts": planned})
    latencies = []
    converged = False
    iterations = 0
    n = len(inputs)
    for i in range(planned):
        iterations += 1
        t0 = now_ns()
        try:
            out = engine.warmup_prompt(config, inputs[i % n],
                                       None if texts is None else texts[i % n])
        except Exception as exc:  # uses up an iteration, adds no latency (12.1)
            log("warmup prompt %d failed: %s: %s" % (i, type(exc).__name__, exc))
            em.emit("warmup", {"iteration": i, "latency_ms": None, "tokens_per_second": None,
                               "error": "%s: %s" % (type(exc).__name__, exc)})
            continue
        dt_ns = now_ns() - t0
        lat_ms = dt_ns / 1e6
        latencies.append(lat_ms)
        tps = (out / (dt_ns / 1e9)) if dt_ns > 0 else None
        em.emit("warmup", {"iteration": i, "latency_ms": lat_ms, "tokens_per_second": tps})
        if conv and converged_window(latencies, ws["window_size"], ws["min_prompts"],
                                     ws["cv_threshold"]):
            converged = True
            break
    if not conv:
        converged = True  # fixed mode always reports converged (12.1)
    requested = ws["thermal_floor_seconds"]
    floor = requested if max_floor is None else min(requested, max_floor)
    em.emit("warmup_done", {
        "converged": converged,
        "final_cv": cv_reported(latencies[-ws["window_size"]:]),
        "iterations_completed": iterations,
        "target_cv": ws["cv_threshold"],
        "max_prompts": planned,
        "latencies_ms": latencies,
        "thermal_floor_seconds": floor,
        "thermal_floor_requested_seconds": requested,
    })
    em.emit("thermal_floor", {"seconds": floor, "requested_seconds": requested})
    if floor > 0:
        time.sleep(floor)
    return latencies


def execute_run(state, request, em, max_floor=None,
                prefill_window_s=DEFAULT_PREFILL_WINDOW_S):
    """Serve one run request. Emits the run's events, ending with result or error.

    `prefill_window_s` is the server's --prefill-window-seconds; the request's
    `prefill_window_seconds` overrides it (0 = no prefill window).

    Raises ClientGone / Terminate (BaseExceptions) through to the server.
    """
    engine_touched = False
    try:
        config = request.get("config")
        if not isinstance(config, dict):
            raise InfraError("bad request: `config` must be the experiment config object")
        force = request.get("force_cold_start", False)
        if not isinstance(force, bool):
            raise InfraError("bad request: `force_cold_start` must be true or false")
        dataset_path = request.get("dataset_path")
        if dataset_path is not None and not isinstance(dataset_path, str):
            raise InfraError("bad request: `dataset_path` must be a string or null")
        window_s = request.get("prefill_window_seconds")
        if window_s is None:
            window_s = prefill_window_s
        elif (isinstance(window_s, bool) or not isinstance(window_s, (int, float))
              or not 0 <= window_s <= MAX_PREFILL_WINDOW_S):
            raise InfraError("bad request: `prefill_window_seconds` must be a number in "
                             "[0, %g] or null" % MAX_PREFILL_WINDOW_S)
        window_s = float(window_s)
        quiet_s = request.get("quiet_seconds", 0.0)
        if (isinstance(quiet_s, bool) or not isinstance(quiet_s, (int, float))
                or not 0 <= quiet_s <= MAX_QUIET_S):
            raise InfraError("bad request: `quiet_seconds` must be a number in [0, %g]"
                             % MAX_QUIET_S)
        quiet_s = float(quiet_s)
        timing = request.get("per_token_timing", "always")
        if timing not in PER_TOKEN_TIMING:
            raise InfraError("bad request: `per_token_timing` must be one of %s"
                             % ", ".join(PER_TOKEN_TIMING))

        # Everything that can be checked without the model, before touching it, so a
        # bad config never evicts a warm model.
        engine_name = config.get("engine", "transformers")
        cls = engines.engine_class(engine_name)
        ts = task_settings(config)
        ws = warmup_settings(config)
        cls.validate(config)
        key = cls.model_key(config)
        batch_size = cls.batch_size(config)
        texts = None
        if dataset_path is not None:
            texts = load_prompts(dataset_path, ts["n_prompts"], ts["order"], ts["random_seed"])
        elif cls.needs_dataset(config):
            raise ConfigError("engine %r needs the prompt texts but the request has no "
                              "dataset_path; the worker must resolve task.dataset.source"
                              % engine_name)

        # 1. load or reuse
        already = (state.model_key == key and state.engine is not None and not force)
        t0 = time.monotonic()
        engine_touched = True
        if not already:
            old = state.unload()
            if old is not None:
                log("unloaded model %s (%s)" % (old[:12], "force_cold_start" if old == key
                                                else "different model"))
            engine = cls()
            log("loading %s model %r key %s" % (engine_name, ts["model"], key[:12]))
            try:
                engine.load(config)
            except BaseException:
                try:
                    engine.unload()  # free whatever a failed load left behind
                except Exception:
                    pass
                raise
            state.engine, state.engine_name = engine, engine_name
            state.model, state.model_key = ts["model"], key
        load_seconds = 0.0 if already else time.monotonic() - t0
        engine = state.engine
        em.emit("loaded", {"model": ts["model"], "engine": engine_name, "model_key": key,
                           "already_loaded": already, "load_seconds": load_seconds})

        engine.begin_run(config, state.runs)
        state.runs += 1
        inputs = [int(x) for x in engine.prepare_prompts(config, texts)]
        if len(inputs) != ts["n_prompts"]:
            raise InfraError("engine prepared %d prompts, expected %d"
                             % (len(inputs), ts["n_prompts"]))

        # 2. warmup and thermal floor
        run_warmup(engine, config, ws, inputs, texts, em, max_floor)

        # llem's measurement.latency_profiling (default false): per-token timing inside
        # the window only when asked, unless the worker asks for it always.
        measurement = config.get("measurement") or {}
        profiling = bool(measurement.get("latency_profiling") or False)
        per_token = timing == "always" or profiling or not cls.honours_per_token

        # 3-5. measurement, between quiet spans
        hold_quiet(engine, quiet_s, em)
        start_ns = now_ns()
        em.emit("measure_start", None, start_ns)
        ttft_ms, itl_ms, out_lens, request_ms = [], [], [], []
        n_batches = 0
        batches = []
        for b, first in enumerate(range(0, len(inputs), batch_size)):
            batch_inputs = inputs[first:first + batch_size]
            batch_texts = None if texts is None else texts[first:first + batch_size]
            batches.append((b, batch_inputs, batch_texts))
            rec = _Recorder(em, b, first, len(batch_inputs), per_token)
            engine.run_batch(config, b, batch_inputs, batch_texts, rec)
            rec.check_complete()
            n_batches += 1
            batch_mode = not per_token and not rec.estimated and rec.k > 0
            for i in range(rec.k):
                out_lens.append(rec.outputs[i])
                if batch_mode:
                    request_ms.append(rec.batch_latency_ms())
                    continue
                ttft_ms.append((rec.first_time(i) - rec.prefill_ns) / 1e6)
                ts_i = rec.times[i]
                itl_ms.extend((ts_i[j + 1] - ts_i[j]) / 1e6 for j in range(len(ts_i) - 1))
        em.emit("phase", {"phase": "idle"})
        end_ns = now_ns()
        em.emit("measure_end", None, end_ns)

        hold_quiet(engine, quiet_s, em)

        # 5b. prefill-only differential window (outside the measured window), its lead-in
        # the quiet span above
        window = None
        if window_s > 0:
            window = run_prefill_window(engine, config, batches, batch_size, window_s, em)
            hold_quiet(engine, quiet_s, em)

        # 6. result
        versions = {"python": platform.python_version(), "harness": HARNESS_VERSION,
                    "protocol": PROTOCOL_VERSION}
        versions.update(cls.versions())
        itl = latency_summary(itl_ms, with_min_max=False)
        mode = engine.latency_mode(config)
        if request_ms:
            mode = {"itl_measurement_mode": "per_request_batch", "latency_estimated": True}
        metrics = {
            "n_prompts": len(inputs),
            "input_tokens": sum(inputs),
            "output_tokens": sum(out_lens),
            "inference_seconds": (end_ns - start_ns) / 1e9,
            "batches": n_batches,
            "batch_size": batch_size,
            "input_token_lengths": length_summary(inputs),
            "output_token_lengths": length_summary(out_lens),
            "ttft_ms": latency_summary(ttft_ms),
            "itl_ms": itl,
            "itl_measurement_mode": mode["itl_measurement_mode"],
            "latency_estimated": bool(mode["latency_estimated"]),
            "latency_profiling": profiling,
            "per_token_timing": timing,
            "request_latency_ms": latency_summary(request_ms) if request_ms else None,
            "quiet_seconds": quiet_s,
            "engine_warnings": [str(w) for w in engine.warnings(config)],
            "prefill_window": None if window is None else {
                k: window[k] for k in ("calls", "passes", "batches", "batch_size",
                                       "input_tokens", "seconds", "target_seconds", "capped")},
        }
        fields = {"metrics": metrics, "engine": engine_name,
                  "engine_version": cls.version(), "model_key": key, "versions": versions}
        for name, value in engine.result_fields(config).items():
            fields.setdefault(name, value)
        em.emit("result", fields)
    except Exception as exc:
        error_class, message = classify(exc)
        if not isinstance(exc, HarnessError):
            log("run failed:\n" + traceback.format_exc())
        else:
            log("run failed (%s): %s" % (error_class, message))
        if engine_touched and not isinstance(exc, ConfigError) and state.model_key is not None:
            # An engine failure may leave the model in an unknown state: drop it, so
            # the next run loads afresh (already_loaded=false).
            state.unload()
            message += " [model unloaded]"
        em.emit("error", {"class": error_class, "message": message})
