"""Tests of the TensorRT-LLM engine's mapping against llem 0.7.0 and TensorRT-LLM
1.2.1's recorded signatures. No tensorrt_llm needed.

    python3 -m unittest discover -s docker/harness/tests -v
"""

import ast
import copy
import json
import os
import tempfile
import unittest

import engine_fixtures as F
from engines import engine_kwargs as K
from engines import tensorrt_logic as T
from engines.tensorrt import TensorRTEngine, build_objects
from protocol import ConfigError

FIXTURE = K.load_fixture("tensorrt_llm")
LLEM = K.load_fixture("llem")
SIG = T.signature_from_fixture()


def llem_fields(cls):
    return [f["name"] for f in LLEM["sections"]["tensorrt"][cls]]


def plan(cfg, environ=None, **kw):
    return T.plan(cfg, SIG, environ={} if environ is None else environ,
                  check_engine_dir=False, **kw)


class FixtureVsPinTests(unittest.TestCase):
    """Fails loudly when the recorded signatures are not those of the pinned release."""

    def test_the_fixture_is_tensorrt_llm_at_the_pin(self):
        self.assertEqual(
            FIXTURE["version"], T.TENSORRT_LLM_PIN,
            "engines/signatures/tensorrt_llm.json records TensorRT-LLM %s but the harness "
            "pins %s: re-run docker/engines-signatures/record.py after changing the pin"
            % (FIXTURE["version"], T.TENSORRT_LLM_PIN))
        self.assertEqual(FIXTURE["package"], "tensorrt_llm")
        self.assertEqual(F.record_module().TENSORRT_LLM_PIN, T.TENSORRT_LLM_PIN)

    def test_the_fixture_says_where_it_came_from(self):
        src = FIXTURE["source"]
        self.assertRegex(src["sha256"], r"^[0-9a-f]{64}$")
        if src["kind"] == "llem-discovered-schema":
            # Read from llem 0.7.0's record of the 1.2.1 release image, because the real
            # wheel lives on pypi.nvidia.com only (PyPI serves a wheel_stub sdist).
            self.assertEqual(src["wheel"], "llenergymeasure-0.7.0-py3-none-any.whl")
            self.assertIn(":%s" % T.TENSORRT_LLM_PIN, src["discovered_from"])
            self.assertIn("wheel_stub", json.dumps(FIXTURE["pypi"]))
        else:
            self.assertEqual(src["kind"], "wheel")

    def test_the_dockerfile_pins_the_same_version(self):
        path = os.path.join(F.REPO, "docker", "tensorrt", "Dockerfile")
        if not os.path.exists(path):
            self.skipTest("docker/tensorrt/Dockerfile not written yet")
        with open(path) as fh:
            text = fh.read()
        self.assertIn("tensorrt-llm==%s" % T.TENSORRT_LLM_PIN, text)
        self.assertIn("release:%s" % T.TENSORRT_LLM_PIN, text)


class LlemFieldCoverageTests(unittest.TestCase):
    def test_declared_defaults_are_llems(self):
        self.assertEqual(list(T.ENGINE_DEFAULTS), llem_fields("EngineParams"))
        self.assertEqual(list(T.SAMPLING_DEFAULTS), llem_fields("SamplingParams"))
        for cls, ours in (("EngineParams", T.ENGINE_DEFAULTS),
                          ("SamplingParams", T.SAMPLING_DEFAULTS)):
            for f in LLEM["sections"]["tensorrt"][cls]:
                self.assertEqual(ast.literal_eval(f["default"]), ours[f["name"]],
                                 "%s.%s default" % (cls, f["name"]))

    def test_every_engine_param_reaches_the_args_class_of_its_backend(self):
        trt_only = {"fast_build", "quant_config"}
        for name in llem_fields("EngineParams"):
            with self.subTest(field=name):
                if name == "backend":
                    self.assertIn(name, T.HANDLED_BY_MAPPING)  # selects the class
                    continue
                self.assertTrue(SIG.accepts(T.CALL_TRT, name),
                                "TrtLlmArgs %s lacks %s" % (SIG.version, name))
                if name in trt_only:
                    self.assertIn(name, T.HANDLED_BY_MAPPING)
                    self.assertFalse(SIG.accepts(T.CALL_TORCH, name))
                else:
                    self.assertTrue(SIG.accepts(T.CALL_TORCH, name),
                                    "TorchLlmArgs %s lacks %s" % (SIG.version, name))

    def test_every_sampling_param_is_a_sampling_params_field(self):
        for name in llem_fields("SamplingParams") + [
                "seed", "max_tokens", "return_perf_metrics", "end_id", "pad_id", "detokenize",
                "ignore_eos"]:
            with self.subTest(field=name):
                self.assertTrue(SIG.accepts(T.CALL_SAMPLING, name), name)

    def test_keywords_the_harness_adds_exist_on_both_backends(self):
        for call in (T.CALL_TORCH, T.CALL_TRT):
            for name in ("model", "load_format", "skip_tokenizer_init"):
                self.assertTrue(SIG.accepts(call, name), "%s %s" % (call, name))
        self.assertTrue(SIG.accepts(T.CALL_TRT, "enable_build_cache"))
        lf = next(f for f in FIXTURE["signatures"]["TorchLlmArgs"]["fields"]
                  if f["name"] == "load_format")
        self.assertIn("'dummy'", lf["annotation"])

    def test_unrecorded_calls_are_named(self):
        self.assertIsNone(FIXTURE["signatures"]["LLM.generate_async"])
        self.assertIn("LLM.generate_async", FIXTURE["unrecorded"])
        self.assertIn(T.CALL_KV_CACHE, SIG.describe()["unchecked"])


class LlemOracleTests(unittest.TestCase):
    def test_cases_cover_every_declared_field(self):
        seen = set()
        for c in F.cases("tensorrt"):
            sec = c["config"]["tensorrt"] or {}
            for part, defaults in (("engine_params", T.ENGINE_DEFAULTS),
                                   ("sampling_params", T.SAMPLING_DEFAULTS)):
                for k, v in (sec.get(part) or {}).items():
                    if v not in (None, defaults.get(k)):
                        seen.add(k)
        missing = (set(T.ENGINE_DEFAULTS) | set(T.SAMPLING_DEFAULTS)) - seen
        self.assertEqual(missing, set())

    def test_mapping_equals_llems(self):
        cases = F.cases("tensorrt")
        self.assertGreater(len(cases), 15)
        for c in cases:
            with self.subTest(case=c["name"]):
                ctor = K.jsonable(T.llem_constructor_kwargs(c["config"], c["environ"],
                                                            check_engine_dir=False))
                self.assertEqual(ctor, c["llem"]["constructor"])
                self.assertEqual(T.llem_constructor_class(c["config"]),
                                 c["llem"]["constructor_class"])
                self.assertEqual(T.llem_sampling_kwargs(c["config"]), c["llem"]["sampling"])


class ExamplesTests(unittest.TestCase):
    def _check(self, name, config):
        p = plan(config)
        self.assertEqual(p["dropped"], [], name)
        self.assertTrue(p["library"]["matches_pin"])

    def test_recorded_example_runs_map_without_drops(self):
        runs = [c for c in F.cases("tensorrt") if c["name"].startswith("example ")]
        self.assertGreaterEqual(len(runs), 8)
        for c in runs:
            with self.subTest(case=c["name"]):
                self._check(c["name"], c["config"])

    def test_shared_examples_map_without_drops(self):
        runs = F.example_runs("tensorrt")
        if runs is None:
            self.skipTest("no ../shared/llem/examples here (LEM_LLEM_EXAMPLES); the recorded "
                          "copies above still ran")
        self.assertGreater(len(runs), 10)
        for name, config in runs:
            with self.subTest(run=name):
                self._check(name, config)


class PlanTests(unittest.TestCase):
    def test_backend_selects_the_class_and_its_signature(self):
        cfg = F.dump("tensorrt", section={"engine_params": {"backend": "trt", "fast_build": True,
                                                            "max_batch_size": 8}})
        p = plan(cfg)
        self.assertEqual(p["constructor_class"], T.CLASS_TRT)
        self.assertTrue(p["constructor"]["fast_build"])
        self.assertEqual(p["dropped"], [])
        cfg["tensorrt"]["engine_params"]["backend"] = "pytorch"
        p = plan(cfg)
        self.assertEqual(p["constructor_class"], T.CLASS_PYTORCH)
        self.assertNotIn("fast_build", p["constructor"])  # llem: trt only
        cfg["tensorrt"]["engine_params"]["backend"] = "onnx"
        with self.assertRaises(ConfigError):
            plan(cfg)

    def test_a_trt_only_passthrough_on_pytorch_is_dropped(self):
        cfg = F.dump("tensorrt", section={"engine_params": {"build_config": {"x": 1}}})
        p = plan(cfg)
        self.assertEqual([d["key"] for d in p["dropped"]], ["tensorrt.engine_params.build_config"])
        self.assertEqual(p["dropped"][0]["call"], T.CALL_TORCH)

    def test_random_model(self):
        p = plan(F.dump("tensorrt", model="random:llama-tiny"), model_path="/tmp/m")
        self.assertEqual(p["constructor"], {"model": "/tmp/m", "load_format": "dummy",
                                            "skip_tokenizer_init": True})
        self.assertEqual(p["sampling"], {"seed": 42, "max_tokens": 16, "ignore_eos": True,
                                         "detokenize": False, "end_id": 2, "pad_id": 2})
        self.assertTrue(p["forced_max_tokens"])
        self.assertEqual(p["dropped"], [])

    def test_engine_path(self):
        cfg = F.dump("tensorrt", section={"engine_params": {"backend": "trt",
                                                            "engine_path": "/nonexistent"}})
        with self.assertRaises(ConfigError) as e:
            T.plan(cfg, SIG, environ={})
        self.assertIn("engine_path validation failed", e.exception.message)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as fh:
                json.dump({"pretrained_config": {"mapping": {"tp_size": 1}}}, fh)
            open(os.path.join(d, "rank0.engine"), "w").close()
            cfg["tensorrt"]["engine_params"]["engine_path"] = d
            p = T.plan(cfg, SIG, environ={})
            self.assertEqual(p["constructor"], {"model": d})
            self.assertEqual(p["weights"], "engine")
            self.assertEqual(T.engine_dir_errors(d, 2),
                             ["tp_size mismatch: engine was built with tp_size=1 but config "
                              "requests tp_size=2",
                              "rank1.engine not found in engine directory: %s" % d])
        cfg["tensorrt"]["engine_params"]["backend"] = "pytorch"
        with self.assertRaises(ConfigError):
            plan(cfg)

    def test_latency_profiling_asks_for_perf_metrics(self):
        p = plan(F.dump("tensorrt", latency_profiling=True))
        self.assertIs(p["sampling"]["return_perf_metrics"], True)

    def test_null_max_output_tokens_means_256(self):
        cfg = F.dump("tensorrt")
        cfg["task"]["max_output_tokens"] = None
        self.assertNotIn("max_tokens", T.llem_sampling_kwargs(cfg))
        self.assertEqual(plan(cfg)["sampling"]["max_tokens"], 256)

    def test_section_keys_are_checked(self):
        with self.assertRaises(ConfigError) as e:
            plan(F.dump("tensorrt", section={"llem_execution": {"batch_size": 4}}))
        self.assertIn("tensorrt.llem_execution", e.exception.message)

    def test_passthrough_kwargs_reported_unused(self):
        p = plan(F.dump("tensorrt", passthrough={"x": 1}))
        self.assertEqual([d["key"] for d in p["dropped"]], ["passthrough_kwargs.x"])


class ApiDriftTests(unittest.TestCase):
    def test_removed_fields_are_dropped_with_the_version_named(self):
        fx = copy.deepcopy(FIXTURE)
        fx["version"] = "1.3.0"
        for cls in ("TorchLlmArgs",):
            fx["signatures"][cls]["fields"] = [f for f in fx["signatures"][cls]["fields"]
                                               if f["name"] != "max_num_tokens"]
        fx["signatures"]["SamplingParams"]["fields"] = [
            f for f in fx["signatures"]["SamplingParams"]["fields"] if f["name"] != "min_p"]
        sig = T.signature_from_fixture(fx)
        case = next(c for c in F.cases("tensorrt")
                    if c["name"] == "tensorrt every field (pytorch backend)")
        p = T.plan(case["config"], sig, environ={}, check_engine_dir=False)
        self.assertEqual({d["key"] for d in p["dropped"]},
                         {"tensorrt.engine_params.max_num_tokens", "tensorrt.sampling_params.min_p"})
        self.assertFalse(p["library"]["matches_pin"])
        self.assertIn("tensorrt_llm 1.3.0 does not accept", p["dropped"][0]["reason"])

    def test_nested_classes_are_filtered_when_known(self):
        sig = K.Signature("tensorrt_llm", "1.2.1", dict(SIG.calls, **{
            T.CALL_KV_CACHE: ["free_gpu_memory_fraction"]}), "test")
        case = next(c for c in F.cases("tensorrt")
                    if c["name"] == "tensorrt every field (pytorch backend)")
        p = T.plan(case["config"], sig, environ={}, check_engine_dir=False)
        self.assertEqual(p["constructor"]["kv_cache_config"],
                         {"__class__": "KvCacheConfig", "kwargs": {"free_gpu_memory_fraction": 0.8}})
        self.assertEqual([d["key"] for d in p["dropped"]],
                         ["tensorrt.engine_params.kv_cache_config.enable_block_reuse"])


class ModelIdentityTests(unittest.TestCase):
    def test_sampling_never_reloads(self):
        base = F.dump("tensorrt", section={"engine_params": {"max_batch_size": 8},
                                           "sampling_params": {"temperature": 0.5}})
        k = TensorRTEngine.model_key(base)
        other = copy.deepcopy(base)
        other["tensorrt"]["sampling_params"]["temperature"] = 0.9
        other["task"]["random_seed"] = 5  # a SamplingParams seed here, not a constructor one
        other["task"]["max_output_tokens"] = 3
        self.assertEqual(TensorRTEngine.model_key(other), k)
        other["tensorrt"]["engine_params"]["backend"] = "trt"
        self.assertNotEqual(TensorRTEngine.model_key(other), k)

    def test_build_cache_switch_is_part_of_the_key(self):
        cfg = F.dump("tensorrt", section={"engine_params": {"backend": "trt"}})
        a = T.model_identity(cfg, environ={})
        b = T.model_identity(cfg, environ={"LLEM_TRT_BUILD_CACHE_ENABLED": "1"})
        self.assertNotEqual(a, b)


class BuildObjectsTests(unittest.TestCase):
    def test_plain_values_pass_through(self):
        self.assertEqual(build_objects({"a": [1, {"b": 2}]}), {"a": [1, {"b": 2}]})


if __name__ == "__main__":
    unittest.main()
