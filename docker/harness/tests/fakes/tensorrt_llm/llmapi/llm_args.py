"""Fake TorchLlmArgs / TrtLlmArgs: pydantic-like `model_fields` with the recorded names."""
from _fakelog import fixture

_SIG = fixture("FAKE_TRTLLM_FIXTURE")["signatures"]


class TorchLlmArgs:
    model_fields = {f["name"]: None for f in _SIG["TorchLlmArgs"]["fields"]}


class TrtLlmArgs:
    model_fields = {f["name"]: None for f in _SIG["TrtLlmArgs"]["fields"]}
