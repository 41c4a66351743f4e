"""Torch-free tests of the transformers engine's logic and of the prefill window.

Run from the repository root:
    python3 -m unittest discover -s docker/harness/tests -v
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.dirname(HERE)
for p in (HERE, HARNESS):
    if p not in sys.path:
        sys.path.insert(0, p)
sys.dont_write_bytecode = True

from engines import hf_logic as L  # noqa: E402
from engines.transformers import TransformersEngine  # noqa: E402
from protocol import ConfigError  # noqa: E402
from test_harness import config as synth_config, run_req, send, start_server, stop_server  # noqa: E402
from test_transformers_gpu import llem_dump  # noqa: E402


def with_(cfg, section=None, **values):
    cfg = json.loads(json.dumps(cfg))
    if section is None:
        cfg.update(values)
    else:
        cfg["transformers"][section].update(values)
    return cfg


class KwargMappingTests(unittest.TestCase):
    def test_nulls_dropped_defaults(self):
        cfg = llem_dump(model="org/model")
        plan = L.load_plan(cfg, environ={})
        self.assertEqual(plan["weights"], "pretrained")
        self.assertEqual(plan["dtype"], "auto")  # llem passes "auto" when dtype is null
        self.assertEqual(plan["kwargs"], {"device_map": {"": "cuda:0"},
                                          "trust_remote_code": False})
        self.assertIsNone(plan["quantization"])
        g = L.generate_plan(cfg)
        self.assertEqual(g["kwargs"], {"max_new_tokens": 16})
        self.assertTrue(g["streaming"])
        self.assertEqual(g["itl_measurement_mode"], "true_streaming")

    def test_remote_code_follows_the_host_gate_not_the_study(self):
        for where in ("passthrough_kwargs", "engine_params"):
            if where == "passthrough_kwargs":
                cfg = llem_dump(model="org/model")
                cfg["passthrough_kwargs"] = {"trust_remote_code": True}
            else:
                cfg = llem_dump(model="org/model", engine_params={"trust_remote_code": True})
            with self.assertRaises(ConfigError) as e:
                L.load_plan(cfg, environ={})
            self.assertIn("LLEM_TRUST_REMOTE_CODE", e.exception.message)
            plan = L.load_plan(cfg, environ={"LLEM_TRUST_REMOTE_CODE": "1"})
            self.assertTrue(plan["kwargs"]["trust_remote_code"])

    def test_engine_params_split_between_load_and_generate(self):
        cfg = llem_dump(model="org/model", engine_params={
            "dtype": "float16", "attn_implementation": "sdpa", "use_cache": True,
            "cache_implementation": "static", "no_repeat_ngram_size": 3,
            "low_cpu_mem_usage": True, "revision": "abc", "load_in_4bit": True,
            "bnb_4bit_compute_dtype": "bf16", "bnb_4bit_quant_type": "nf4"})
        cfg["passthrough_kwargs"] = {"revision": "def", "device_map": "auto"}
        plan = L.load_plan(cfg, environ={"LLEM_TRUST_REMOTE_CODE": "yes"})
        self.assertEqual(plan["dtype"], "float16")
        self.assertEqual(plan["kwargs"], {
            "device_map": "auto", "trust_remote_code": True, "attn_implementation": "sdpa",
            "low_cpu_mem_usage": True, "revision": "def"})  # passthrough_kwargs merged last
        self.assertEqual(plan["quantization"], {"load_in_4bit": True,
                                                "bnb_4bit_compute_dtype": "bfloat16",
                                                "bnb_4bit_quant_type": "nf4"})
        g = L.generate_plan(cfg)["kwargs"]
        self.assertEqual(g, {"use_cache": True, "cache_implementation": "static",
                             "no_repeat_ngram_size": 3, "max_new_tokens": 16})

    def test_presets_and_greedy_rule(self):
        cfg = llem_dump(model="org/model", preset="creative", sampling={"top_p": 0.5})
        g = L.generate_plan(cfg)["kwargs"]
        self.assertEqual(g, {"temperature": 0.8, "top_p": 0.5, "repetition_penalty": 1.1,
                             "max_new_tokens": 16})  # explicit value wins over the preset
        g = L.generate_plan(llem_dump(model="org/model", preset="deterministic",
                                      sampling={"top_k": 5}))["kwargs"]
        self.assertEqual(g, {"do_sample": False, "max_new_tokens": 16})
        g = L.generate_plan(llem_dump(model="org/model", sampling={
            "do_sample": False, "temperature": 0.7, "min_p": 0.1, "repetition_penalty": 1.2,
            "typical_p": 0.9}))["kwargs"]
        self.assertEqual(g, {"do_sample": False, "repetition_penalty": 1.2, "typical_p": 0.9,
                             "max_new_tokens": 16})  # passthrough sampling key kept
        with self.assertRaises(ConfigError):
            L.generate_plan(llem_dump(model="org/model", preset="fancy"))

    def test_random_models_force_exact_output_length(self):
        g = L.generate_plan(llem_dump(sampling={"min_new_tokens": 2}))
        self.assertEqual(g["kwargs"]["min_new_tokens"], 16)
        self.assertEqual(g["kwargs"]["max_new_tokens"], 16)
        self.assertTrue(g["forced_min_new_tokens"])
        plan = L.load_plan(llem_dump())
        self.assertEqual(plan["weights"], "random")
        self.assertEqual(plan["dtype"], "bfloat16")
        self.assertEqual(plan["kwargs"], {})
        self.assertEqual(plan["random"]["config"]["hidden_size"], 64)
        self.assertEqual(L.load_plan(llem_dump(engine_params={"dtype": "float32"}))["dtype"],
                         "float32")
        with self.assertRaises(ConfigError):
            L.load_plan(llem_dump(engine_params={"load_in_8bit": True}))
        with self.assertRaises(ConfigError):
            L.load_plan(llem_dump(model="random:no-such-preset"))

    def test_random_config_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "config.json")
            with open(path, "w") as fh:
                json.dump(dict(L.RANDOM_PRESETS["llama-tiny"], torch_dtype="float16"), fh)
            for ref in (path, tmp):
                plan = L.load_plan(llem_dump(model="random:" + ref))
                self.assertEqual(plan["random"]["kind"], "config_file")
                self.assertEqual(plan["dtype"], "float16")  # the config's own dtype
            with open(path, "w") as fh:
                fh.write("{}")
            with self.assertRaises(ConfigError):
                L.load_plan(llem_dump(model="random:" + path))

    def test_beam_search_is_not_streamed(self):
        g = L.generate_plan(llem_dump(engine_params={"num_beams": 4, "early_stopping": True,
                                                     "length_penalty": 0.5}))
        self.assertFalse(g["streaming"])
        self.assertEqual(g["itl_measurement_mode"], "proportional")
        self.assertTrue(g["latency_estimated"])
        self.assertEqual(g["kwargs"]["num_beams"], 4)
        self.assertEqual(g["kwargs"]["early_stopping"], True)
        self.assertTrue(L.generate_plan(llem_dump(engine_params={"num_beams": 1}))["streaming"])
        self.assertEqual(L.prefill_kwargs(g["kwargs"]),
                         {"num_beams": 4, "early_stopping": True, "length_penalty": 0.5,
                          "max_new_tokens": 1})

    def test_execution_defaults_and_checks(self):
        ex = L.resolve_execution(llem_dump(batch_size=None))
        self.assertEqual(ex["batch_size"], 1)
        self.assertFalse(ex["torch_compile"])
        self.assertIsNone(ex["torch_compile_mode"])
        cfg = llem_dump()
        cfg["transformers"]["llem_execution"].update(torch_compile=True, autocast_enabled=True)
        ex = L.resolve_execution(cfg)
        self.assertEqual((ex["torch_compile_mode"], ex["torch_compile_backend"]),
                         ("default", "inductor"))
        self.assertEqual(ex["autocast_dtype"], "bfloat16")
        bad = llem_dump()
        bad["transformers"]["llem_execution"]["torch_compile_mode"] = "max-autotune"
        with self.assertRaises(ConfigError):
            L.resolve_execution(bad)
        with self.assertRaises(ConfigError):
            L.resolve_execution(llem_dump(batch_size=0))
        with self.assertRaises(ConfigError):
            L.load_plan(llem_dump(model="org/m", engine_params={"tp_plan": "auto"}))
        with self.assertRaises(ConfigError):
            L.load_plan(llem_dump(model="org/m", engine_params={"dtype": "int3"}))
        self.assertEqual(TransformersEngine.batch_size(llem_dump(batch_size=8)), 8)

    def test_input_token_limit(self):
        self.assertEqual(L.input_token_limit(llem_dump()), 64)
        cfg = llem_dump()
        cfg["task"]["max_input_tokens"] = None
        self.assertIsNone(L.input_token_limit(cfg))  # llem: null = no truncation
        self.assertEqual(L.input_token_limit(cfg, 4096, 256), 3840)  # random: context cap


class ModelKeyTests(unittest.TestCase):
    def test_batch_size_and_sampling_do_not_change_the_key(self):
        base = TransformersEngine.model_key(llem_dump(batch_size=1))
        self.assertRegex(base, r"^[0-9a-f]{64}$")
        self.assertEqual(TransformersEngine.model_key(llem_dump(batch_size=16)), base)
        self.assertEqual(TransformersEngine.model_key(
            llem_dump(preset="creative", sampling={"top_k": 3}, max_out=99)), base)
        sparse = llem_dump()
        sparse["transformers"] = {"llem_execution": {"batch_size": 4}}  # absent == null
        self.assertEqual(TransformersEngine.model_key(sparse), base)

    def test_model_affecting_fields_change_the_key(self):
        base = TransformersEngine.model_key(llem_dump())
        keys = {
            TransformersEngine.model_key(llem_dump(engine_params={"dtype": "float16"})),
            TransformersEngine.model_key(llem_dump(engine_params={"num_beams": 2})),
            TransformersEngine.model_key(llem_dump(model="random:llama-1.1b")),
            TransformersEngine.model_key(with_(llem_dump(), "llem_execution",
                                               torch_compile=True)),
            TransformersEngine.model_key(with_(llem_dump(), passthrough_kwargs={"x": 1})),
        }
        seeded = llem_dump()
        seeded["task"]["random_seed"] = 7  # random weights depend on the seed
        keys.add(TransformersEngine.model_key(seeded))
        self.assertEqual(len(keys), 6)
        self.assertNotIn(base, keys)


class ByteTokeniserTests(unittest.TestCase):
    def test_deterministic_and_avoids_special_ids(self):
        cfg = L.RANDOM_PRESETS["llama-tiny"]
        tok = L.ByteTokenizer(cfg)
        ids = tok.encode("héllo ✓")
        self.assertEqual(ids, L.ByteTokenizer(cfg).encode("héllo ✓"))
        self.assertEqual(ids[0], 1)  # BOS
        self.assertEqual(len(ids), 1 + len("héllo ✓".encode("utf-8")))
        self.assertEqual(ids[1], 3 + ord("h"))
        self.assertTrue(all(2 < i < 1000 for i in ids[1:]))
        self.assertEqual(len(tok.encode("x" * 500, 64)), 64)
        self.assertEqual(tok.pad_id, 2)
        self.assertEqual(tok.eos_ids, [2])

    def test_small_vocab_wraps_and_skips_specials(self):
        table = L.byte_table(100, {0, 1, 2, 50})
        self.assertEqual(len(table), 256)
        self.assertNotIn(50, table)
        self.assertTrue(all(3 <= i < 100 for i in table))
        self.assertEqual(table[0], 3)
        self.assertEqual(table[96], 3)  # 96 usable ids, wraps

    def test_left_padding(self):
        ids, mask = L.left_pad([[5, 6, 7], [8]], 0)
        self.assertEqual(ids, [[5, 6, 7], [0, 0, 8]])
        self.assertEqual(mask, [[1, 1, 1], [0, 0, 1]])

    def test_output_counting_and_proportional_times(self):
        self.assertEqual(L.count_output_tokens([5, 6, 2, 2, 2], [2]), 3)
        self.assertEqual(L.count_output_tokens([5, 6, 7], [2]), 3)
        self.assertEqual(L.count_output_tokens([2, 6, 2], [2], min_new_tokens=2), 3)
        self.assertEqual(L.proportional_times(0, 400, 2, 4), [100, 200])

    def test_jsonable(self):
        class Dtype:
            def __str__(self):
                return "torch.bfloat16"
        self.assertEqual(L.jsonable({"dtype": Dtype(), "m": {"": "cuda:0"}, "x": (1, 2.5)}),
                         {"dtype": "bfloat16", "m": {"": "cuda:0"}, "x": [1, 2.5]})


class PrefillWindowTests(unittest.TestCase):
    """The prefill-only window with the synthetic engine, through a real server."""

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="hnp")
        cls.sock = os.path.join(cls._tmp.name, "p.sock")
        cls.proc = start_server(cls.sock, "--prefill-window-seconds", "0.3")

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.sock, cls.proc)
        cls._tmp.cleanup()

    def test_window_events(self):
        cfg = synth_config("pw", n_prompts=5, prefill_ms_per_token=0.5, load_seconds=0.0)
        ev = send(self.sock, run_req(cfg, "pw"))
        names = [e["event"] for e in ev]
        self.assertEqual(names[-1], "result", ev[-1])
        me = names.index("measure_end")
        self.assertEqual(names[me + 1], "prefill_window_start")
        we = names.index("prefill_window_end")
        self.assertEqual(we, len(names) - 2)
        start, end = ev[me + 1], ev[we]
        self.assertEqual(start["batches"], 3)
        self.assertEqual(start["batch_size"], 2)
        self.assertEqual(start["target_seconds"], 0.3)
        inside = ev[me + 2:we]
        self.assertEqual(inside[-1], dict(inside[-1], event="phase", phase="idle"))
        calls = inside[:-1]
        self.assertTrue(all(e["event"] == "phase" and e["phase"] == "prefill" for e in calls))
        self.assertEqual([e["prefill_call"] for e in calls], list(range(len(calls))))
        self.assertEqual([e["batch_index"] for e in calls], [0, 1, 2] * end["passes"])
        measured = [e["input_tokens"] for e in ev[:me]
                    if e["event"] == "phase" and e["phase"] == "prefill"]
        self.assertEqual([e["input_tokens"] for e in calls[:3]], measured)
        self.assertEqual(end["calls"], len(calls))
        self.assertEqual(end["calls"], 3 * end["passes"])
        self.assertEqual(end["input_tokens"], end["passes"] * start["input_tokens_per_pass"])
        self.assertEqual(start["input_tokens_per_pass"], ev[-1]["metrics"]["input_tokens"])
        self.assertGreaterEqual(end["seconds"], 0.3)
        self.assertLess(end["seconds"], 1.0)
        self.assertAlmostEqual(end["seconds"], (end["t_mono_ns"] - start["t_mono_ns"]) / 1e9,
                               places=6)
        self.assertFalse(end["capped"])
        self.assertEqual(end["call_ms"]["samples"], end["calls"])
        # a call sleeps 0.5 ms x the batch's input tokens
        self.assertGreater(end["call_ms"]["mean"], 0.5 * 16 * 2 * 0.8)
        m = ev[-1]["metrics"]
        self.assertEqual(m["prefill_window"]["calls"], end["calls"])
        self.assertEqual(m["prefill_window"]["passes"], end["passes"])
        # the measured window is unchanged by the prefill window
        span = (ev[me]["t_mono_ns"] - ev[names.index("measure_start")]["t_mono_ns"]) / 1e9
        self.assertAlmostEqual(m["inference_seconds"], span, places=6)

    def test_request_override(self):
        cfg = synth_config("pw", n_prompts=2, load_seconds=0.0)
        ev = send(self.sock, dict(run_req(cfg, "off"), prefill_window_seconds=0))
        self.assertEqual(ev[-1]["event"], "result")
        self.assertNotIn("prefill_window_start", [e["event"] for e in ev])
        self.assertIsNone(ev[-1]["metrics"]["prefill_window"])
        self.assertEqual(ev[-2]["event"], "measure_end")
        ev = send(self.sock, dict(run_req(cfg, "long"), prefill_window_seconds=0.6))
        end = [e for e in ev if e["event"] == "prefill_window_end"][0]
        self.assertGreaterEqual(end["seconds"], 0.6)
        self.assertEqual(end["target_seconds"], 0.6)
        for bad in (-1, "3", True):
            ev = send(self.sock, dict(run_req(cfg, "bad"), prefill_window_seconds=bad))
            self.assertEqual(ev[-1]["event"], "error")
            self.assertEqual(ev[-1]["class"], "infrastructure")

    def test_transformers_engine_without_torch(self):
        # Here torch is missing: the engine is not offered and a run is refused as an
        # infrastructure error (wrong host), before anything is loaded.
        if TransformersEngine.available():
            self.skipTest("torch present: covered by test_transformers_gpu")
        pong = send(self.sock, {"type": "ping"})[-1]
        self.assertNotIn("transformers", pong["engines"])
        ev = send(self.sock, run_req(llem_dump(), "t"))
        self.assertEqual(ev[-1]["event"], "error")
        self.assertEqual(ev[-1]["class"], "infrastructure")
        self.assertIn("torch", ev[-1]["message"])


if __name__ == "__main__":
    unittest.main()
