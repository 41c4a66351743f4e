"""Fake EngineArgs: a dataclass with the recorded field names."""
import dataclasses

from _fakelog import fixture

_SIG = fixture("FAKE_VLLM_FIXTURE")["signatures"]

EngineArgs = dataclasses.make_dataclass(
    "EngineArgs", [(f["name"], object, dataclasses.field(default=None))
                   for f in _SIG["EngineArgs"]["fields"]])
