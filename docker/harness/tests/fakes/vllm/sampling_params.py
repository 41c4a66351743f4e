"""Fake vllm.sampling_params: the recorded field names, real-looking defaults."""
import copy
import enum

from _fakelog import fixture

_SIG = fixture("FAKE_VLLM_FIXTURE")["signatures"]


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class _Struct:
    """msgspec.Struct-like: keyword-only construction over __struct_fields__."""

    __struct_fields__ = ()
    _defaults = {}

    def __init__(self, **kwargs):
        for name in kwargs:
            if name not in self.__struct_fields__:
                raise TypeError("Unexpected keyword argument %r" % name)
        for name in self.__struct_fields__:
            setattr(self, name, kwargs.get(name, self._defaults.get(name)))

    def clone(self):
        return copy.copy(self)


class SamplingParams(_Struct):
    __struct_fields__ = tuple(f["name"] for f in _SIG["SamplingParams"]["fields"])
    _defaults = {"n": 1, "max_tokens": 16, "min_tokens": 0, "ignore_eos": False,
                 "detokenize": True, "output_kind": RequestOutputKind.CUMULATIVE}


class BeamSearchParams(_Struct):
    __struct_fields__ = tuple(f["name"] for f in _SIG["BeamSearchParams"]["fields"])
    _defaults = {"ignore_eos": False, "temperature": 0.0, "length_penalty": 1.0}
