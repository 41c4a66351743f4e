"""Fake nested configs: dataclasses with the recorded fields (init=False kept)."""
import dataclasses

from _fakelog import fixture

_SIG = fixture("FAKE_VLLM_FIXTURE")["signatures"]


def _make(name):
    return dataclasses.make_dataclass(name, [
        (f["name"], object, dataclasses.field(default=None, init=f.get("init", True)))
        for f in _SIG[name]["fields"] if not f["name"].startswith("_")])


SpeculativeConfig = _make("SpeculativeConfig")
CompilationConfig = _make("CompilationConfig")
AttentionConfig = _make("AttentionConfig")
