"""The TensorRT-LLM engine (`engine: tensorrt`), for the image of docker/tensorrt/
(TensorRT-LLM 1.2.1).

Importing this module needs only the standard library: tensorrt_llm is imported
lazily and guarded, so a harness without it lists the engine as unavailable with the
reason ("tensorrt_llm is not installed in this image ...") and a tensorrt run gets
an `infrastructure` error naming the image. The config mapping is
engines/tensorrt_logic.py (pure, unit-tested against llem 0.7.0 and the recorded
1.2.1 signatures); this module introspects the installed library, builds the objects
the plan describes (KvCacheConfig, SchedulerConfig, QuantConfig, BuildCacheConfig)
and runs them. See README.md, "The TensorRT-LLM engine".

Runs: all prompts of a run are one batch (llem: one `generate()` over the prompt
set; `max_batch_size` bounds the engine's in-flight batch). With per-token timing
every request is submitted with `generate_async(..., streaming=True)` and the
streams are consumed together on one asyncio loop, each new token timestamped as
it arrives; when the installed `generate_async` has no `streaming` parameter, or
per-token timing is off, one `generate()` call (token times estimated when asked
for).
"""

import asyncio
import dataclasses
import gc
import importlib
import inspect
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engines import engine_kwargs as K  # noqa: E402
from engines import hf_logic  # noqa: E402
from engines import tensorrt_logic as L  # noqa: E402
from engines.library import LibraryEngine, is_oom, probe_library  # noqa: E402
from llem_config import task_settings  # noqa: E402
from protocol import ConfigError, InfraError  # noqa: E402

IMAGE_HINT = ("run tensorrt runs on a worker started with the TensorRT-LLM image "
              "(docker/tensorrt/, TensorRT-LLM %s: lem-worker --runtime docker --image "
              "lem-fleet/tensorrt:%s)" % (L.TENSORRT_LLM_PIN, L.TENSORRT_LLM_PIN))


def _probe():
    """None when tensorrt_llm imports and a CUDA device is visible, else why not."""
    return probe_library("tensorrt_llm", IMAGE_HINT)


def _field_names(cls):
    fields = getattr(cls, "model_fields", None)  # pydantic v2
    if isinstance(fields, dict):
        return list(fields)
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]
    params = inspect.signature(cls).parameters
    return [n for n, p in params.items() if p.kind not in (
        inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def live_signature():
    """The installed TensorRT-LLM's accepted keywords per call site; what cannot be
    introspected falls back to the recorded fixture (said in `notes`)."""
    import tensorrt_llm
    calls, notes = {}, []
    try:
        fixture = L.signature_from_fixture()
    except (OSError, ValueError, KeyError) as exc:  # a harness written without signatures/
        fixture = K.Signature(L.PACKAGE, "unknown", {}, "none")
        notes.append("no recorded signatures to fall back on (%s: %s)" % (type(exc).__name__,
                                                                          exc))

    def llmapi(name):
        return lambda: _field_names(getattr(importlib.import_module("tensorrt_llm.llmapi"), name))

    def args(name):
        return lambda: _field_names(getattr(
            importlib.import_module("tensorrt_llm.llmapi.llm_args"), name))

    probes = {
        L.CALL_TORCH: args("TorchLlmArgs"),
        L.CALL_TRT: args("TrtLlmArgs"),
        L.CALL_SAMPLING: lambda: _field_names(tensorrt_llm.SamplingParams),
        L.CALL_KV_CACHE: llmapi("KvCacheConfig"),
        L.CALL_SCHEDULER: llmapi("SchedulerConfig"),
        L.CALL_QUANT: llmapi("QuantConfig"),
    }
    for call, probe in probes.items():
        try:
            calls[call] = probe()
        except Exception as exc:
            calls[call] = fixture.calls.get(call)
            notes.append("%s: cannot introspect the installed tensorrt_llm (%s: %s); using the "
                         "recorded %s signature" % (call, type(exc).__name__, exc,
                                                    fixture.version))
    return K.Signature(L.PACKAGE, str(tensorrt_llm.__version__), calls,
                       "installed tensorrt_llm %s" % tensorrt_llm.__version__, notes)


def build_objects(value):
    """The plan's markers as TensorRT-LLM objects ({"__class__"} from tensorrt_llm.llmapi,
    {"__enum__": "Enum.NAME"}, {"__path__"})."""
    if isinstance(value, dict):
        if "__class__" in value:
            llmapi = importlib.import_module("tensorrt_llm.llmapi")
            cls = getattr(llmapi, value["__class__"])
            return cls(**{k: build_objects(v) for k, v in value["kwargs"].items()})
        if "__enum__" in value:
            enum_name, member = value["__enum__"].split(".", 1)
            llmapi = importlib.import_module("tensorrt_llm.llmapi")
            return getattr(llmapi, enum_name)[member]
        if "__path__" in value:
            import pathlib
            return pathlib.Path(value["__path__"])
        return {k: build_objects(v) for k, v in value.items()}
    if isinstance(value, list):
        return [build_objects(v) for v in value]
    return value


class TensorRTEngine(LibraryEngine):
    name = "tensorrt"
    library = "tensorrt_llm"
    pin_key = "tensorrt_llm_pin"
    pin = L.TENSORRT_LLM_PIN
    version_modules = ("tensorrt_llm", "tensorrt", "torch", "transformers")
    logic = L
    probe = staticmethod(_probe)
    honours_per_token = True

    def __init__(self):
        self.llm = None
        self.plan = None
        self.sig = None
        self.params = None
        self.tokenizer = None
        self.byte_tok = None
        self.ids = {}
        self._limit = None
        self.loop = None
        self.can_stream = False

    # --- lifecycle --------------------------------------------------------------------
    def _sampling(self, plan):
        import tensorrt_llm
        try:
            return tensorrt_llm.SamplingParams(**plan["sampling"])
        except (TypeError, ValueError) as exc:
            raise ConfigError("TensorRT-LLM %s rejected the sampling parameters: %s: %s"
                              % (self.sig.version, type(exc).__name__, exc))

    def _streaming_plan(self, plan):
        if plan["streaming"] and not self.can_stream:
            plan = dict(plan, streaming=False, itl_measurement_mode="proportional",
                        latency_estimated=True,
                        notes=plan["notes"] + ["the installed LLM.generate_async has no "
                                               "`streaming` parameter: token times estimated"])
        return plan

    def load(self, config):
        try:
            import tensorrt_llm  # noqa: F401
        except Exception as exc:
            raise InfraError("tensorrt_llm is not installed in this image (%s: %s); %s"
                             % (type(exc).__name__, exc, IMAGE_HINT))
        ts = task_settings(config)
        sig = live_signature()
        self.sig = sig
        model_path = None
        if hf_logic.is_random_model(ts["model"]):
            draft = L.plan(config, sig)
            model_path = K.write_random_model_dir(draft["random"], draft["random"]["dtype"],
                                                  K.random_model_root())
        elif ts["model"].startswith(("/", ".", "~")) and not os.path.exists(ts["model"]):
            raise ConfigError("task.model %r: no such local path on this host" % ts["model"])
        plan = L.plan(config, sig, model_path=model_path)
        module, cls_name = plan["constructor_class"].rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except Exception as exc:
            raise InfraError("cannot import %s from the installed tensorrt_llm %s: %s: %s"
                             % (plan["constructor_class"], sig.version, type(exc).__name__, exc))
        try:
            gen_async = inspect.signature(cls.generate_async).parameters
            self.can_stream = "streaming" in gen_async
        except Exception:
            self.can_stream = False
        plan = self._streaming_plan(plan)
        kwargs = build_objects(plan["constructor"])
        try:
            self.llm = cls(**kwargs)
        except Exception as exc:
            if is_oom(exc):
                raise ConfigError("out of memory building/loading %r with TensorRT-LLM: %s: %s"
                                  % (ts["model"], type(exc).__name__, exc))
            if isinstance(exc, (TypeError, ValueError)) or type(exc).__name__ == "ValidationError":
                raise ConfigError("TensorRT-LLM %s rejected the configuration "
                                  "(tensorrt.engine_params): %s: %s"
                                  % (sig.version, type(exc).__name__, exc))
            raise
        self.params = self._sampling(plan)
        if plan["weights"] == "random":
            self.byte_tok = hf_logic.ByteTokenizer(plan["random"]["config"])
        else:
            self.tokenizer = getattr(self.llm, "tokenizer", None)
            if self.tokenizer is None:
                raise InfraError("TensorRT-LLM loaded %r without a tokenizer" % ts["model"])
        self.loop = asyncio.new_event_loop()
        self.plan = plan

    def unload(self):
        llm = self.llm
        self.llm = None
        self.params = None
        self.tokenizer = None
        self.ids = {}
        if llm is not None:
            try:
                llm.shutdown()
            except Exception:
                pass
            del llm
        if self.loop is not None:
            try:
                self.loop.close()
            except Exception:
                pass
            self.loop = None
        gc.collect()
        try:
            import torch
            torch.cuda.empty_cache()
        except Exception:
            pass

    def begin_run(self, config, run_number):
        if self.llm is None:
            return
        plan = L.plan(config, self.sig, model_path=self.plan["constructor"].get("model"),
                      check_engine_dir=False)
        plan = self._streaming_plan(plan)
        self.params = self._sampling(plan)
        self.plan = dict(self.plan, sampling=plan["sampling"], dropped=plan["dropped"],
                         notes=plan["notes"], streaming=plan["streaming"],
                         itl_measurement_mode=plan["itl_measurement_mode"],
                         latency_estimated=plan["latency_estimated"],
                         max_tokens=plan["max_tokens"])

    # --- generation -------------------------------------------------------------------
    @staticmethod
    def _count(output):
        return sum(len(getattr(c, "token_ids", None) or []) for c in (output.outputs or []))

    def _generate(self, prompt_ids, params):
        try:
            return self.llm.generate(prompt_ids, params, use_tqdm=False)
        except Exception as exc:
            if is_oom(exc):
                raise ConfigError("out of memory in TensorRT-LLM generate(): %s: %s"
                                  % (type(exc).__name__, exc))
            raise

    def warmup_prompt(self, config, input_tokens, text):
        outs = self._generate([self.ids[text]], self.params)
        return self._count(outs[0]) if outs else 0

    def run_batch(self, config, batch_index, input_tokens, texts, observer):
        k = len(texts)
        prompts = [self.ids[t] for t in texts]
        if self.plan["streaming"] and getattr(observer, "per_token", True):
            self._stream(prompts, input_tokens, observer)
            return
        t0 = time.monotonic_ns()
        observer.prefill(list(input_tokens))
        outs = self._generate(prompts, self.params)
        t1 = time.monotonic_ns()
        if len(outs) != k:
            raise InfraError("TensorRT-LLM returned %d outputs for %d prompts" % (len(outs), k))
        counts = [self._count(o) for o in outs]
        for i in range(k):
            observer.first_token(i)
        observer.decode()
        if not self.plan["streaming"]:
            steps = max(counts or [1])
            for i in range(k):
                observer.token_times(i, hf_logic.proportional_times(t0, t1, max(1, counts[i]),
                                                                    steps))
        for i in range(k):
            observer.request_end(i, counts[i])

    def _stream(self, prompts, input_tokens, observer):
        k = len(prompts)
        counts = [0] * k
        started = [False] * k
        state = {"decode": False}
        seen = [dict() for _ in range(k)]  # output index -> tokens seen so far

        def on_output(i, out):
            new_steps, new_total = 0, 0
            for j, c in enumerate(out.outputs or []):
                n = len(getattr(c, "token_ids", None) or [])
                delta = n - seen[i].get(j, 0)
                if delta > 0:
                    seen[i][j] = n
                    new_total += delta
                    new_steps = max(new_steps, delta)
            counts[i] += new_total
            for _ in range(new_steps):
                if not started[i]:
                    started[i] = True
                    observer.first_token(i)
                    if not state["decode"]:
                        state["decode"] = True
                        observer.decode()
                else:
                    observer.tokens([i])

        async def consume(i, gen):
            async for out in gen:
                on_output(i, out)

        async def run_all():
            gens = [self.llm.generate_async(p, self.params, streaming=True) for p in prompts]
            observer.prefill(list(input_tokens))
            await asyncio.gather(*(consume(i, g) for i, g in enumerate(gens)))

        try:
            self.loop.run_until_complete(run_all())
        except Exception as exc:
            if is_oom(exc):
                raise ConfigError("out of memory in TensorRT-LLM generate_async(): %s: %s"
                                  % (type(exc).__name__, exc))
            raise
        missing = [i for i in range(k) if not started[i]]
        if missing:
            raise InfraError("TensorRT-LLM finished %d request(s) without a token (requests %s)"
                             % (len(missing), missing[:5]))
        if not state["decode"]:
            observer.decode()
        for i in range(k):
            observer.request_end(i, counts[i])

    def run_prefill(self, config, batch_index, input_tokens, texts, observer):
        import tensorrt_llm
        kw = dict(self.plan["sampling"], max_tokens=1)
        kw.pop("min_tokens", None)
        params = tensorrt_llm.SamplingParams(**kw)
        observer.prefill(list(input_tokens))
        self._generate([self.ids[t] for t in texts], params)

    def latency_mode(self, config):
        if self.plan is None:
            return {"itl_measurement_mode": "true_streaming", "latency_estimated": False}
        plan = self.plan
        return {"itl_measurement_mode": plan["itl_measurement_mode"],
                "latency_estimated": plan["latency_estimated"]}

    def warnings(self, config):
        plan = self.plan or {}
        return ["%s dropped (not passed to %s): %s" % (d["key"], d.get("call") or "TensorRT-LLM",
                                                      d["reason"])
                for d in plan.get("dropped", [])]

    def result_fields(self, config):
        plan = self.plan or {}
        out = {
            "model_weights": plan.get("weights"),
            "constructor_class": plan.get("constructor_class"),
            "observed_engine_params": K.jsonable(plan.get("constructor")),
            "observed_sampling_params": K.jsonable(plan.get("sampling")),
            "dropped_kwargs": plan.get("dropped", []),
            "engine_mapping_notes": plan.get("notes", []),
            "engine_library": plan.get("library"),
            "engine_signature": plan.get("signature"),
            "forced_max_tokens": plan.get("forced_max_tokens"),
            "max_input_tokens_applied": self._limit,
            "tokenizer": "byte-level" if self.byte_tok is not None else "pretrained",
        }
        if plan.get("random") is not None:
            spec = plan["random"]
            out["random_model"] = {"kind": spec["kind"], "source": spec["source"],
                                   "config_sha256": spec["sha256"],
                                   "seed": task_settings(config)["random_seed"],
                                   "directory": plan["constructor"].get("model")}
        return out
