"""Tests of the vLLM engine's mapping against llem 0.7.0 and vLLM 0.19.1's recorded
signatures. No vllm needed.

    python3 -m unittest discover -s docker/harness/tests -v
"""

import ast
import copy
import json
import os
import re
import tempfile
import unittest

import engine_fixtures as F
from engines import engine_kwargs as K
from engines import vllm_logic as V
from engines.vllm import VLLMEngine
from protocol import ConfigError

FIXTURE = K.load_fixture("vllm")
LLEM = K.load_fixture("llem")
SIG = V.signature_from_fixture()

# CompilationConfig fields llem 0.7.0 declares that vLLM 0.19.1 sets itself
# (dataclass field(init=False)): LLM() drops them without a word, the harness drops
# them with one (README "The vLLM engine").
COMPILATION_NOT_INIT = {"compilation_time", "disabled_custom_ops", "enabled_custom_ops",
                        "local_cache_dir", "static_all_moe_layers", "static_forward_context",
                        "traced_files"}


def llem_fields(cls):
    return [f["name"] for f in LLEM["sections"]["vllm"][cls]]


class FixtureVsPinTests(unittest.TestCase):
    """Fails loudly when the recorded signatures are not those of the pinned vLLM."""

    def test_the_fixture_is_vllm_at_the_pin(self):
        self.assertEqual(
            FIXTURE["version"], V.VLLM_PIN,
            "engines/signatures/vllm.json records vLLM %s but the harness pins %s: re-run "
            "docker/engines-signatures/record.py after changing the pin"
            % (FIXTURE["version"], V.VLLM_PIN))
        self.assertEqual(FIXTURE["package"], "vllm")
        self.assertEqual(F.record_module().VLLM_PIN, V.VLLM_PIN,
                         "record.py and vllm_logic.py pin different vLLM versions")

    def test_the_fixture_names_the_wheel_it_was_read_from(self):
        src = FIXTURE["source"]
        self.assertEqual(src["kind"], "wheel")
        self.assertRegex(src["sha256"], r"^[0-9a-f]{64}$")
        self.assertIn("vllm-%s-" % V.VLLM_PIN, src["filename"])

    def test_the_fixture_agrees_with_llems_own_record(self):
        # llem recorded dataclasses.fields(EngineArgs) in a vLLM 0.19.1 image; our ast
        # reading of the wheel must give the same field set.
        cc = FIXTURE["cross_check"]
        self.assertEqual(cc["llem_engine_version"], V.VLLM_PIN)
        self.assertEqual(cc["engine_args_only_in_ast"], [])
        self.assertEqual(cc["engine_args_only_in_llem"], [])
        self.assertEqual(cc["sampling_params_only_in_ast"], [])
        # llem's msgspec schema also lists SamplingParams' private fields.
        self.assertTrue(all(n.startswith("_") for n in cc["sampling_params_only_in_llem"]))

    def test_llem_fixture_is_the_pinned_llem(self):
        self.assertEqual(LLEM["version"], "0.7.0")
        self.assertEqual(F.load_cases()["llem_version"], "0.7.0")

    def test_the_dockerfile_pins_the_same_version(self):
        path = os.path.join(F.REPO, "docker", "vllm", "Dockerfile")
        if not os.path.exists(path):
            self.skipTest("docker/vllm/Dockerfile not written yet")
        with open(path) as fh:
            text = fh.read()
        self.assertIn("vllm==%s" % V.VLLM_PIN, text)


class LlemFieldCoverageTests(unittest.TestCase):
    """Every field of llem's vllm section reaches a parameter vLLM 0.19.1 has."""

    def test_declared_defaults_are_llems(self):
        self.assertEqual(list(V.ENGINE_DEFAULTS), llem_fields("EngineParams"))
        self.assertEqual(list(V.SAMPLING_DEFAULTS), llem_fields("SamplingParams"))
        for cls, ours in (("EngineParams", V.ENGINE_DEFAULTS),
                          ("SamplingParams", V.SAMPLING_DEFAULTS)):
            for f in LLEM["sections"]["vllm"][cls]:
                self.assertEqual(ast.literal_eval(f["default"]), ours[f["name"]],
                                 "%s.%s default" % (cls, f["name"]))

    def test_every_engine_param_is_an_llm_keyword_or_handled(self):
        for name in llem_fields("EngineParams"):
            with self.subTest(field=name):
                self.assertTrue(SIG.accepts(V.CALL_LLM, name) or name in V.HANDLED_BY_MAPPING,
                                "vllm.engine_params.%s is neither an LLM()/EngineArgs keyword "
                                "of vLLM %s nor handled by the mapping" % (name, SIG.version))

    def test_handled_fields_are_only_those_vllm_lacks_or_renames(self):
        # attention and beam_search are not LLM() keywords; offload_params is (as a set).
        self.assertFalse(SIG.accepts(V.CALL_LLM, "attention"))
        self.assertFalse(SIG.accepts(V.CALL_LLM, "beam_search"))
        self.assertTrue(SIG.accepts(V.CALL_LLM, "offload_params"))
        self.assertTrue(SIG.accepts(V.CALL_LLM, "attention_backend"))

    def test_every_sampling_param_is_a_sampling_params_field(self):
        for name in llem_fields("SamplingParams"):
            with self.subTest(field=name):
                self.assertTrue(SIG.accepts(V.CALL_SAMPLING, name), name)
        # the keys the harness itself adds
        for name in ("max_tokens", "ignore_eos", "detokenize", "seed", "output_kind"):
            self.assertTrue(SIG.accepts(V.CALL_SAMPLING, name), name)

    def test_every_speculative_config_field_is_accepted(self):
        for name in llem_fields("SpeculativeConfig"):
            with self.subTest(field=name):
                self.assertTrue(SIG.accepts(V.CALL_SPECULATIVE, name), name)

    def test_compilation_config_fields_accepted_except_the_known_non_init_ones(self):
        missing = {n for n in llem_fields("CompilationConfig")
                   if not SIG.accepts(V.CALL_COMPILATION, n)}
        self.assertEqual(missing, COMPILATION_NOT_INIT)

    def test_constructor_keywords_the_harness_adds_exist(self):
        for name in ("model", "seed", "trust_remote_code", "disable_log_stats", "load_format",
                     "skip_tokenizer_init", "attention_config"):
            self.assertTrue(SIG.accepts(V.CALL_LLM, name), name)

    def test_calls_the_engine_makes_exist_in_the_record(self):
        s = FIXTURE["signatures"]
        exports = s["vllm.exports"]["names"]
        self.assertIn("LLM", exports)
        self.assertIn("SamplingParams", exports)
        # Not exported at 0.19.1: llem 0.7.0's `from vllm import BeamSearchParams` fails;
        # the engine imports it from vllm.sampling_params, where the record found it.
        self.assertNotIn("BeamSearchParams", exports)
        self.assertEqual(s["BeamSearchParams"]["file"], "vllm/sampling_params.py")
        add = [p["name"] for p in s["LLMEngine.add_request"]["params"]]
        self.assertEqual(add[:3], ["request_id", "prompt", "params"])
        self.assertEqual(s["LLMEngine.step"]["params"], [])
        self.assertIn("DELTA", [m["name"] for m in s["RequestOutputKind"]["members"]])
        self.assertEqual([p["name"] for p in s["LLM.generate"]["params"]][:2],
                         ["prompts", "sampling_params"])
        self.assertIn("use_tqdm", [p["name"] for p in s["LLM.generate"]["params"]])
        self.assertEqual([p["name"] for p in s["LLM.beam_search"]["params"]][:2],
                         ["prompts", "params"])
        self.assertIn("prompt_token_ids", [f["name"] for f in s["TokensPrompt"]["fields"]])

    def test_a_config_with_every_field_drops_only_the_documented_keys(self):
        case = next(c for c in F.cases("vllm")
                    if c["name"] == "vllm every speculative_config and compilation_config field")
        p = V.plan(case["config"], SIG, environ={})
        dropped = {d["key"] for d in p["dropped"]}
        self.assertEqual(dropped, {"vllm.engine_params.compilation_config." + n
                                   for n in COMPILATION_NOT_INIT})
        for d in p["dropped"]:
            self.assertIn("init=False", d["reason"])


class LlemOracleTests(unittest.TestCase):
    """The mapping equals llem 0.7.0's own (_build_llm_kwargs, _build_sampling_kwargs,
    _build_beam_search_params) on every recorded case."""

    def test_cases_cover_every_declared_field(self):
        seen_ep, seen_sp = set(), set()
        for c in F.cases("vllm"):
            sec = c["config"]["vllm"] or {}
            for k, v in (sec.get("engine_params") or {}).items():
                if v not in (None, V.ENGINE_DEFAULTS.get(k)):
                    seen_ep.add(k)
            for k, v in (sec.get("sampling_params") or {}).items():
                if v not in (None, V.SAMPLING_DEFAULTS.get(k)):
                    seen_sp.add(k)
        self.assertEqual(set(V.ENGINE_DEFAULTS) - seen_ep, set())
        self.assertEqual(set(V.SAMPLING_DEFAULTS) - seen_sp, set())

    def test_mapping_equals_llems(self):
        cases = F.cases("vllm")
        self.assertGreater(len(cases), 20)
        for c in cases:
            with self.subTest(case=c["name"]):
                ctor = K.jsonable(V.llem_constructor_kwargs(c["config"], c["environ"]))
                self.assertEqual(ctor, c["llem"]["constructor"])
                cls, kw = V.llem_sampling(c["config"])
                self.assertEqual(cls, c["llem"]["sampling_class"])
                self.assertEqual(kw, c["llem"]["sampling"])


class ExamplesTests(unittest.TestCase):
    """llem's examples that use vllm map without a dropped key."""

    def _check(self, name, config):
        p = V.plan(config, SIG, environ={})
        self.assertEqual(p["dropped"], [], name)
        self.assertTrue(p["library"]["matches_pin"])

    def test_recorded_example_runs_map_without_drops(self):
        runs = [c for c in F.cases("vllm") if c["name"].startswith("example ")]
        self.assertGreaterEqual(len(runs), 10)
        for c in runs:
            with self.subTest(case=c["name"]):
                self._check(c["name"], c["config"])

    def test_shared_examples_map_without_drops(self):
        runs = F.example_runs("vllm")
        if runs is None:
            self.skipTest("no ../shared/llem/examples here (LEM_LLEM_EXAMPLES); the recorded "
                          "copies above still ran")
        self.assertGreater(len(runs), 10)
        for name, config in runs:
            with self.subTest(run=name):
                self._check(name, config)


class PlanTests(unittest.TestCase):
    def test_random_model_loads_dummy_weights_from_a_directory(self):
        cfg = F.dump("vllm", model="random:llama-tiny")
        p = V.plan(cfg, SIG, environ={}, model_path="/tmp/m")
        self.assertEqual(p["constructor"]["model"], "/tmp/m")
        self.assertEqual(p["constructor"]["load_format"], "dummy")
        self.assertTrue(p["constructor"]["skip_tokenizer_init"])
        self.assertEqual(p["sampling"], {"max_tokens": 16, "ignore_eos": True,
                                         "detokenize": False})
        self.assertEqual(p["weights"], "random")
        self.assertTrue(p["forced_max_tokens"])
        self.assertEqual(p["random"]["dtype"], "bfloat16")
        self.assertEqual(p["dropped"], [])

    def test_null_max_output_tokens_means_256_with_a_note(self):
        cfg = F.dump("vllm")
        cfg["task"]["max_output_tokens"] = None
        self.assertEqual(V.llem_sampling(cfg), ("SamplingParams", {}))
        p = V.plan(cfg, SIG, environ={})
        self.assertEqual(p["sampling"]["max_tokens"], 256)
        self.assertTrue(any("max_output_tokens is null" in n for n in p["notes"]))

    def test_top_level_passthrough_kwargs_are_reported_unused(self):
        p = V.plan(F.dump("vllm", passthrough={"foo": 1}), SIG, environ={})
        self.assertEqual([d["key"] for d in p["dropped"]], ["passthrough_kwargs.foo"])
        self.assertIn("transformers engine only", p["dropped"][0]["reason"])

    def test_remote_code_follows_the_host(self):
        cfg = F.dump("vllm", section={"engine_params": {"trust_remote_code": True}})
        with self.assertRaises(ConfigError) as e:
            V.plan(cfg, SIG, environ={})
        self.assertIn("LLEM_TRUST_REMOTE_CODE", e.exception.message)
        p = V.plan(cfg, SIG, environ={"LLEM_TRUST_REMOTE_CODE": "1"})
        self.assertTrue(p["constructor"]["trust_remote_code"])

    def test_attention_keys_llm_lacks_go_to_attention_config(self):
        cfg = F.dump("vllm", section={"engine_params": {
            "attention": {"backend": "FLASH_ATTN", "flash_attn_version": 3}}})
        p = V.plan(cfg, SIG, environ={})
        self.assertEqual(p["constructor"]["attention_backend"], "FLASH_ATTN")
        self.assertEqual(p["constructor"]["attention_config"], {"flash_attn_version": 3})
        self.assertNotIn("flash_attn_version", p["constructor"])
        self.assertEqual(p["dropped"], [])

    def test_unknown_attention_key_is_dropped_not_passed(self):
        cfg = F.dump("vllm", section={"engine_params": {"attention": {"no_such": 1}}})
        p = V.plan(cfg, SIG, environ={})
        self.assertEqual([d["key"] for d in p["dropped"]], ["vllm.engine_params.attention.no_such"])

    def test_unknown_speculative_key_is_dropped(self):
        cfg = F.dump("vllm", section={"engine_params": {"speculative_config": {
            "method": "ngram", "num_speculative_tokens": 2, "typo_field": 1}}})
        p = V.plan(cfg, SIG, environ={})
        self.assertEqual(p["constructor"]["speculative_config"],
                         {"method": "ngram", "num_speculative_tokens": 2})
        self.assertEqual([d["key"] for d in p["dropped"]],
                         ["vllm.engine_params.speculative_config.typo_field"])
        self.assertEqual(p["dropped"][0]["call"], V.CALL_SPECULATIVE)

    def test_beam_search_is_estimated_and_filtered(self):
        cfg = F.dump("vllm", section={"engine_params": {"beam_search": {
            "beam_width": 4, "early_stopping": True}}})
        p = V.plan(cfg, SIG, environ={})
        self.assertEqual(p["sampling_class"], "BeamSearchParams")
        self.assertEqual(p["sampling"], {"beam_width": 4, "max_tokens": 16})
        self.assertEqual([d["key"] for d in p["dropped"]],
                         ["vllm.engine_params.beam_search.early_stopping"])
        self.assertFalse(p["streaming"])
        self.assertEqual(p["itl_measurement_mode"], "proportional")
        self.assertTrue(p["latency_estimated"])

    def test_latency_profiling_sets_disable_log_stats_false(self):
        p = V.plan(F.dump("vllm", latency_profiling=True), SIG, environ={})
        self.assertIs(p["constructor"]["disable_log_stats"], False)

    def test_section_keys_are_checked(self):
        for key in ("llem_execution", "engine"):
            cfg = F.dump("vllm", section={key: {}})
            with self.assertRaises(ConfigError) as e:
                V.plan(cfg, SIG, environ={})
            self.assertIn("vllm.%s" % key, e.exception.message)

    def test_server_mode_is_refused(self):
        cfg = F.dump("vllm")
        cfg["serving_mode"] = "server"
        with self.assertRaises(ConfigError):
            V.validate(cfg)


class ApiDriftTests(unittest.TestCase):
    """Another vLLM than the pin: keys it lacks are dropped with a reason, never passed."""

    def drifted(self, lose_ctor=(), lose_sampling=(), version="0.20.0"):
        fx = copy.deepcopy(FIXTURE)
        fx["version"] = version
        s = fx["signatures"]
        s["EngineArgs"]["fields"] = [f for f in s["EngineArgs"]["fields"]
                                     if f["name"] not in lose_ctor]
        s["LLM.__init__"]["params"] = [p for p in s["LLM.__init__"]["params"]
                                       if p["name"] not in lose_ctor]
        s["SamplingParams"]["fields"] = [f for f in s["SamplingParams"]["fields"]
                                         if f["name"] not in lose_sampling]
        return V.signature_from_fixture(fx)

    def test_removed_keywords_are_dropped_with_the_version_named(self):
        sig = self.drifted(lose_ctor=("enforce_eager", "cpu_offload_gb"),
                           lose_sampling=("min_p",))
        case = next(c for c in F.cases("vllm")
                    if c["name"] == "vllm every engine_params and sampling_params field")
        p = V.plan(case["config"], sig, environ={})
        keys = {d["key"] for d in p["dropped"]}
        self.assertLessEqual({"vllm.engine_params.enforce_eager",
                              "vllm.engine_params.cpu_offload_gb",
                              "vllm.sampling_params.min_p"}, keys)
        self.assertNotIn("enforce_eager", p["constructor"])
        self.assertNotIn("min_p", p["sampling"])
        reason = next(d["reason"] for d in p["dropped"]
                      if d["key"] == "vllm.engine_params.enforce_eager")
        self.assertIn("vllm 0.20.0 does not accept 'enforce_eager'", reason)
        self.assertEqual(p["library"], {"package": "vllm", "installed": "0.20.0",
                                        "pin": V.VLLM_PIN, "matches_pin": False})

    def test_an_unknown_call_site_filters_nothing_and_says_so(self):
        sig = K.Signature("vllm", "x", {V.CALL_LLM: None, V.CALL_SAMPLING: None}, "test")
        p = V.plan(F.dump("vllm", section={"engine_params": {"anything": 1}}), sig, environ={})
        self.assertEqual(p["constructor"]["anything"], 1)
        self.assertIn(V.CALL_LLM, p["signature"]["unchecked"])


class ModelIdentityTests(unittest.TestCase):
    def key(self, cfg):
        return VLLMEngine.model_key(cfg)

    def test_sampling_and_budget_do_not_reload_engine_params_do(self):
        base = F.dump("vllm", section={"engine_params": {"max_num_seqs": 8},
                                       "sampling_params": {"temperature": 0.5}})
        k = self.key(base)
        other = copy.deepcopy(base)
        other["vllm"]["sampling_params"]["temperature"] = 0.9
        other["task"]["max_output_tokens"] = 99
        other["sampling_preset"] = "creative"
        self.assertEqual(self.key(other), k)
        other["vllm"]["engine_params"]["max_num_seqs"] = 16
        self.assertNotEqual(self.key(other), k)

    def test_seed_reloads_as_it_is_an_llm_argument(self):
        base = F.dump("vllm")
        other = copy.deepcopy(base)
        other["task"]["random_seed"] = 7
        self.assertNotEqual(self.key(base), self.key(other))

    def test_batch_is_the_whole_prompt_set(self):
        self.assertEqual(VLLMEngine.batch_size(F.dump("vllm", n_prompts=37)), 37)


class RandomModelDirTests(unittest.TestCase):
    def test_directory_holds_a_loadable_config(self):
        from engines import hf_logic
        spec = hf_logic.random_model_spec("random:llama-tiny")
        with tempfile.TemporaryDirectory() as root:
            path = K.write_random_model_dir(spec, "bfloat16", root)
            self.assertEqual(K.write_random_model_dir(spec, "bfloat16", root), path)
            with open(os.path.join(path, "config.json")) as fh:
                cfg = json.load(fh)
            self.assertEqual(cfg["architectures"], ["LlamaForCausalLM"])
            self.assertEqual(cfg["torch_dtype"], "bfloat16")
            self.assertEqual(cfg["hidden_size"], 64)
            self.assertTrue(re.match(r"random-[0-9a-f]{16}$", os.path.basename(path)))
            other = K.write_random_model_dir(spec, "float16", root)
            self.assertNotEqual(other, path)

    def test_unknown_model_type_needs_architectures(self):
        spec = {"source": "/x/config.json", "config": {"model_type": "weird"}}
        with self.assertRaises(ConfigError) as e:
            K.random_model_config(spec, "bfloat16")
        self.assertIn("architectures", e.exception.message)


if __name__ == "__main__":
    unittest.main()
