"""Fake tensorrt_llm for the harness's engine tests (see ../README.md).

LLM() accepts exactly the recorded TorchLlmArgs fields (the trt backend's class, in
_tensorrt_engine.py, TrtLlmArgs), else TypeError (the real ones are pydantic with
extra=forbid); generate_async(streaming=True) yields one cumulative output per new
token. FAKE_TRTLLM_NO_STREAMING=1 gives a generate_async without `streaming`.
"""
import asyncio
import dataclasses
import os
import time

from _fakelog import fixture, log
from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

__version__ = os.environ.get("FAKE_TRTLLM_VERSION", fixture("FAKE_TRTLLM_FIXTURE")["version"])
_SIG = fixture("FAKE_TRTLLM_FIXTURE")["signatures"]
STEP_S = 0.001

SamplingParams = dataclasses.make_dataclass(
    "SamplingParams", [(f["name"], object, dataclasses.field(default=None))
                       for f in _SIG["SamplingParams"]["fields"]])


class _Completion:
    def __init__(self, token_ids):
        self.token_ids = token_ids


class _Output:
    def __init__(self, prompt_token_ids, outputs, finished):
        self.prompt_token_ids = prompt_token_ids
        self.outputs = outputs
        self.finished = finished


class _Stream:
    def __init__(self, prompt, params):
        self.prompt = prompt
        self.params = params

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        n = self.params.n or 1
        tokens = [[] for _ in range(n)]
        for step in range(self.params.max_tokens or 32):
            await asyncio.sleep(STEP_S)
            for t in tokens:
                t.append(3 + step % 7)
            yield _Output(self.prompt, [_Completion(list(t)) for t in tokens],
                          step + 1 == self.params.max_tokens)


class _Tokenizer:
    def encode(self, text, *args, **kwargs):
        ids = [3 + b % 250 for b in text.encode("utf-8")]
        limit = kwargs.get("max_length")
        return ids[:limit] if kwargs.get("truncation") and limit else ids


class LLM:
    _args = TorchLlmArgs

    def __init__(self, **kwargs):
        for name in kwargs:
            if name not in self._args.model_fields:
                raise TypeError("%s: extra inputs are not permitted: %r"
                                % (self._args.__name__, name))
        if kwargs.get("load_format") == "dummy":
            if not os.path.isfile(os.path.join(kwargs["model"], "config.json")):
                raise OSError("no config.json in %s" % kwargs["model"])
        log("tensorrt_llm.%s" % type(self).__module__, kwargs=kwargs,
            cls=type(self).__module__ + "." + type(self).__name__)
        self.tokenizer = None if kwargs.get("skip_tokenizer_init") else _Tokenizer()

    def generate(self, inputs, sampling_params=None, use_tqdm=True, **kwargs):
        outs = []
        for prompt in inputs:
            n = sampling_params.n or 1
            steps = sampling_params.max_tokens or 32
            time.sleep(STEP_S * steps)
            outs.append(_Output(prompt, [_Completion([4] * steps) for _ in range(n)], True))
        log("tensorrt_llm.generate", n=len(inputs), max_tokens=sampling_params.max_tokens)
        return outs

    if os.environ.get("FAKE_TRTLLM_NO_STREAMING") == "1":
        def generate_async(self, inputs, sampling_params=None):
            raise AssertionError("no streaming in this fake")
    else:
        def generate_async(self, inputs, sampling_params=None, lora_request=None,
                           streaming=False):
            assert streaming
            return _Stream(inputs, sampling_params)

    def shutdown(self):
        log("tensorrt_llm.shutdown")
