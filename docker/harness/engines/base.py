"""The engine interface. One subclass per inference engine.

An engine instance lives inside the resident server and holds at most one loaded
model. The runner (runner.py) owns the protocol: it times things, emits events and
computes metrics; engines only do the work and report progress through a
BatchObserver.
"""

import hashlib
import json


def model_key_of(identity):
    """sha256 hex of the canonical JSON of a model identity mapping."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class BatchObserver:
    """What an engine calls while it runs one batch (the runner implements it).

    Request indices `i` are local to the batch (0 .. k-1). Call order:
    prefill(...) once, first_token(i) once per request, decode() once,
    tokens([...]) any number of times, request_end(i, n) once per request.
    """

    def prefill(self, input_tokens):  # list[int], one per request of the batch
        raise NotImplementedError

    def first_token(self, i):
        raise NotImplementedError

    def decode(self):
        raise NotImplementedError

    def tokens(self, indices):  # one more output token for each listed request, now
        raise NotImplementedError

    def request_end(self, i, output_tokens):
        raise NotImplementedError

    def token_times(self, i, times_ns):
        """Replace request i's token times (CLOCK_MONOTONIC ns, one per output token) by
        estimates, for engines that cannot stream (call between first_token and
        request_end). TTFT, ITL and token_times_ms then come from these."""
        raise NotImplementedError


class Engine:
    """Base class. Class-level methods must work without a loaded model."""

    name = ""

    # --- availability -------------------------------------------------------
    @classmethod
    def available(cls):
        return True

    @classmethod
    def unavailable_reason(cls):
        return None

    @classmethod
    def version(cls):
        raise NotImplementedError

    @classmethod
    def versions(cls):
        """Backend package versions for the result's `versions` map."""
        return {}

    # --- config -------------------------------------------------------------
    @classmethod
    def validate(cls, config):
        """Raise protocol.ConfigError if the engine section is unusable."""

    @classmethod
    def model_identity(cls, config):
        """The model-affecting part of the config (a JSON-able mapping)."""
        raise NotImplementedError

    @classmethod
    def model_key(cls, config):
        return model_key_of(cls.model_identity(config))

    @classmethod
    def batch_size(cls, config):
        return 1

    @classmethod
    def needs_dataset(cls, config):
        """True if the run needs the prompt texts (request's dataset_path)."""
        return True

    # --- lifecycle ----------------------------------------------------------
    def load(self, config):
        raise NotImplementedError

    def unload(self):
        raise NotImplementedError

    # Whether run_batch honours `observer.per_token` False (no per-token timing inside
    # the window: report the batch's requests when it ends, llem's per_request_batch).
    # An engine that does not always streams its tokens.
    honours_per_token = False

    # --- running --------------------------------------------------------------
    def synchronize(self):
        """Wait until work submitted to the device has finished (before a quiet span)."""

    def begin_run(self, config, run_number):
        """Called once per run before warmup; run_number counts runs of this server."""

    def prepare_prompts(self, config, texts):
        """Input token count per prompt (list[int]); `texts` is None or list[str]."""
        raise NotImplementedError

    def warmup_prompt(self, config, input_tokens, text):
        """Run one warmup request; return the number of output tokens."""
        raise NotImplementedError

    def run_batch(self, config, batch_index, input_tokens, texts, observer):
        """Run one batch to completion, reporting through `observer`."""
        raise NotImplementedError

    def run_prefill(self, config, batch_index, input_tokens, texts, observer):
        """One prefill-only call of a batch (the prefill window): call
        observer.prefill(input_tokens) as the work starts and return once it has
        completed (device synchronised). Nothing else is reported."""
        raise NotImplementedError

    def latency_mode(self, config):
        """How token times are obtained: {"itl_measurement_mode", "latency_estimated"}."""
        return {"itl_measurement_mode": "true_streaming", "latency_estimated": False}

    def result_fields(self, config):
        """Extra top-level fields for the `result` event (after the run)."""
        return {}

    def warnings(self, config):
        """Warnings about this run's configuration (list of str), e.g. keyword arguments
        the installed library does not accept and that were dropped; the runner puts
        them in `metrics.engine_warnings`, which the worker keeps in the result."""
        return []
