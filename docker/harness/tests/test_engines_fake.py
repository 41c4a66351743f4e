"""The vllm and tensorrt engines driven through the real server against fake libraries.

tests/fakes/ holds a fake `vllm`, `tensorrt_llm` and `torch` shaped by the recorded
signatures (engines/signatures/*.json): constructors that raise TypeError on a
keyword the recorded version lacks, one token per request per step. These tests
check the engines' own code (probe, live signature introspection, random model
directory, the streaming loops, event order, result fields, reuse and
force_cold_start, API drift) without a GPU. They do not show that the real libraries
behave like the fakes: docs/engines.md says what ran where.
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import engine_fixtures as F
from test_harness import SERVER, send, stop_server, wait_socket

FAKES = os.path.join(F.HERE, "fakes")
SIGS = os.path.join(F.HARNESS, "engines", "signatures")
DATASET = os.path.join(F.HARNESS, "datasets", "aienergyscore.jsonl")


class FakeServer:
    def __init__(self, tmp, server=SERVER, **env):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "h.sock")
        self.log = os.path.join(tmp, "fake.log")
        e = dict(os.environ)
        e.update({"PYTHONPATH": FAKES, "FAKE_ENGINE_LOG": self.log,
                  "FAKE_VLLM_FIXTURE": os.path.join(SIGS, "vllm.json"),
                  "FAKE_TRTLLM_FIXTURE": os.path.join(SIGS, "tensorrt_llm.json"),
                  "LEM_RANDOM_MODEL_DIR": os.path.join(tmp, "models")})
        e.pop("LLEM_TRUST_REMOTE_CODE", None)
        e.update(env)
        self.out = open(os.path.join(tmp, "server.out"), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, server, "--socket", self.sock, "--max-thermal-floor-seconds", "0",
             "--prefill-window-seconds", "0"],
            stdout=self.out, stderr=subprocess.STDOUT, env=e)
        wait_socket(self.sock, self.proc)

    def run(self, cfg, run_id="r", force=False, **extra):
        req = {"type": "run", "run_id": run_id, "config": cfg, "force_cold_start": force,
               "dataset_path": DATASET, "prefill_window_seconds": 0}
        req.update(extra)
        return send(self.sock, req)

    def calls(self, kind_prefix):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as fh:
            return [c for c in map(json.loads, fh) if c["kind"].startswith(kind_prefix)]

    def server_log(self):
        with open(os.path.join(self.tmp, "server.out"), "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def stop(self):
        stop_server(self.sock, self.proc)
        self.out.close()


def cfg_for(engine, model="random:llama-tiny", n_prompts=4, max_out=5, section=None, **kw):
    cfg = F.dump(engine, model=model, section=section, n_prompts=n_prompts, max_out=max_out,
                 **kw)
    cfg["offline"]["warmup"] = {"enabled": True, "n_prompts": 1, "thermal_floor_seconds": 30.0}
    return cfg


def by_event(events, name):
    return [e for e in events if e["event"] == name]


class FakeEngineMixin:
    engine = None

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.server = FakeServer(self._tmp.name, **self.server_env())

    def tearDown(self):
        self.server.stop()
        self._tmp.cleanup()

    def server_env(self):
        return {}

    def result(self, events):
        last = events[-1]
        self.assertEqual(last["event"], "result",
                         "%s\n--- server log ---\n%s" % (last, self.server.server_log()[-3000:]))
        return last

    def check_streamed_run(self, events, n_prompts, max_out):
        res = self.result(events)
        self.assertEqual(res["engine"], self.engine)
        m = res["metrics"]
        self.assertEqual(m["itl_measurement_mode"], "true_streaming")
        self.assertFalse(m["latency_estimated"])
        self.assertEqual(m["batches"], 1)
        self.assertEqual(m["batch_size"], n_prompts)
        self.assertEqual(m["output_tokens"], n_prompts * max_out)
        self.assertEqual(m["itl_ms"]["samples"], n_prompts * (max_out - 1))
        ends = by_event(events, "request_end")
        self.assertEqual(len(ends), n_prompts)
        for e in ends:
            self.assertEqual(len(e["token_times_ms"]), max_out)
            self.assertEqual(e["token_times_ms"][0], 0.0)
            self.assertNotIn("estimated", e)
        names = [e["event"] for e in events]
        self.assertLess(names.index("first_token"), names.index("request_end"))
        phases = [e.get("phase") for e in by_event(events, "phase")]
        self.assertEqual(phases, ["prefill", "decode", "idle"])
        self.assertEqual(res["dropped_kwargs"], [])
        self.assertEqual(m["engine_warnings"], [])
        self.assertTrue(res["engine_library"]["matches_pin"], res["engine_library"])
        return res


class VLLMFakeTests(FakeEngineMixin, unittest.TestCase):
    engine = "vllm"

    def test_pong_lists_the_engine(self):
        pong = send(self.server.sock, {"type": "ping"})[-1]
        self.assertIn("vllm", pong["engines"])

    def test_random_model_streams_reuses_and_reloads_on_force(self):
        cfg = cfg_for("vllm")
        events = self.server.run(cfg)
        res = self.check_streamed_run(events, 4, 5)
        self.assertEqual(res["engine_version"], "0.19.1")
        self.assertEqual(res["versions"]["vllm_pin"], "0.19.1")
        self.assertEqual(res["model_weights"], "random")
        self.assertEqual(res["tokenizer"], "byte-level")
        (llm,) = self.server.calls("vllm.LLM")
        self.assertEqual(llm["kwargs"]["load_format"], "dummy")
        self.assertTrue(llm["kwargs"]["skip_tokenizer_init"])
        self.assertEqual(llm["kwargs"]["seed"], 42)
        with open(os.path.join(llm["model"], "config.json")) as fh:
            self.assertEqual(json.load(fh)["architectures"], ["LlamaForCausalLM"])
        self.assertEqual(res["random_model"]["directory"], llm["model"])
        self.assertEqual(res["observed_sampling_params"],
                         {"max_tokens": 5, "ignore_eos": True, "detokenize": False,
                          "__class__": "SamplingParams"})

        events = self.server.run(cfg, run_id="r2")
        self.assertTrue(events[0]["already_loaded"])
        self.result(events)
        self.assertEqual(len(self.server.calls("vllm.LLM")), 1)

        events = self.server.run(cfg, run_id="r3", force=True)
        self.assertFalse(events[0]["already_loaded"])
        self.result(events)
        self.assertEqual(len(self.server.calls("vllm.LLM")), 2)

    def test_sampling_changes_apply_without_reload(self):
        cfg = cfg_for("vllm")
        self.result(self.server.run(cfg))
        cfg2 = copy.deepcopy(cfg)
        cfg2["task"]["max_output_tokens"] = 3
        events = self.server.run(cfg2, run_id="r2")
        self.assertTrue(events[0]["already_loaded"])
        self.assertEqual(self.result(events)["metrics"]["output_tokens"], 4 * 3)

    def test_pretrained_model_engine_params_and_n(self):
        cfg = cfg_for("vllm", model="org/model", n_prompts=3, max_out=4, section={
            "engine_params": {"max_num_seqs": 8, "enforce_eager": True, "gpu_memory_utilization": 0.5},
            "sampling_params": {"n": 2, "temperature": 0.7}})
        events = self.server.run(cfg)
        res = self.result(events)
        self.assertEqual(res["model_weights"], "pretrained")
        self.assertEqual(res["metrics"]["output_tokens"], 3 * 4 * 2)
        (llm,) = self.server.calls("vllm.LLM")
        self.assertEqual(llm["model"], "org/model")
        self.assertEqual(llm["kwargs"]["max_num_seqs"], 8)
        self.assertNotIn("load_format", llm["kwargs"])
        # input tokens were truncated to task.max_input_tokens (64)
        self.assertLessEqual(max(res["metrics"]["input_token_lengths"].values()), 64)

    def test_unknown_engine_param_is_dropped_and_reported_not_fatal(self):
        cfg = cfg_for("vllm", section={"engine_params": {"no_such_engine_arg": 3}})
        res = self.result(self.server.run(cfg))
        self.assertEqual([d["key"] for d in res["dropped_kwargs"]],
                         ["vllm.engine_params.no_such_engine_arg"])
        (llm,) = self.server.calls("vllm.LLM")
        self.assertNotIn("no_such_engine_arg", llm["kwargs"])

    def test_without_per_token_timing_one_generate_call(self):
        cfg = cfg_for("vllm")
        res = self.result(self.server.run(cfg, per_token_timing="when_profiling"))
        self.assertEqual(res["metrics"]["itl_measurement_mode"], "per_request_batch")
        self.assertTrue(self.server.calls("vllm.generate"))

    def test_beam_search_is_estimated(self):
        cfg = cfg_for("vllm", model="org/model", section={
            "engine_params": {"beam_search": {"beam_width": 2}}})
        events = self.server.run(cfg)
        res = self.result(events)
        self.assertEqual(res["metrics"]["itl_measurement_mode"], "proportional")
        self.assertTrue(res["metrics"]["latency_estimated"])
        self.assertEqual(res["metrics"]["output_tokens"], 4 * 5 * 2)
        self.assertTrue(all(e.get("estimated") for e in by_event(events, "request_end")))

    def test_beam_search_on_a_random_model_is_a_configuration_error(self):
        cfg = cfg_for("vllm", section={"engine_params": {"beam_search": {"beam_width": 2}}})
        err = self.server.run(cfg)[-1]
        self.assertEqual((err["event"], err["class"]), ("error", "configuration"))
        self.assertIn("tokenizer", err["message"])


class VLLMDriftTests(FakeEngineMixin, unittest.TestCase):
    """An installed vLLM other than the pin that lacks a keyword the config uses."""

    engine = "vllm"

    def server_env(self):
        with open(os.path.join(SIGS, "vllm.json")) as fh:
            fx = json.load(fh)
        s = fx["signatures"]
        s["EngineArgs"]["fields"] = [f for f in s["EngineArgs"]["fields"]
                                     if f["name"] != "enforce_eager"]
        s["LLM.__init__"]["params"] = [p for p in s["LLM.__init__"]["params"]
                                       if p["name"] != "enforce_eager"]
        path = os.path.join(self._tmp_drift.name, "vllm-drift.json")
        with open(path, "w") as fh:
            json.dump(fx, fh)
        return {"FAKE_VLLM_FIXTURE": path, "FAKE_VLLM_VERSION": "0.20.0"}

    def setUp(self):
        self._tmp_drift = tempfile.TemporaryDirectory()
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self._tmp_drift.cleanup()

    def test_dropped_with_a_warning_never_a_crash(self):
        cfg = cfg_for("vllm", section={"engine_params": {"enforce_eager": True}})
        res = self.result(self.server.run(cfg))
        self.assertEqual(res["engine_version"], "0.20.0")
        self.assertEqual(res["engine_library"], {"package": "vllm", "installed": "0.20.0",
                                                 "pin": "0.19.1", "matches_pin": False})
        (d,) = res["dropped_kwargs"]
        self.assertEqual(d["key"], "vllm.engine_params.enforce_eager")
        self.assertIn("installed vllm 0.20.0", d["reason"])
        # in metrics too: the worker keeps metrics (harness.metrics) in the result
        (w,) = res["metrics"]["engine_warnings"]
        self.assertTrue(w.startswith("vllm.engine_params.enforce_eager dropped (not passed to "
                                     "LLM())"), w)


class TensorRTFakeTests(FakeEngineMixin, unittest.TestCase):
    engine = "tensorrt"

    def test_random_model_streams(self):
        events = self.server.run(cfg_for("tensorrt"))
        res = self.check_streamed_run(events, 4, 5)
        self.assertEqual(res["engine_version"], "1.2.1")
        self.assertEqual(res["constructor_class"], "tensorrt_llm.LLM")
        (llm,) = self.server.calls("tensorrt_llm.tensorrt_llm")
        self.assertEqual(llm["kwargs"]["load_format"], "dummy")
        self.assertEqual(res["observed_sampling_params"]["end_id"], 2)

    def test_trt_backend_builds_the_objects(self):
        cfg = cfg_for("tensorrt", model="org/model", section={"engine_params": {
            "backend": "trt", "max_batch_size": 4,
            "kv_cache_config": {"free_gpu_memory_fraction": 0.5},
            "scheduler_config": {"capacity_scheduling_policy": "MAX_UTILIZATION"},
            "quant_config": {"quant_algo": "FP8"}}})
        res = self.result(self.server.run(cfg))
        self.assertEqual(res["constructor_class"], "tensorrt_llm._tensorrt_engine.LLM")
        (llm,) = self.server.calls("tensorrt_llm.tensorrt_llm._tensorrt_engine")
        kw = llm["kwargs"]
        self.assertEqual(kw["kv_cache_config"], "KvCacheConfig({'free_gpu_memory_fraction': 0.5})")
        self.assertIn("CapacitySchedulerPolicy.MAX_UTILIZATION", kw["scheduler_config"])
        self.assertIn("QuantAlgo.FP8", kw["quant_config"])
        self.assertEqual(res["dropped_kwargs"], [])

    def test_unknown_kv_cache_key_is_dropped(self):
        cfg = cfg_for("tensorrt", section={"engine_params": {
            "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "typo": 1}}})
        res = self.result(self.server.run(cfg))
        self.assertEqual([d["key"] for d in res["dropped_kwargs"]],
                         ["tensorrt.engine_params.kv_cache_config.typo"])


class TensorRTNoStreamingTests(FakeEngineMixin, unittest.TestCase):
    engine = "tensorrt"

    def server_env(self):
        return {"FAKE_TRTLLM_NO_STREAMING": "1"}

    def test_falls_back_to_estimated_times(self):
        events = self.server.run(cfg_for("tensorrt"))
        res = self.result(events)
        self.assertEqual(res["metrics"]["itl_measurement_mode"], "proportional")
        self.assertTrue(res["metrics"]["latency_estimated"])
        self.assertTrue(any("no `streaming`" in n for n in res["engine_mapping_notes"]))
        self.assertEqual(res["metrics"]["output_tokens"], 4 * 5)


class WithoutRecordedSignaturesTests(unittest.TestCase):
    """The process runtime writes the harness's .py files only (worker/build.rs embeds
    .py and .jsonl): without engines/signatures/ the engines introspect the installed
    library alone."""

    def test_runs_on_the_live_signature(self):
        with tempfile.TemporaryDirectory() as tmp:
            copy_dir = os.path.join(tmp, "harness")
            shutil.copytree(F.HARNESS, copy_dir, ignore=shutil.ignore_patterns(
                "tests", "signatures", "__pycache__"))
            server = FakeServer(tmp, server=os.path.join(copy_dir, "server.py"))
            try:
                events = server.run(cfg_for("vllm"))
                self.assertEqual(events[-1]["event"], "result", server.server_log()[-2000:])
                sig = events[-1]["engine_signature"]
                self.assertEqual(sig["source"], "installed vllm 0.19.1")
                self.assertTrue(any("no recorded signatures" in str(n) for n in sig["notes"]))
            finally:
                server.stop()


if __name__ == "__main__":
    unittest.main()
