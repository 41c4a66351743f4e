"""Fake vllm for the harness's engine tests (see ../README.md).

LLM() accepts exactly the recorded LLM.__init__ parameters and EngineArgs fields
(else TypeError, as EngineArgs(**kwargs) raises); its llm_engine emits one token per
request (per sequence of n) per step(), so the harness's streaming loop runs as it
would on vLLM's V1 engine.
"""
import dataclasses
import inspect
import os
import time

from _fakelog import fixture, log
from vllm.engine.arg_utils import EngineArgs
from vllm.sampling_params import RequestOutputKind, SamplingParams
# As vLLM 0.19.1: BeamSearchParams is not exported from the package (only from
# vllm.sampling_params).

__version__ = os.environ.get("FAKE_VLLM_VERSION", fixture("FAKE_VLLM_FIXTURE")["version"])
_SIG = fixture("FAKE_VLLM_FIXTURE")["signatures"]
STEP_S = 0.001


class _Completion:
    def __init__(self, index, token_ids):
        self.index = index
        self.token_ids = token_ids


class _Output:
    def __init__(self, request_id, prompt_token_ids, outputs, finished):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.outputs = outputs
        self.finished = finished


class _Engine:
    def __init__(self):
        self.requests = {}
        self.order = []

    def add_request(self, request_id, prompt, params, arrival_time=None, lora_request=None,
                    tokenization_kwargs=None, trace_headers=None, priority=0,
                    prompt_text=None):
        if not isinstance(request_id, str):
            raise TypeError("request_id must be a string")
        self.requests[request_id] = {"prompt": list(prompt["prompt_token_ids"]),
                                     "params": params, "made": 0,
                                     "tokens": [[] for _ in range(params.n or 1)]}
        self.order.append(request_id)
        return request_id

    def has_unfinished_requests(self):
        return bool(self.order)

    def abort_request(self, request_ids, internal=False):
        for rid in request_ids:
            if rid in self.requests:
                del self.requests[rid]
                self.order.remove(rid)

    def step(self):
        time.sleep(STEP_S)
        outs = []
        for rid in list(self.order):
            r = self.requests[rid]
            p = r["params"]
            r["made"] += 1
            for seq in r["tokens"]:
                seq.append(3 + r["made"] % 7)
            finished = r["made"] >= p.max_tokens
            kind = p.output_kind
            if kind == RequestOutputKind.DELTA:
                seqs = [_Completion(j, [t[-1]]) for j, t in enumerate(r["tokens"])]
            else:
                seqs = [_Completion(j, list(t)) for j, t in enumerate(r["tokens"])]
            if finished:
                del self.requests[rid]
                self.order.remove(rid)
            if kind != RequestOutputKind.FINAL_ONLY or finished:
                outs.append(_Output(rid, r["prompt"], seqs, finished))
        return outs


class _Tokenizer:
    eos_token_id = 2

    def encode(self, text, truncation=None, max_length=None, add_special_tokens=True):
        ids = [3 + b % 250 for b in text.encode("utf-8")]
        return ids[:max_length] if truncation and max_length else ids


def _llm_signature():
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for p in _SIG["LLM.__init__"]["params"]:
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if p["kind"] == "positional_or_keyword"
                else inspect.Parameter.KEYWORD_ONLY)
        params.append(inspect.Parameter(p["name"], kind,
                                        default=inspect.Parameter.empty if p["required"]
                                        else None))
    if _SIG["LLM.__init__"].get("var_keyword"):
        params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


class LLM:
    def __init__(self, model, **kwargs):
        accepted = {p["name"] for p in _SIG["LLM.__init__"]["params"]}
        accepted |= {f.name for f in dataclasses.fields(EngineArgs)}
        for name in kwargs:
            if name not in accepted:
                raise TypeError("EngineArgs.__init__() got an unexpected keyword argument %r"
                                % name)
        if kwargs.get("load_format") == "dummy":
            if not os.path.isfile(os.path.join(model, "config.json")):
                raise OSError("no config.json in %s" % model)
        log("vllm.LLM", model=model, kwargs=kwargs)
        self.llm_engine = _Engine()

    __init__.__signature__ = _llm_signature()

    def get_tokenizer(self):
        return _Tokenizer()

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None,
                 priority=None, tokenization_kwargs=None):
        params = sampling_params.clone()
        params.output_kind = RequestOutputKind.FINAL_ONLY
        for i, prompt in enumerate(prompts):
            self.llm_engine.add_request("g%d" % i, prompt, params)
        outs = []
        while self.llm_engine.has_unfinished_requests():
            outs.extend(o for o in self.llm_engine.step() if o.finished)
        outs.sort(key=lambda o: int(o.request_id[1:]))
        log("vllm.generate", n=len(prompts), max_tokens=params.max_tokens)
        return outs

    def beam_search(self, prompts, params, lora_request=None, use_tqdm=False,
                    concurrency_limit=None):
        class Seq:
            def __init__(self, tokens):
                self.tokens = tokens

        class Out:
            def __init__(self, sequences):
                self.sequences = sequences

        time.sleep(STEP_S * params.max_tokens)
        log("vllm.beam_search", n=len(prompts), beam_width=params.beam_width)
        return [Out([Seq(list(p["prompt_token_ids"]) + [5] * params.max_tokens)
                     for _ in range(params.beam_width)]) for p in prompts]
