"""The vLLM engine (`engine: vllm`), for the image of docker/vllm/ (vLLM 0.19.1).

Importing this module needs only the standard library: vllm (and torch) are imported
lazily and guarded, so a harness without vLLM lists the engine as unavailable with
the reason ("vllm is not installed in this image ...") and a vllm run gets an
`infrastructure` error naming the image to use. The config mapping is
engines/vllm_logic.py (pure, unit-tested against llem 0.7.0 and the recorded vLLM
0.19.1 signatures); this module introspects the installed vLLM's signatures, builds
the objects and runs them. See README.md, "The vLLM engine".

Runs: all prompts of a run are one batch, as llem runs one `generate()` over the
prompt set (vLLM batches continuously; `max_num_seqs` bounds concurrency). With
per-token timing (the default) the requests are added to `llm.llm_engine` and
driven with `step()` with `output_kind = DELTA`, the loop `LLM.generate()` runs
itself, so each step's new tokens are timestamped as they reach this process;
without it (`per_token_timing: when_profiling` and no latency_profiling) one plain
`llm.generate()`; beam search runs `llm.beam_search()` and its token times are
estimated (`proportional`).
"""

import gc
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# llem 0.7.0 sets this too: CUDA may already be initialised in this process, and
# vLLM's default fork start method then fails in its EngineCore process.
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

from engines import engine_kwargs as K  # noqa: E402
from engines import hf_logic  # noqa: E402
from engines import vllm_logic as L  # noqa: E402
from engines.library import LibraryEngine, is_oom, probe_library  # noqa: E402
from llem_config import task_settings  # noqa: E402
from protocol import ConfigError, InfraError  # noqa: E402

IMAGE_HINT = ("run vllm runs on a worker started with the vLLM image (docker/vllm/, vLLM %s: "
              "lem-worker --runtime docker --image lem-fleet/vllm:%s)" % (L.VLLM_PIN, L.VLLM_PIN))


def _probe():
    """None when vllm imports and a CUDA device is visible, else why not."""
    return probe_library("vllm", IMAGE_HINT)


def live_signature():
    """The installed vLLM's accepted keywords, per call site (inspect/dataclasses/msgspec;
    nothing is called). A call site that cannot be introspected falls back to the
    recorded fixture and says so in `notes`."""
    import dataclasses
    import inspect

    import vllm
    calls, notes = {}, []
    try:
        fixture = L.signature_from_fixture()
    except (OSError, ValueError, KeyError) as exc:  # a harness written without signatures/
        fixture = K.Signature(L.PACKAGE, "unknown", {}, "none")
        notes.append("no recorded signatures to fall back on (%s: %s)" % (type(exc).__name__,
                                                                          exc))

    def struct_fields(cls):
        names = getattr(cls, "__struct_fields__", None)
        if names is None:
            raise TypeError("%s is not a msgspec Struct" % cls.__name__)
        return [n for n in names if not n.startswith("_")]

    def init_fields(cls):
        return [f.name for f in dataclasses.fields(cls) if f.init]

    def llm_keywords():
        from vllm.engine.arg_utils import EngineArgs
        params = inspect.signature(vllm.LLM.__init__).parameters
        names = [n for n, p in params.items() if n != "self" and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
            names += init_fields(EngineArgs)
        return names

    def cfg(module, name):
        def get():
            mod = __import__(module, fromlist=[name])
            return init_fields(getattr(mod, name))
        return get

    probes = {
        L.CALL_LLM: llm_keywords,
        L.CALL_SAMPLING: lambda: struct_fields(vllm.SamplingParams),
        L.CALL_BEAM: lambda: struct_fields(_beam_class()),
        L.CALL_SPECULATIVE: cfg("vllm.config", "SpeculativeConfig"),
        L.CALL_COMPILATION: cfg("vllm.config", "CompilationConfig"),
        L.CALL_ATTENTION: cfg("vllm.config", "AttentionConfig"),
    }
    for call, probe in probes.items():
        try:
            calls[call] = probe()
        except Exception as exc:
            calls[call] = fixture.calls.get(call)
            notes.append("%s: cannot introspect the installed vllm (%s: %s); using the recorded "
                         "%s signature" % (call, type(exc).__name__, exc, fixture.version))
    non_init = []
    try:
        from vllm.config import CompilationConfig
        non_init = [f.name for f in dataclasses.fields(CompilationConfig) if not f.init]
    except Exception:
        non_init = [n for note in fixture.notes if isinstance(note, dict)
                    for n in note.get("compilation_config_init_false", ())]
    notes.append({"compilation_config_init_false": non_init})
    return K.Signature(L.PACKAGE, str(vllm.__version__), calls,
                       "installed vllm %s" % vllm.__version__, notes)


def _beam_class():
    """vllm.sampling_params.BeamSearchParams: vLLM 0.19.1 does not export it from the
    package (llem 0.7.0's `from vllm import BeamSearchParams` fails there)."""
    from vllm.sampling_params import BeamSearchParams
    return BeamSearchParams


class VLLMEngine(LibraryEngine):
    name = "vllm"
    library = "vllm"
    pin_key = "vllm_pin"
    pin = L.VLLM_PIN
    version_modules = ("vllm", "torch", "transformers", "flashinfer", "xformers")
    logic = L
    probe = staticmethod(_probe)
    honours_per_token = True

    def __init__(self):
        self.llm = None
        self.plan = None
        self.params = None
        self.tokenizer = None
        self.byte_tok = None
        self.ids = {}
        self._limit = None
        self._run = 0
        self.sig = None

    # --- lifecycle --------------------------------------------------------------------
    def load(self, config):
        try:
            import vllm
        except Exception as exc:
            raise InfraError("vllm is not installed in this image (%s: %s); %s"
                             % (type(exc).__name__, exc, IMAGE_HINT))
        ts = task_settings(config)
        sig = live_signature()
        model_path = None
        if hf_logic.is_random_model(ts["model"]):
            spec = hf_logic.random_model_spec(ts["model"])
            draft = L.plan(config, sig)
            model_path = K.write_random_model_dir(spec, draft["random"]["dtype"],
                                                  K.random_model_root())
        else:
            model = ts["model"]
            if model.startswith(("/", ".", "~")) and not os.path.exists(model):
                raise ConfigError("task.model %r: no such local path on this host" % model)
        plan = L.plan(config, sig, model_path=model_path)
        self.sig = sig
        kwargs = dict(plan["constructor"])
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:
            if is_oom(exc):
                raise ConfigError("out of memory loading %r with vLLM: %s: %s; lower "
                                  "gpu_memory_utilization, max_model_len or max_num_seqs"
                                  % (ts["model"], type(exc).__name__, exc))
            if isinstance(exc, (TypeError, ValueError)):
                raise ConfigError("vLLM %s rejected the configuration (vllm.engine_params): "
                                  "%s: %s" % (sig.version, type(exc).__name__, exc))
            text = str(exc)
            if isinstance(exc, OSError) or "offline" in text.lower():
                raise ConfigError("cannot load model %r with vLLM: %s: %s (hub ids must be in "
                                  "this host's Hugging Face cache; HF_HUB_OFFLINE=1)"
                                  % (ts["model"], type(exc).__name__, exc))
            raise
        try:
            if plan["sampling_class"] == "BeamSearchParams":
                self.params = _beam_class()(**plan["sampling"])
            else:
                self.params = vllm.SamplingParams(**plan["sampling"])
        except (TypeError, ValueError) as exc:
            raise ConfigError("vLLM %s rejected the sampling parameters: %s: %s"
                              % (sig.version, type(exc).__name__, exc))
        if plan["weights"] == "random":
            self.byte_tok = hf_logic.ByteTokenizer(plan["random"]["config"])
        else:
            self.tokenizer = self.llm.get_tokenizer()
        self.plan = plan

    def unload(self):
        llm = self.llm
        self.llm = None
        self.params = None
        self.tokenizer = None
        self.ids = {}
        if llm is not None:
            try:  # stop the EngineCore process now rather than at garbage collection
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            del llm
        gc.collect()
        try:
            import torch
            torch.cuda.empty_cache()
        except Exception:
            pass

    def begin_run(self, config, run_number):
        self._run = run_number
        # Sampling parameters may change between runs of one loaded model (they are
        # not part of the model key): rebuild them from this run's config.
        if self.llm is not None:
            import vllm
            sig_plan = L.plan(config, self.sig or live_signature(),
                              model_path=self.plan["constructor"].get("model"))
            cls = _beam_class() if sig_plan["sampling_class"] == "BeamSearchParams" \
                else vllm.SamplingParams
            try:
                self.params = cls(**sig_plan["sampling"])
            except (TypeError, ValueError) as exc:
                raise ConfigError("vLLM rejected the sampling parameters: %s: %s"
                                  % (type(exc).__name__, exc))
            self.plan = dict(self.plan, sampling=sig_plan["sampling"],
                             sampling_class=sig_plan["sampling_class"],
                             dropped=sig_plan["dropped"], notes=sig_plan["notes"],
                             streaming=sig_plan["streaming"],
                             itl_measurement_mode=sig_plan["itl_measurement_mode"],
                             latency_estimated=sig_plan["latency_estimated"],
                             max_tokens=sig_plan["max_tokens"])

    def _prompts(self, texts):
        return [{"prompt_token_ids": self.ids[t]} for t in texts]

    # --- generation -------------------------------------------------------------------
    def _generate(self, prompts, params):
        try:
            if self.plan["sampling_class"] == "BeamSearchParams":
                return self.llm.beam_search(prompts, params)
            return self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as exc:
            if is_oom(exc):
                raise ConfigError("out of memory in vLLM generate(): %s: %s" % (
                    type(exc).__name__, exc))
            raise

    @staticmethod
    def _count(output, prompt_len):
        """Generated tokens of one request, summed over its sequences (n > 1). A
        BeamSearchOutput's sequences hold the prompt too (llem 0.7.0 counts 0 for
        them: it reads `.outputs`, which beam search outputs lack)."""
        seqs = getattr(output, "outputs", None)
        if seqs is not None:
            return sum(len(s.token_ids or ()) for s in seqs)
        return sum(max(0, len(s.tokens) - prompt_len)
                   for s in (getattr(output, "sequences", None) or []))

    def warmup_prompt(self, config, input_tokens, text):
        outs = self._generate(self._prompts([text]), self.params)
        return self._count(outs[0], len(self.ids[text])) if outs else 0

    def run_batch(self, config, batch_index, input_tokens, texts, observer):
        k = len(texts)
        prompts = self._prompts(texts)
        if not self.plan["streaming"] or not getattr(observer, "per_token", True):
            t0 = time.monotonic_ns()
            observer.prefill(list(input_tokens))
            outs = self._generate(prompts, self.params)
            t1 = time.monotonic_ns()
            if len(outs) != k:
                raise InfraError("vLLM returned %d outputs for %d prompts" % (len(outs), k))
            counts = [self._count(o, n) for o, n in zip(outs, input_tokens)]
            for i in range(k):
                observer.first_token(i)
            observer.decode()
            if not self.plan["streaming"]:
                steps = max(counts or [1])
                for i in range(k):
                    observer.token_times(i, hf_logic.proportional_times(
                        t0, t1, max(1, counts[i]), steps))
            for i in range(k):
                observer.request_end(i, counts[i])
            return
        self._stream(prompts, input_tokens, observer, "b%d" % batch_index)

    def _stream(self, prompts, input_tokens, observer, tag):
        """LLM.generate()'s own loop with DELTA outputs: add every request, then step()
        until none is unfinished, timestamping each step's new tokens."""
        from vllm.sampling_params import RequestOutputKind
        engine = self.llm.llm_engine
        params = self.params.clone()
        params.output_kind = RequestOutputKind.DELTA
        k = len(prompts)
        index = {}
        added = []
        try:
            for i, prompt in enumerate(prompts):
                rid = "lem-r%d-%s-%d" % (self._run, tag, i)
                engine.add_request(rid, prompt, params)
                index[rid] = i
                added.append(rid)
            observer.prefill(list(input_tokens))
            counts = [0] * k
            started = [False] * k
            decode_sent = False
            while engine.has_unfinished_requests():
                firsts, more = [], []
                for out in engine.step():
                    i = index.get(getattr(out, "request_id", None))
                    if i is None:
                        continue
                    seqs = getattr(out, "outputs", None) or []
                    counts[i] += sum(len(s.token_ids) for s in seqs)
                    steps = max([len(s.token_ids) for s in seqs] or [0])
                    for _ in range(steps):
                        if not started[i]:
                            started[i] = True
                            firsts.append(i)
                        else:
                            more.append(i)
                for i in firsts:
                    observer.first_token(i)
                if firsts and not decode_sent:
                    observer.decode()
                    decode_sent = True
                for i in more:
                    observer.tokens([i])
        except BaseException:
            try:
                engine.abort_request(added)
            except Exception:
                pass
            raise
        missing = [i for i in range(k) if not started[i]]
        if missing:
            raise InfraError("vLLM finished %d request(s) without a token (requests %s)"
                             % (len(missing), missing[:5]))
        if not decode_sent:
            observer.decode()
        for i in range(k):
            observer.request_end(i, counts[i])

    def run_prefill(self, config, batch_index, input_tokens, texts, observer):
        if self.plan["sampling_class"] == "BeamSearchParams":
            # beam search has no one-token form: a greedy one-token call of the batch
            import vllm
            params = vllm.SamplingParams(max_tokens=1, temperature=0.0)
        else:
            params = self.params.clone()
            params.max_tokens = 1
            params.min_tokens = 0
        observer.prefill(list(input_tokens))
        self.llm.generate(self._prompts(texts), params, use_tqdm=False)

    def latency_mode(self, config):
        if self.plan is None:
            return {"itl_measurement_mode": "true_streaming", "latency_estimated": False}
        plan = self.plan
        return {"itl_measurement_mode": plan["itl_measurement_mode"],
                "latency_estimated": plan["latency_estimated"]}

    def warnings(self, config):
        plan = self.plan or {}
        return ["%s dropped (not passed to %s): %s" % (d["key"], d.get("call") or "vLLM",
                                                      d["reason"])
                for d in plan.get("dropped", [])]

    def result_fields(self, config):
        plan = self.plan or {}
        out = {
            "model_weights": plan.get("weights"),
            "observed_engine_params": K.jsonable(plan.get("constructor")),
            "observed_sampling_params": dict(K.jsonable(plan.get("sampling") or {}),
                                             __class__=plan.get("sampling_class")),
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
