"""The transformers (PyTorch) engine (`engine: transformers`, llem's default engine).

Importing this module needs only the standard library: torch and transformers are
imported lazily (availability check, load). The config mapping, tokenisation of
random models and the model key live in engines/hf_logic.py (pure, unit-tested);
this module turns them into torch objects and runs generate(). See README.md,
"The transformers engine".
"""

import contextlib
import copy
import gc
import os
import time

# No hub access on fleet hosts: a hub id must resolve from the local cache or fail
# fast. Must be set before huggingface_hub is first imported (it reads it at import).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from engines import hf_logic as L  # noqa: E402
from engines.base import Engine  # noqa: E402
from llem_config import task_settings  # noqa: E402
from protocol import ConfigError, InfraError  # noqa: E402

_PROBE = {}


def _probe():
    """None when torch + transformers import and a CUDA device is visible, else why not."""
    if "reason" not in _PROBE:
        reason = None
        try:
            import torch
            import transformers  # noqa: F401
        except Exception as exc:  # ImportError, or a broken install
            reason = "cannot import torch/transformers (%s: %s)" % (type(exc).__name__, exc)
        else:
            try:
                ok = torch.cuda.is_available()
            except Exception as exc:
                ok, reason = False, "torch.cuda.is_available() failed: %s" % exc
            if not ok and reason is None:
                reason = ("torch %s sees no CUDA device (CUDA_VISIBLE_DEVICES=%r)"
                          % (torch.__version__, os.environ.get("CUDA_VISIBLE_DEVICES")))
        _PROBE["reason"] = reason
    return _PROBE["reason"]


def _is_oom(exc):
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


_STREAMER_CLASS = []


def _streamer_class():
    """A transformers BaseStreamer that reports every decoding step to an observer."""
    if _STREAMER_CLASS:
        return _STREAMER_CLASS[0]
    from transformers.generation.streamers import BaseStreamer

    class StepStreamer(BaseStreamer):
        """generate() calls put() with the prompt ids first, then once per decoding
        step with that step's tokens (already on the CPU, so the step's GPU work has
        completed). The first generated step is every request's first token; a row is
        live until it emits an end-of-sequence id (that token included)."""

        def __init__(self, observer, k, prompt_shape, eos_ids):
            super().__init__()
            self.obs = observer
            self.k = k
            self.prompt_shape = tuple(prompt_shape)
            self.eos = set(eos_ids)
            self.prompt_seen = False
            self.rows = None
            self.per_request = 1
            self.live = None
            self.steps = 0

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                if value.dim() == 2 and tuple(value.shape) == self.prompt_shape:
                    return  # the prompt
            toks = value.tolist()
            if value.dim() == 1:
                self._step(toks)
            else:  # several tokens per row at once (prompt lookup / assisted decoding)
                for j in range(len(toks[0])):
                    self._step([row[j] for row in toks])

        def _step(self, tokens):
            if self.rows is None:
                self.rows = len(tokens)
                self.per_request = max(1, self.rows // self.k)
                self.live = [True] * self.rows
            if self.steps == 0:
                for i in range(self.k):
                    self.obs.first_token(i)
                self.obs.decode()
            else:
                n = self.per_request
                live = [i for i in range(self.k) if any(self.live[i * n:(i + 1) * n])]
                if live:
                    self.obs.tokens(live)
            for r, tok in enumerate(tokens[:self.rows]):
                if self.live[r] and tok in self.eos:
                    self.live[r] = False
            self.steps += 1

        def end(self):
            pass

    _STREAMER_CLASS.append(StepStreamer)
    return StepStreamer


class TransformersEngine(Engine):
    name = "transformers"
    honours_per_token = True

    def __init__(self):
        self.torch = None
        self.model = None
        self.tokenizer = None
        self.byte_tok = None
        self.plan = None
        self.weights = None
        self.pad_id = None
        self.eos_ids = []
        self.max_positions = None
        self.ids = {}
        self.observed_load = {}
        self.last_generate_kwargs = None
        self.tf32_saved = None
        self.execution = None
        self.peak_mb = None
        self._limit = None

    # --- class level ------------------------------------------------------------------
    @classmethod
    def available(cls):
        return _probe() is None

    @classmethod
    def unavailable_reason(cls):
        return _probe()

    @classmethod
    def version(cls):
        try:
            import transformers
            return str(transformers.__version__)
        except Exception:
            return "unknown"

    @classmethod
    def versions(cls):
        out = {}
        try:
            import torch
            out["torch"] = str(torch.__version__)
            out["cuda"] = torch.version.cuda
            try:
                out["cudnn"] = torch.backends.cudnn.version()
            except Exception:
                pass
            if torch.cuda.is_available():
                out["gpu"] = torch.cuda.get_device_name(0)
        except Exception:
            pass
        try:
            import transformers
            out["transformers"] = str(transformers.__version__)
        except Exception:
            pass
        for name in ("accelerate", "bitsandbytes", "flash_attn"):
            try:
                module = __import__(name)
                out[name] = str(getattr(module, "__version__", "unknown"))
            except Exception:
                pass
        return out

    @classmethod
    def validate(cls, config):
        L.resolve_execution(config)
        L.load_plan(config)
        L.generate_plan(config)

    @classmethod
    def model_identity(cls, config):
        return L.model_identity(config)

    @classmethod
    def batch_size(cls, config):
        return L.resolve_execution(config)["batch_size"]

    @classmethod
    def needs_dataset(cls, config):
        return True

    # --- helpers ----------------------------------------------------------------------
    def _dtype(self, name):
        t = self.torch
        return {"auto": "auto", "float32": t.float32, "float16": t.float16,
                "bfloat16": t.bfloat16}[name]

    def _oom(self, what, config, exc, k=None):
        try:
            self.torch.cuda.empty_cache()
        except Exception:
            pass
        ts = task_settings(config)
        where = ("loading model %r" % ts["model"] if k is None else
                 "model %r with batch_size %d (this batch: %d prompts, up to %d new tokens "
                 "each)" % (ts["model"], L.resolve_execution(config)["batch_size"], k,
                            ts["max_output_tokens"]))
        total = ""
        try:
            props = self.torch.cuda.get_device_properties(0)
            total = " on %s (%.1f GiB)" % (props.name, props.total_memory / 2 ** 30)
        except Exception:
            pass
        return ConfigError("out of memory: %s does not fit%s during %s: %s: %s; lower "
                           "batch_size, sequence lengths or model size"
                           % (where, total, what, type(exc).__name__, exc))

    def _check_source(self, model):
        if os.path.exists(model):
            return
        if model.startswith(("/", ".", "~")):
            raise ConfigError("task.model %r: no such local path on this host" % model)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes",
                                                                             "on")
        if not offline:
            return
        try:
            from huggingface_hub import try_to_load_from_cache
            cached = try_to_load_from_cache(model, "config.json")
        except Exception:
            return  # cannot tell: let from_pretrained decide (errors are mapped below)
        if not isinstance(cached, str):
            raise ConfigError(self._not_cached(model))

    @staticmethod
    def _not_cached(model, detail=""):
        return ("task.model %r is not a local directory and is not in this host's Hugging Face "
                "cache (HF_HOME=%s); this host has no hub access (HF_HUB_OFFLINE=1). Use a local "
                "path, pre-download the model into the cache, or use random weights "
                "(task.model: \"random:llama-1.1b\", \"random:llama-tiny\" or "
                "\"random:/path/to/config.json\")%s"
                % (model, os.environ.get("HF_HOME", "~/.cache/huggingface"), detail))

    def _attn(self, requested):
        """llem: flash_attention_2/3 without a usable flash_attn falls back to sdpa."""
        if requested in ("flash_attention_2", "flash_attention_3"):
            try:
                import flash_attn  # noqa: F401
                import flash_attn.bert_padding  # noqa: F401
                if requested == "flash_attention_3":
                    import flash_attn_interface  # noqa: F401
            except Exception:
                return "sdpa"
        return requested

    # --- lifecycle --------------------------------------------------------------------
    def synchronize(self):
        if self.torch is not None:
            self.torch.cuda.synchronize()

    def load(self, config):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        self.torch = torch
        if not torch.cuda.is_available():
            raise InfraError("no CUDA device visible (CUDA_VISIBLE_DEVICES=%r)"
                             % os.environ.get("CUDA_VISIBLE_DEVICES"))
        ts = task_settings(config)
        plan = L.load_plan(config)
        ex = L.resolve_execution(config)
        self.plan, self.execution, self.weights = plan, ex, plan["weights"]
        device = torch.device(L.DEVICE)
        dtype = self._dtype(plan["dtype"])
        kwargs = dict(plan["kwargs"])
        if "attn_implementation" in kwargs:
            kwargs["attn_implementation"] = self._attn(kwargs["attn_implementation"])
        try:
            if plan["weights"] == "random":
                cfg = dict(plan["random"]["config"])
                model_type = cfg.pop("model_type")
                hf_cfg = AutoConfig.for_model(model_type, **cfg)
                torch.manual_seed(ts["random_seed"])
                with torch.device(device):
                    model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, **kwargs)
                model.to(device)
                tok_cfg = {"vocab_size": hf_cfg.vocab_size,
                           "bos_token_id": getattr(hf_cfg, "bos_token_id", None),
                           "eos_token_id": getattr(hf_cfg, "eos_token_id", None),
                           "pad_token_id": getattr(hf_cfg, "pad_token_id", None)}
                self.byte_tok = L.ByteTokenizer(tok_cfg)
                self.pad_id = self.byte_tok.pad_id
                self.eos_ids = list(self.byte_tok.eos_ids)
                self.max_positions = getattr(hf_cfg, "max_position_embeddings", None)
            else:
                self._check_source(plan["model"])
                tokenizer = AutoTokenizer.from_pretrained(
                    plan["model"], trust_remote_code=kwargs.get("trust_remote_code", False))
                tokenizer.padding_side = "left"  # decoder-only batches: pad on the left
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                if plan["quantization"] is not None:
                    from transformers import BitsAndBytesConfig
                    q = dict(plan["quantization"])
                    if "bnb_4bit_compute_dtype" in q:
                        q["bnb_4bit_compute_dtype"] = self._dtype(q["bnb_4bit_compute_dtype"])
                    kwargs["quantization_config"] = BitsAndBytesConfig(**q)
                model = AutoModelForCausalLM.from_pretrained(plan["model"], dtype=dtype,
                                                             **kwargs)
                self.tokenizer = tokenizer
                self.pad_id = tokenizer.pad_token_id
                eos = set(L._as_id_list(getattr(model.generation_config, "eos_token_id", None)))
                eos.update(L._as_id_list(tokenizer.eos_token_id))
                self.eos_ids = sorted(eos)
            model.eval()
        except ConfigError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise self._oom("model load", config, exc)
            if isinstance(exc, TypeError):
                raise ConfigError("transformers rejected a model-loading keyword argument "
                                  "(transformers.engine_params / passthrough_kwargs): %s" % exc)
            if isinstance(exc, (OSError, ValueError)) and plan["weights"] == "pretrained":
                text = str(exc)
                if "offline" in text.lower() or "cache" in text.lower():
                    raise ConfigError(self._not_cached(plan["model"], " (%s)" % text))
                raise ConfigError("cannot load model %r: %s: %s" % (plan["model"],
                                                                    type(exc).__name__, exc))
            raise
        self.model = model

        # llem_execution (llem-owned knobs)
        observed_exec = {}
        if ex["allow_tf32"] is not None:
            self.tf32_saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = ex["allow_tf32"]
            observed_exec["allow_tf32"] = ex["allow_tf32"]
        if ex["torch_compile"]:
            # Compile the forward that generate() calls (llem wraps the module, which
            # generate() bypasses; see README).
            model.forward = torch.compile(model.forward, mode=ex["torch_compile_mode"],
                                          backend=ex["torch_compile_backend"])
            observed_exec["torch_compile"] = {"mode": ex["torch_compile_mode"],
                                              "backend": ex["torch_compile_backend"],
                                              "target": "model.forward"}
        if ex["autocast_enabled"]:
            observed_exec["autocast"] = {"enabled": True, "dtype": ex["autocast_dtype"]}

        observed = {k: L.jsonable(v) for k, v in kwargs.items() if k != "quantization_config"}
        observed["dtype"] = L.jsonable(getattr(model, "dtype", plan["dtype"]))
        observed["dtype_requested"] = plan["dtype"]
        try:
            observed["device"] = str(model.device)
        except Exception:
            pass
        q = getattr(model, "quantization_config", None) if plan["quantization"] else None
        if q is not None:
            try:
                observed["quantization_config"] = L.jsonable(q.to_dict())
            except Exception:
                observed["quantization_config"] = L.jsonable(plan["quantization"])
        observed.update(observed_exec)
        self.observed_load = observed

    def unload(self):
        torch = self.torch
        self.model = None
        self.tokenizer = None
        self.byte_tok = None
        self.ids = {}
        gc.collect()
        if torch is not None:
            if self.tf32_saved is not None:
                torch.backends.cuda.matmul.allow_tf32 = self.tf32_saved
                self.tf32_saved = None
            try:
                torch.cuda.empty_cache()
            except Exception:
                pass

    # --- prompts ----------------------------------------------------------------------
    def _max_new(self, config):
        return task_settings(config)["max_output_tokens"]

    def prepare_prompts(self, config, texts):
        if texts is None:
            raise ConfigError("the transformers engine needs the prompt texts (dataset_path)")
        limit = L.input_token_limit(
            config, self.max_positions if self.weights == "random" else None,
            self._max_new(config))
        counts = []
        self.ids = {}  # per run: the run's prompts only
        for text in texts:
            ids = self.ids.get((text, limit))
            if ids is None:
                if self.byte_tok is not None:
                    ids = self.byte_tok.encode(text, limit)
                else:
                    enc = self.tokenizer(text, truncation=limit is not None, max_length=limit)
                    ids = list(enc["input_ids"])
                if not ids:
                    raise ConfigError("a prompt tokenised to 0 tokens: %r" % text[:80])
                self.ids[(text, limit)] = ids
            counts.append(len(ids))
        self._limit = limit
        return counts

    def _tensors(self, texts):
        seqs = [self.ids[(t, self._limit)] for t in texts]
        ids, mask = L.left_pad(seqs, self.pad_id if self.pad_id is not None else 0)
        t = self.torch
        return (t.tensor(ids, dtype=t.long, device=L.DEVICE),
                t.tensor(mask, dtype=t.long, device=L.DEVICE))

    # --- generation -------------------------------------------------------------------
    def _gen_kwargs(self, config):
        plan = L.generate_plan(config, self.weights == "random")
        kw = dict(plan["kwargs"])
        if "pad_token_id" not in kw and self.pad_id is not None:
            kw["pad_token_id"] = self.pad_id
        return plan, kw

    def _autocast(self):
        ex = self.execution or {}
        if ex.get("autocast_enabled"):
            return self.torch.autocast(device_type="cuda", dtype=self._dtype(ex["autocast_dtype"]))
        return contextlib.nullcontext()

    def _generate(self, config, input_ids, mask, kw, k, started=lambda: False):
        torch = self.torch
        try:
            with torch.inference_mode(), self._autocast():
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kw)
            torch.cuda.synchronize()
        except ConfigError:
            raise
        except Exception as exc:
            if _is_oom(exc):
                raise self._oom("generate()", config, exc, k)
            if isinstance(exc, (TypeError, ValueError)) and not started():
                raise ConfigError(
                    "transformers generate() rejected the configuration (transformers."
                    "sampling_params / engine_params): %s: %s" % (type(exc).__name__, exc))
            raise
        return getattr(out, "sequences", out)

    def _counts(self, seqs, prompt_len, k):
        gen = seqs[:, prompt_len:].tolist()
        rows = len(gen)
        per = max(1, rows // k)
        counts = []
        for i in range(k):
            counts.append(sum(L.count_output_tokens(r, self.eos_ids)
                              for r in gen[i * per:(i + 1) * per]))
        steps = max([len(r) for r in gen] or [0])
        return counts, steps

    def warmup_prompt(self, config, input_tokens, text):
        _, kw = self._gen_kwargs(config)
        input_ids, mask = self._tensors([text])
        seqs = self._generate(config, input_ids, mask, kw, 1)
        return self._counts(seqs, input_ids.shape[1], 1)[0][0]

    def run_batch(self, config, batch_index, input_tokens, texts, observer):
        torch = self.torch
        plan, kw = self._gen_kwargs(config)
        k = len(texts)
        if batch_index == 0:
            torch.manual_seed(task_settings(config)["random_seed"])  # as llem, before batch 0
            torch.cuda.reset_peak_memory_stats()
        input_ids, mask = self._tensors(texts)
        streamer = None
        if plan["streaming"] and getattr(observer, "per_token", True):
            streamer = _streamer_class()(observer, k, input_ids.shape, self.eos_ids)
            kw["streamer"] = streamer
        self.last_generate_kwargs = {key: v for key, v in kw.items() if key != "streamer"}
        torch.cuda.synchronize()
        t0 = time.monotonic_ns()
        observer.prefill(list(input_tokens))
        seqs = self._generate(config, input_ids, mask, kw, k,
                              started=lambda: streamer is not None and streamer.steps > 0)
        t1 = time.monotonic_ns()
        counts, steps = self._counts(seqs, input_ids.shape[1], k)
        if streamer is None:
            # Not streamed: all tokens appear at the end. Beam search spreads the
            # per-token times evenly over the batch (estimated, "proportional"); with
            # per-token timing off (llem's latency_profiling false) no token is timed
            # and the batch's requests are reported as it ends (per_request_batch).
            for i in range(k):
                observer.first_token(i)
            observer.decode()
            if not plan["streaming"]:
                for i in range(k):
                    observer.token_times(i, L.proportional_times(t0, t1, max(1, counts[i]),
                                                                 steps))
        elif streamer.steps == 0:
            raise InfraError("generate() returned without streaming a token")
        for i in range(k):
            observer.request_end(i, counts[i])
        try:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
        except Exception:
            pass

    def run_prefill(self, config, batch_index, input_tokens, texts, observer):
        torch = self.torch
        _, kw = self._gen_kwargs(config)
        kw = L.prefill_kwargs(kw)
        input_ids, mask = self._tensors(texts)
        torch.cuda.synchronize()
        observer.prefill(list(input_tokens))
        self._generate(config, input_ids, mask, kw, len(texts))

    def latency_mode(self, config):
        plan = L.generate_plan(config, self.weights == "random")
        return {"itl_measurement_mode": plan["itl_measurement_mode"],
                "latency_estimated": plan["latency_estimated"]}

    def result_fields(self, config):
        plan, kw = self._gen_kwargs(config)
        used = self.last_generate_kwargs or {k: v for k, v in kw.items() if k != "streamer"}
        out = {
            "model_weights": self.weights,
            "observed_engine_params": dict(self.observed_load),
            "observed_sampling_params": L.jsonable(used),
            "forced_min_new_tokens": plan["forced_min_new_tokens"],
            "tokenizer": "byte-level" if self.byte_tok is not None else "pretrained",
            "max_input_tokens_applied": getattr(self, "_limit", None),
        }
        if self.plan and self.plan["random"] is not None:
            spec = self.plan["random"]
            out["random_model"] = {"kind": spec["kind"], "source": spec["source"],
                                   "config_sha256": spec["sha256"],
                                   "seed": task_settings(config)["random_seed"]}
        try:
            gc_ = copy.deepcopy(self.model.generation_config)
            gc_.update(**{k: v for k, v in used.items() if k != "pad_token_id"})
            out["effective_generation_config"] = L.jsonable(gc_.to_diff_dict())
        except Exception:
            pass
        if self.peak_mb is not None:
            out["gpu_memory"] = {"peak_allocated_mb": round(self.peak_mb, 1)}
        return out
