"""Shared inputs of the vLLM / TensorRT-LLM logic tests (not a test module).

* `cases(engine)`: tests/fixtures/llem_mapping_cases.json, written by
  docker/engines-signatures/llem_cases.py with llem 0.7.0's own plugin code: each
  case is a config dump (as the worker sends it) and llem's kwargs for it;
* `example_runs(engine)`: the vllm/tensorrt runs of ../shared/llem/examples/*.expected.json
  (the oracle's expansions) when that directory exists, else None;
* `dump(engine, ...)`: a small config dump of that engine.
"""

import glob
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(HARNESS))
for p in (HERE, HARNESS):
    if p not in sys.path:
        sys.path.insert(0, p)
sys.dont_write_bytecode = True

CASES_PATH = os.path.join(HERE, "fixtures", "llem_mapping_cases.json")
EXAMPLES = os.environ.get("LEM_LLEM_EXAMPLES") or os.path.join(
    os.path.dirname(REPO), "shared", "llem", "examples")
RECORD_PY = os.path.join(REPO, "docker", "engines-signatures", "record.py")


def load_cases():
    with open(CASES_PATH, "r", encoding="utf-8") as fh:
        return json.load(fh)


def cases(engine):
    return [c for c in load_cases()["cases"] if c["config"]["engine"] == engine]


def example_runs(engine):
    """[(name, config)] of the examples' runs of `engine`, or None without the examples."""
    paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.expected.json")))
    if not paths:
        return None
    out = []
    for path in paths:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        for run in data.get("runs", []):
            if run["config"].get("engine") == engine:
                out.append(("%s %s" % (os.path.basename(path), run["config_hash"]),
                            run["config"]))
    return out


def record_module():
    """docker/engines-signatures/record.py as a module (for its pin constants)."""
    spec = importlib.util.spec_from_file_location("lem_record_signatures", RECORD_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dump(engine, model="org/model", section=None, n_prompts=4, max_out=16, preset=None,
         latency_profiling=False, passthrough=None):
    """A config dump of `engine` (`section` = its {engine_params, sampling_params})."""
    return {
        "task": {"model": model, "dataset": {"source": "aienergyscore", "n_prompts": n_prompts,
                                             "order": "interleaved"},
                 "max_input_tokens": 64, "max_output_tokens": max_out, "random_seed": 42},
        "engine": engine,
        "serving_mode": "offline",
        "measurement": {"latency_profiling": latency_profiling},
        "sampling_preset": preset,
        "transformers": None, "vllm": None, "tensorrt": None,
        engine: section,
        "server": None,
        "offline": {"warmup": {"enabled": True, "n_prompts": 2, "thermal_floor_seconds": 30.0}},
        "passthrough_kwargs": passthrough,
    }
