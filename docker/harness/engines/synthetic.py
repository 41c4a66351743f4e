"""The synthetic engine: an emulated inference engine for machines without a GPU.

Fleet-only (`engine: synthetic`, config section `synthetic.engine_params`). Real
time passes (time.sleep) so the worker's clock, the event timestamps and a
Rust-side simulated GPU all see realistic phase durations. See README.md for the
timing model.
"""

import difflib
import math
import os
import random
import time

from engines.base import Engine
from llem_config import get_float, get_int, section, task_settings
from protocol import HARNESS_VERSION, ConfigError

DTYPE_FACTOR = {"float32": 1.6, "float16": 1.0, "bfloat16": 1.0}
INPUT_LENGTHS = ("fixed", "uniform", "lognormal", "dataset")
FAULTS = (None, "load", "warmup", "run", "exit")
LOGNORMAL_SIGMA = 0.5
CHARS_PER_TOKEN = 4

DEFAULTS = {
    "batch_size": 1,
    "dtype": "bfloat16",
    "load_seconds": 2.0,
    "prefill_ms_per_token": 0.02,
    "decode_ms_per_step": 2.0,
    "decode_ms_per_sequence": 0.25,
    "noise": 0.02,
    "input_length": "fixed",
    "max_batch_tokens": None,
    "fault": None,
    # GPUs the run is leased to (the worker's slot group); the emulation's timing
    # does not depend on it.
    "tensor_parallel_size": None,
}

W = "synthetic.engine_params."


def resolve_params(config):
    """synthetic.engine_params with defaults applied and every field checked."""
    sec = section(config, "synthetic", "synthetic")
    for key in sec:
        if key not in ("engine_params", "sampling_params"):
            raise ConfigError(
                "unknown key synthetic.%s; the synthetic section has engine_params "
                "(and an ignored sampling_params)" % key
            )
    raw = section(sec, "engine_params", "synthetic.engine_params")
    for key in raw:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = "; did you mean %s?" % close[0] if close else ""
            raise ConfigError(
                "unknown field %s%s%s (known: %s)" % (W, key, hint, ", ".join(DEFAULTS))
            )
    p = {
        "batch_size": get_int(raw, "batch_size", 1, W + "batch_size", 1),
        "load_seconds": get_float(raw, "load_seconds", 2.0, W + "load_seconds", 0.0, 3600.0),
        "prefill_ms_per_token": get_float(
            raw, "prefill_ms_per_token", 0.02, W + "prefill_ms_per_token", 0.0, 1000.0
        ),
        "decode_ms_per_step": get_float(
            raw, "decode_ms_per_step", 2.0, W + "decode_ms_per_step", 0.0, 60000.0
        ),
        "decode_ms_per_sequence": get_float(
            raw, "decode_ms_per_sequence", 0.25, W + "decode_ms_per_sequence", 0.0, 60000.0
        ),
        "noise": get_float(raw, "noise", 0.02, W + "noise", 0.0, 0.5),
    }
    dtype = raw.get("dtype", "bfloat16")
    if dtype not in DTYPE_FACTOR:
        raise ConfigError(
            "%sdtype must be one of %s; got %r" % (W, ", ".join(DTYPE_FACTOR), dtype)
        )
    p["dtype"] = dtype
    input_length = raw.get("input_length", "fixed")
    if input_length not in INPUT_LENGTHS:
        raise ConfigError(
            "%sinput_length must be one of %s; got %r" % (W, ", ".join(INPUT_LENGTHS), input_length)
        )
    p["input_length"] = input_length
    mbt = raw.get("max_batch_tokens")
    if mbt is not None:
        mbt = get_int(raw, "max_batch_tokens", None, W + "max_batch_tokens", 1)
    p["max_batch_tokens"] = mbt
    fault = raw.get("fault")
    if fault not in FAULTS:
        raise ConfigError(
            "%sfault must be null or one of load, warmup, run, exit; got %r" % (W, fault)
        )
    p["fault"] = fault
    tp = raw.get("tensor_parallel_size")
    if tp is not None:
        tp = get_int(raw, "tensor_parallel_size", None, W + "tensor_parallel_size", 1)
    p["tensor_parallel_size"] = tp
    return p


class SyntheticEngine(Engine):
    name = "synthetic"

    def __init__(self):
        self.loaded_params = None
        self.rng = random.Random(0)
        self._deadline = None

    # --- class level ------------------------------------------------------------
    @classmethod
    def version(cls):
        return HARNESS_VERSION

    @classmethod
    def versions(cls):
        return {"synthetic": HARNESS_VERSION}

    @classmethod
    def validate(cls, config):
        resolve_params(config)

    @classmethod
    def model_identity(cls, config):
        params = resolve_params(config)
        del params["batch_size"]
        return {
            "engine": "synthetic",
            "model": task_settings(config)["model"],
            "engine_params": params,
        }

    @classmethod
    def batch_size(cls, config):
        return resolve_params(config)["batch_size"]

    @classmethod
    def needs_dataset(cls, config):
        return resolve_params(config)["input_length"] == "dataset"

    # --- timing helpers -----------------------------------------------------------
    def _factor(self, noise):
        if noise <= 0:
            return 1.0
        return max(0.0, 1.0 + self.rng.gauss(0.0, noise))

    def _sleep_ms(self, ms):
        """Sleep against a running deadline so per-call overshoot does not accumulate."""
        now = time.monotonic()
        if self._deadline is None or self._deadline < now - 0.05:
            self._deadline = now  # resync after a gap (event I/O, a new phase, ...)
        self._deadline += ms / 1000.0
        delay = self._deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    # --- lifecycle ----------------------------------------------------------------
    def load(self, config):
        params = resolve_params(config)
        seed = task_settings(config)["random_seed"]
        rng = random.Random("synthetic-load:%d" % seed)
        if params["fault"] == "load":
            raise RuntimeError("synthetic fault injected at load (engine_params.fault=load)")
        factor = 1.0 if params["noise"] <= 0 else max(0.0, 1.0 + rng.gauss(0.0, params["noise"]))
        time.sleep(params["load_seconds"] * factor)
        self.loaded_params = params

    def unload(self):
        self.loaded_params = None

    def begin_run(self, config, run_number):
        seed = task_settings(config)["random_seed"]
        # Repeatable for a given (seed, run number of this server), different per cycle.
        self.rng = random.Random("synthetic-run:%d:%d" % (seed, run_number))
        self._deadline = None

    def prepare_prompts(self, config, texts):
        params = resolve_params(config)
        task = task_settings(config)
        n = task["n_prompts"]
        max_in = task["max_input_tokens"]
        mode = params["input_length"]
        rng = random.Random(task["random_seed"])
        if mode == "fixed":
            return [max_in] * n
        if mode == "uniform":
            lo = max(1, max_in // 4)
            return [rng.randint(lo, max_in) for _ in range(n)]
        if mode == "lognormal":
            mu = math.log(max(max_in / 2.0, 0.5))
            return [
                min(max_in, max(1, int(round(rng.lognormvariate(mu, LOGNORMAL_SIGMA)))))
                for _ in range(n)
            ]
        # dataset: about four characters per token, truncated to max_input_tokens
        if texts is None:
            raise ConfigError(
                "%sinput_length=dataset needs the request's dataset_path" % W
            )
        return [
            min(max_in, max(1, int(math.ceil(len(t) / float(CHARS_PER_TOKEN))))) for t in texts
        ]

    def _check_loaded(self):
        if self.loaded_params is None:
            raise RuntimeError("synthetic engine used before load()")

    def _generate(self, params, inputs, max_out, observer):
        k = len(inputs)
        factor = DTYPE_FACTOR[params["dtype"]]
        noise = params["noise"]
        if observer is not None:
            observer.prefill(list(inputs))
        self._deadline = None
        self._sleep_ms(params["prefill_ms_per_token"] * sum(inputs) * factor * self._factor(noise))
        if observer is not None:
            for i in range(k):
                observer.first_token(i)
            observer.decode()
        everyone = list(range(k))
        step_ms = (params["decode_ms_per_step"] + params["decode_ms_per_sequence"] * k) * factor
        for step in range(max_out - 1):
            if params["fault"] == "run" and step == (max_out - 1) // 2:
                raise RuntimeError("synthetic fault injected in decode (engine_params.fault=run)")
            self._sleep_ms(step_ms * self._factor(noise))
            if observer is not None:
                observer.tokens(everyone)
        if params["fault"] == "run" and max_out == 1:
            raise RuntimeError("synthetic fault injected in decode (engine_params.fault=run)")
        if observer is not None:
            for i in range(k):
                observer.request_end(i, max_out)
        return max_out

    def warmup_prompt(self, config, input_tokens, text):
        self._check_loaded()
        params = resolve_params(config)
        if params["fault"] == "warmup":
            raise RuntimeError("synthetic fault injected in warmup (engine_params.fault=warmup)")
        max_out = task_settings(config)["max_output_tokens"]
        return self._generate(params, [input_tokens], max_out, None)

    def run_prefill(self, config, batch_index, input_tokens, texts, observer):
        """Prefill-only call: the batch's prefill sleep, no decode."""
        self._check_loaded()
        params = resolve_params(config)
        observer.prefill(list(input_tokens))
        self._deadline = None
        self._sleep_ms(params["prefill_ms_per_token"] * sum(input_tokens)
                       * DTYPE_FACTOR[params["dtype"]] * self._factor(params["noise"]))

    def run_batch(self, config, batch_index, input_tokens, texts, observer):
        self._check_loaded()
        params = resolve_params(config)
        max_out = task_settings(config)["max_output_tokens"]
        if params["fault"] == "exit":
            os._exit(70)  # emulate a hard crash of the server (worker restart tests)
        limit = params["max_batch_tokens"]
        need = sum(input_tokens) + len(input_tokens) * max_out
        if limit is not None and need > limit:
            raise MemoryError(
                "out of memory (emulated): batch %d needs %d tokens of KV cache but "
                "synthetic.engine_params.max_batch_tokens is %d; lower batch_size or "
                "max_input_tokens/max_output_tokens" % (batch_index, need, limit)
            )
        self._generate(params, input_tokens, max_out, observer)
