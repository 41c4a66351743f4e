"""Fake tensorrt_llm.llmapi: config classes that keep their kwargs, and the enums."""
import enum


class _Config:
    model_fields = {}

    def __init__(self, **kwargs):
        for name in kwargs:
            if self.model_fields and name not in self.model_fields:
                raise TypeError("%s: extra field %r" % (type(self).__name__, name))
        self.kwargs = kwargs

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, self.kwargs)


class KvCacheConfig(_Config):
    model_fields = {"free_gpu_memory_fraction": None, "enable_block_reuse": None,
                    "max_tokens": None}


class SchedulerConfig(_Config):
    model_fields = {"capacity_scheduling_policy": None}


class QuantConfig(_Config):
    model_fields = {"quant_algo": None, "kv_cache_quant_algo": None}


class BuildCacheConfig(_Config):
    model_fields = {"cache_root": None}


class QuantAlgo(enum.Enum):
    FP8 = "FP8"
    W4A16_AWQ = "W4A16_AWQ"


class CapacitySchedulerPolicy(enum.Enum):
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"
