#!/usr/bin/env python3
"""Records how llem 0.7.0 itself maps vllm:/tensorrt: configs to library kwargs.

    .venv-llem/bin/python docker/engines-signatures/llem_cases.py [--out FILE] [--check]

Run with a Python that has llenergymeasure==0.7.0 installed (the oracle venv of
../shared/llem/README.md: pydantic, PyYAML, platformdirs, numpy, llem with
--no-deps). Neither vLLM nor TensorRT-LLM is needed: llem's own plugin methods
(`VLLMEngine._build_llm_kwargs`, `_build_sampling_kwargs`, `_build_beam_search_params`,
`TensorRTEngine._resolve_llm_class`, `_build_llm_kwargs`, `_build_sampling_kwargs`)
are called on each config, with the few library classes they construct
(`vllm.BeamSearchParams`, `tensorrt_llm.llmapi.QuantConfig` / `QuantAlgo` /
`KvCacheConfig` / `SchedulerConfig` / `CapacitySchedulerPolicy` / `BuildCacheConfig`)
replaced by recorders that keep the class name and the keyword arguments.

Cases: every vllm/tensorrt run of ../shared/llem/examples/*.expected.json, plus
hand-written configs that set every field of llem's vllm and tensorrt sections
(FORMAT.md 3.9, 3.10) and the paths that depend on the environment (build cache,
remote code), latency profiling and presets. Each case stores the config dump (what
the worker sends the harness) and llem's kwargs; docker/harness/tests compare the
harness's mapping with them. Output: docker/harness/tests/fixtures/llem_mapping_cases.json.
"""

import argparse
import enum
import glob
import json
import os
import pathlib
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "docker", "harness", "tests", "fixtures",
                           "llem_mapping_cases.json")
EXAMPLES = os.environ.get("LEM_LLEM_EXAMPLES") or os.path.join(
    os.path.dirname(REPO), "shared", "llem", "examples")
ENGINE_DIR = "/tmp/lem-llem-cases-engine"  # a fake prebuilt engine for engine_path


# --- recorders for the library classes llem constructs -----------------------------------
class Recorded:
    def __init__(self, cls_name, kwargs):
        self.cls_name = cls_name
        self.kwargs = kwargs


def recorder(cls_name):
    def make(**kwargs):
        return Recorded(cls_name, kwargs)
    make.__name__ = cls_name
    return make


class QuantAlgo(enum.Enum):
    FP8 = "FP8"
    W4A16_AWQ = "W4A16_AWQ"
    W8A16 = "W8A16"
    NVFP4 = "NVFP4"
    INT8 = "INT8"


class CapacitySchedulerPolicy(enum.Enum):
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    MAX_UTILIZATION = "MAX_UTILIZATION"
    STATIC_BATCH = "STATIC_BATCH"


def install_stubs():
    vllm = types.ModuleType("vllm")
    vllm.BeamSearchParams = recorder("BeamSearchParams")
    vllm.SamplingParams = recorder("SamplingParams")
    trt = types.ModuleType("tensorrt_llm")
    trt.__path__ = []
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.QuantConfig = recorder("QuantConfig")
    llmapi.KvCacheConfig = recorder("KvCacheConfig")
    llmapi.SchedulerConfig = recorder("SchedulerConfig")
    llmapi.BuildCacheConfig = recorder("BuildCacheConfig")
    llmapi.QuantAlgo = QuantAlgo
    llmapi.CapacitySchedulerPolicy = CapacitySchedulerPolicy
    trt.llmapi = llmapi
    trt.LLM = type("LLM", (), {"__module__": "tensorrt_llm"})
    trt.SamplingParams = recorder("SamplingParams")
    engine = types.ModuleType("tensorrt_llm._tensorrt_engine")
    engine.LLM = type("LLM", (), {"__module__": "tensorrt_llm._tensorrt_engine"})
    sys.modules.update({"vllm": vllm, "tensorrt_llm": trt, "tensorrt_llm.llmapi": llmapi,
                        "tensorrt_llm._tensorrt_engine": engine})


def jsonify(value):
    """llem's kwargs as JSON: sets as {"__set__": sorted}, recorded classes as
    {"__class__": name, "kwargs": {...}}, enum members as {"__enum__": "Cls.NAME"},
    paths as {"__path__": str}."""
    if isinstance(value, Recorded):
        return {"__class__": value.cls_name, "kwargs": jsonify(value.kwargs)}
    if isinstance(value, enum.Enum):
        return {"__enum__": "%s.%s" % (type(value).__name__, value.name)}
    if isinstance(value, pathlib.PurePath):
        return {"__path__": str(value)}
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(jsonify(v) for v in value)}
    if isinstance(value, dict):
        return {str(k): jsonify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonify(v) for v in value]
    return value


# --- cases -------------------------------------------------------------------------------
def base(engine, **extra):
    cfg = {"task": {"model": "org/model", "dataset": {"n_prompts": 4},
                    "max_output_tokens": 32},
           "engine": engine, "serving_mode": "offline"}
    cfg.update(extra)
    return cfg


VLLM_ALL_ENGINE = {
    "dtype": "bfloat16", "gpu_memory_utilization": 0.8, "cpu_offload_gb": 1.5,
    "block_size": 16, "kv_cache_dtype": "fp8", "enforce_eager": True,
    "enable_chunked_prefill": True, "max_num_seqs": 8, "max_num_batched_tokens": 4096,
    "max_model_len": 2048, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
    "distributed_executor_backend": "mp", "enable_prefix_caching": True,
    "quantization": "fp8",
    "speculative_config": {"method": "ngram", "num_speculative_tokens": 3,
                           "prompt_lookup_max": 4, "prompt_lookup_min": 2},
    "offload_group_size": 0, "offload_num_in_group": 1, "offload_prefetch_step": 1,
    "offload_params": ["embed_tokens"], "disable_custom_all_reduce": True,
    "kv_cache_memory_bytes": 2000000000,
    "compilation_config": {"mode": 3, "cudagraph_capture_sizes": [1, 2, 4, 8],
                           "max_cudagraph_capture_size": 8, "backend": "inductor",
                           "local_cache_dir": "/tmp/x", "compilation_time": 1.0},
    "attention": {"backend": "FLASH_ATTN", "flash_attn_version": 3},
}
VLLM_ALL_SAMPLING = {
    "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.05,
    "min_p": 0.05, "min_tokens": 4, "presence_penalty": 0.1, "frequency_penalty": 0.2,
    "ignore_eos": True, "n": 2,
}
VLLM_ALL_SPEC = {
    "code_revision": "main", "disable_padded_drafter_batch": True, "draft_tensor_parallel_size": 1,
    "enforce_eager": True, "max_model_len": 1024, "method": "draft_model", "model": "org/draft",
    "moe_backend": "auto", "num_speculative_tokens": 2, "parallel_drafting": False,
    "quantization": "fp8", "rejection_sample_method": "strict", "revision": "main",
    "suffix_decoding_max_cached_requests": 10, "suffix_decoding_max_spec_factor": 1.0,
    "suffix_decoding_max_tree_depth": 8, "suffix_decoding_min_token_prob": 0.1,
    "synthetic_acceptance_rate": 0.5, "tensor_parallel_size": 1,
    "use_local_argmax_reduction": True, "speculative_token_tree": "[(0,)]",
    "draft_load_config": None, "draft_model_config": None, "draft_parallel_config": None,
    "target_model_config": None, "target_parallel_config": None,
}
VLLM_ALL_COMPILATION = {
    "backend": "inductor", "cache_dir": "/tmp/c", "compilation_time": 1.0,
    "compile_cache_save_format": "binary", "compile_mm_encoder": False,
    "compile_ranges_endpoints": [8, 16], "compile_sizes": [1, 2], "cudagraph_capture_sizes": [1, 2],
    "cudagraph_copy_inputs": False, "cudagraph_mm_encoder": False, "cudagraph_mode": "FULL",
    "cudagraph_num_of_warmups": 1, "cudagraph_specialize_lora": False, "custom_ops": ["none"],
    "debug_dump_path": "/tmp/d", "disabled_custom_ops": ["x"], "dynamic_shapes_config": {},
    "enabled_custom_ops": ["y"], "encoder_cudagraph_max_images_per_batch": 1,
    "encoder_cudagraph_token_budgets": [1], "fast_moe_cold_start": True,
    "inductor_compile_config": {}, "inductor_passes": {}, "local_cache_dir": "/tmp/l",
    "max_cudagraph_capture_size": 2, "mode": 3, "pass_config": {}, "splitting_ops": [],
    "static_all_moe_layers": [], "static_forward_context": {}, "traced_files": [],
    "use_inductor_graph_partition": False,
}

TRT_ALL_ENGINE = {
    "max_batch_size": 8, "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
    "max_input_len": 512, "max_seq_len": 1024, "max_num_tokens": 4096, "dtype": "bfloat16",
    "backend": "pytorch",
    "kv_cache_config": {"free_gpu_memory_fraction": 0.8, "enable_block_reuse": True},
    "scheduler_config": {"capacity_scheduling_policy": "GUARANTEED_NO_EVICT"},
}
TRT_ALL_SAMPLING = {
    "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.05,
    "min_p": 0.05, "min_tokens": 4, "n": 1, "ignore_eos": True,
}


def hand_cases():
    cases = []

    def add(name, cfg, environ=None):
        cases.append((name, cfg, environ or {}))

    add("vllm every engine_params and sampling_params field",
        base("vllm", vllm={"engine_params": dict(VLLM_ALL_ENGINE),
                           "sampling_params": dict(VLLM_ALL_SAMPLING)}))
    ep = dict(VLLM_ALL_ENGINE, speculative_config=VLLM_ALL_SPEC,
              compilation_config=VLLM_ALL_COMPILATION, attention={"backend": "FLASHINFER"})
    add("vllm every speculative_config and compilation_config field",
        base("vllm", vllm={"engine_params": ep}))
    add("vllm parallel and offload knobs", base("vllm", vllm={"engine_params": {
        "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "offload_group_size": 4,
        "offload_num_in_group": 2, "offload_prefetch_step": 2,
        "offload_params": ["gate_up_proj", "down_proj"]}}))
    add("vllm beam_search", base("vllm", vllm={"engine_params": {
        "beam_search": {"beam_width": 4, "length_penalty": 1.2, "early_stopping": None}}}))
    add("vllm latency_profiling", base("vllm", measurement={"latency_profiling": True},
                                       vllm={"engine_params": {"max_num_seqs": 4}}))
    add("vllm no section", base("vllm"))
    add("vllm empty sections", base("vllm", vllm={"engine_params": {}, "sampling_params": {}}))
    add("vllm passthrough keys", base("vllm", vllm={
        "engine_params": {"max_num_partial_prefills": 2, "async_scheduling": True,
                          "no_such_engine_arg": 1, "swap_space": 4},
        "sampling_params": {"seed": 7, "stop": ["\n"], "max_tokens": 5,
                            "no_such_sampling_arg": True}}))
    add("vllm sampling_preset creative", base("vllm", sampling_preset="creative"))
    add("vllm sampling_preset deterministic over explicit top_p", base(
        "vllm", sampling_preset="deterministic", vllm={"sampling_params": {"top_p": 0.5}}))
    add("vllm top-level passthrough_kwargs (unused by llem for vllm)", base(
        "vllm", passthrough_kwargs={"foo": 1}))
    add("vllm remote code allowed by the host", base("vllm"), {"LLEM_TRUST_REMOTE_CODE": "1"})
    add("vllm max_output_tokens null", dict(base("vllm"), task={"model": "org/model",
                                                                "max_output_tokens": None}))

    add("tensorrt every field (pytorch backend)",
        base("tensorrt", tensorrt={"engine_params": dict(TRT_ALL_ENGINE),
                                   "sampling_params": dict(TRT_ALL_SAMPLING)}))
    add("tensorrt parallelism and n", base("tensorrt", tensorrt={
        "engine_params": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
        "sampling_params": {"n": 2, "top_k": 4, "temperature": 0.9}}))
    add("tensorrt trt backend with fast_build and quant_config", base("tensorrt", tensorrt={
        "engine_params": dict(TRT_ALL_ENGINE, backend="trt", fast_build=True,
                              quant_config={"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"})}))
    add("tensorrt trt backend, build cache on", base("tensorrt", tensorrt={
        "engine_params": {"backend": "trt"}}), {"LLEM_TRT_BUILD_CACHE_ENABLED": "1"})
    add("tensorrt trt backend, build cache at a path", base("tensorrt", tensorrt={
        "engine_params": {"backend": "trt"}}),
        {"LLEM_TRT_BUILD_CACHE_ENABLED": "1", "LLEM_TRT_BUILD_CACHE_PATH": "/cache/trt"})
    add("tensorrt pytorch backend, build cache on (ignored)", base("tensorrt", tensorrt={
        "engine_params": {"backend": "pytorch"}}), {"LLEM_TRT_BUILD_CACHE_ENABLED": "1"})
    add("tensorrt engine_path", base("tensorrt", tensorrt={
        "engine_params": {"backend": "trt", "engine_path": ENGINE_DIR, "max_batch_size": 4}}))
    add("tensorrt latency_profiling", base("tensorrt", measurement={"latency_profiling": True}))
    add("tensorrt no section", base("tensorrt"))
    add("tensorrt passthrough keys", base("tensorrt", tensorrt={
        "engine_params": {"enable_chunked_prefill": True, "no_such_llm_arg": 1},
        "sampling_params": {"stop": ["\n"], "beam_width_array": None, "no_such": 2}}))
    add("tensorrt sampling_preset standard", base("tensorrt", sampling_preset="standard"))
    add("tensorrt empty kv_cache_config / scheduler_config", base("tensorrt", tensorrt={
        "engine_params": {"kv_cache_config": {}, "scheduler_config": {"x": None}}}))
    return cases


def example_cases():
    out = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*.expected.json"))):
        with open(path) as fh:
            data = json.load(fh)
        seen = set()
        for run in data.get("runs", []):
            cfg = run["config"]
            if cfg.get("engine") not in ("vllm", "tensorrt"):
                continue
            if run["config_hash"] in seen:
                continue
            seen.add(run["config_hash"])
            out.append(("example %s %s" % (os.path.basename(path).split(".")[0],
                                           run["config_hash"]), cfg, {}))
    return out


def llem_outputs(dump, environ):
    from llenergymeasure.config.models import ExperimentConfig
    from llenergymeasure.engines.tensorrt.plugin import TensorRTEngine
    from llenergymeasure.engines.vllm.plugin import VLLMEngine

    saved = {k: os.environ.get(k) for k in
             ("LLEM_TRUST_REMOTE_CODE", "LLEM_TRT_BUILD_CACHE_ENABLED", "LLEM_TRT_BUILD_CACHE_PATH")}
    for k in saved:
        os.environ.pop(k, None)
    os.environ.update(environ)
    try:
        cfg = ExperimentConfig.model_validate(dump)
        if cfg.engine.value == "vllm":
            eng = VLLMEngine()
            ctor = eng._build_llm_kwargs(cfg)
            beam = cfg.engine_sub_dict("beam_search")
            if beam is not None:
                sampling = VLLMEngine._build_beam_search_params(cfg, beam)
                return {"constructor": jsonify(ctor), "sampling_class": "BeamSearchParams",
                        "sampling": jsonify(sampling.kwargs)}
            return {"constructor": jsonify(ctor), "sampling_class": "SamplingParams",
                    "sampling": jsonify(VLLMEngine._build_sampling_kwargs(cfg))}
        eng = TensorRTEngine()
        cls = TensorRTEngine._resolve_llm_class(cfg)
        return {"constructor_class": "%s.LLM" % cls.__module__,
                "constructor": jsonify(eng._build_llm_kwargs(cfg)),
                "sampling_class": "SamplingParams",
                "sampling": jsonify(eng._build_sampling_kwargs(cfg))}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    install_stubs()
    import llenergymeasure
    from llenergymeasure.config.models import ExperimentConfig

    os.makedirs(ENGINE_DIR, exist_ok=True)
    with open(os.path.join(ENGINE_DIR, "config.json"), "w") as fh:
        json.dump({"pretrained_config": {"mapping": {"tp_size": 1}}}, fh)
    open(os.path.join(ENGINE_DIR, "rank0.engine"), "w").close()

    cases = []
    for name, raw, environ in hand_cases() + example_cases():
        dump = ExperimentConfig.model_validate(raw).model_dump(mode="json")
        cases.append({"name": name, "environ": environ, "config": dump,
                      "llem": llem_outputs(dump, environ)})
    data = {"llem_version": llenergymeasure.__version__,
            "generated_by": "docker/engines-signatures/llem_cases.py",
            "engine_dir": ENGINE_DIR, "cases": cases}
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if args.check:
        with open(args.out) as fh:
            same = json.load(fh) == json.loads(text)
        print("llem_cases: %s %s" % (args.out, "matches" if same else "DIFFERS"), file=sys.stderr)
        return 0 if same else 1
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print("llem_cases: wrote %d cases to %s" % (len(cases), args.out), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
