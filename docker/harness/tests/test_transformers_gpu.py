"""GPU tests of the transformers engine (real server process, random-weight models).

Run from the repository root on a host with torch + transformers + CUDA:
    python3 -m unittest docker/harness/tests/test_transformers_gpu.py -v
Without torch, transformers or a CUDA device every test is skipped with the reason
printed. No hub access is needed (random:llama-tiny is built from a config).
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

from test_harness import send, start_server, stop_server  # noqa: E402

FLOOR_CAP = 0.05
WINDOW_S = 0.5
MAX_OUT = 16


def _gpu_reason():
    try:
        import torch
        import transformers
    except Exception as exc:
        return "torch/transformers not importable (%s: %s)" % (type(exc).__name__, exc)
    if not torch.cuda.is_available():
        return "torch %s sees no CUDA device" % torch.__version__
    return None


REASON = _gpu_reason()


def setUpModule():
    if REASON is not None:
        print("\nSKIPPING transformers GPU tests: %s" % REASON, file=sys.stderr, flush=True)
        raise unittest.SkipTest(REASON)


def llem_dump(model="random:llama-tiny", batch_size=1, n_prompts=8, max_out=MAX_OUT,
              engine_params=None, sampling=None, preset=None, warmup=True):
    """A config shaped like llem's canonical dump: every declared key, nulls for unset."""
    ep = {k: None for k in (
        "dtype", "attn_implementation", "load_in_4bit", "load_in_8bit",
        "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
        "device_map", "max_memory", "low_cpu_mem_usage", "tp_plan", "tp_size", "use_cache",
        "cache_implementation", "num_beams", "early_stopping", "length_penalty",
        "no_repeat_ngram_size", "prompt_lookup_num_tokens")}
    ep.update(engine_params or {})
    sp = {k: None for k in ("temperature", "do_sample", "top_k", "top_p",
                            "repetition_penalty", "min_p", "min_new_tokens")}
    sp.update(sampling or {})
    return {
        "task": {"model": model, "dataset": {"source": "aienergyscore", "n_prompts": n_prompts,
                                             "order": "interleaved"},
                 "max_input_tokens": 64, "max_output_tokens": max_out, "random_seed": 42},
        "engine": "transformers",
        "serving_mode": "offline",
        "measurement": None,
        "sampling_preset": preset,
        "transformers": {
            "engine_params": ep, "sampling_params": sp,
            "llem_execution": {"batch_size": batch_size, "torch_compile": None,
                               "torch_compile_mode": None, "torch_compile_backend": None,
                               "allow_tf32": None, "autocast_enabled": None,
                               "autocast_dtype": None},
        },
        "vllm": None, "tensorrt": None, "server": None,
        "offline": {"warmup": {"enabled": warmup, "n_prompts": 2, "thermal_floor_seconds": 30.0,
                               "convergence_detection": False, "cv_threshold": 0.05,
                               "max_prompts": 20, "window_size": 3, "min_prompts": 5}},
        "passthrough_kwargs": None,
    }


class TransformersGpuTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="hng")
        cls.sock = os.path.join(cls._tmp.name, "t.sock")
        cls.log = open(os.path.join(cls._tmp.name, "server.log"), "w")
        cls.dataset = os.path.join(cls._tmp.name, "prompts.jsonl")
        with open(cls.dataset, "w") as fh:
            fh.write(json.dumps({"_source": "test"}) + "\n")
            for i in range(12):
                fh.write(json.dumps({"prompt": "Prompt %d: " % i + "energy é ✓ " * (i + 1)})
                         + "\n")
        cls.proc = start_server(cls.sock, "--max-thermal-floor-seconds", str(FLOOR_CAP),
                                "--prefill-window-seconds", str(WINDOW_S), stdout=cls.log)

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.sock, cls.proc, timeout=60)
        cls.log.close()
        if os.environ.get("LEM_KEEP_HARNESS_LOG"):
            with open(os.path.join(cls._tmp.name, "server.log")) as fh:
                sys.stderr.write(fh.read())
        cls._tmp.cleanup()

    def run_cfg(self, cfg, run_id, timeout=600, **extra):
        req = {"type": "run", "run_id": run_id, "config": cfg, "dataset_path": self.dataset}
        req.update(extra)
        return send(self.sock, req, timeout=timeout)

    def check_run(self, ev, k, n_prompts=8, max_out=MAX_OUT, streaming=True):
        names = [e["event"] for e in ev]
        self.assertEqual(names[-1], "result", ev[-1])
        stamps = [e["t_mono_ns"] for e in ev]
        self.assertEqual(stamps, sorted(stamps))
        ms = names.index("measure_start")
        me = names.index("measure_end")
        expected = []
        n_batches = (n_prompts + k - 1) // k
        for b in range(n_batches):
            kb = min(k, n_prompts - b * k)
            expected += ["phase"] + ["first_token"] * kb + ["phase"] + ["request_end"] * kb
        expected += ["phase"]
        self.assertEqual(names[ms + 1:me], expected)
        body = ev[ms + 1:me]
        prefill_t = {}
        for e in body:
            if e["event"] == "phase" and e["phase"] == "prefill":
                prefill_t[e["batch_index"]] = e["t_mono_ns"]
                self.assertTrue(all(n >= 1 for n in e["input_tokens"]))
        firsts = {e["request"]: e for e in body if e["event"] == "first_token"}
        ends = [e for e in body if e["event"] == "request_end"]
        self.assertEqual(sorted(firsts), list(range(n_prompts)))
        self.assertEqual([e["request"] for e in ends], list(range(n_prompts)))
        for e in ends:
            self.assertEqual(e["output_tokens"], max_out)  # random weights: exactly max
            self.assertEqual(len(e["token_times_ms"]), max_out)
            self.assertEqual(e["token_times_ms"], sorted(e["token_times_ms"]))
            f = firsts[e["request"]]
            self.assertGreater(f["t_mono_ns"], prefill_t[e["batch_index"]])
            self.assertLessEqual(f["t_mono_ns"], e["t_mono_ns"])
            if streaming:
                self.assertEqual(e["token_times_ms"][0], 0.0)
                self.assertNotIn("estimated", e)
        # prefill window after measure_end, before result
        self.assertEqual(names[me + 1], "prefill_window_start")
        we = names.index("prefill_window_end")
        inside = ev[me + 2:we]
        self.assertTrue(inside and all(e["event"] == "phase" for e in inside))
        self.assertEqual([e["phase"] for e in inside[-1:]], ["idle"])
        calls = [e for e in inside if e["phase"] == "prefill"]
        end = ev[we]
        self.assertEqual(end["calls"], len(calls))
        self.assertEqual(end["batches"], n_batches)
        self.assertEqual(end["calls"], end["passes"] * n_batches)
        self.assertGreaterEqual(end["seconds"], WINDOW_S)
        self.assertEqual(end["batch_size"], k)
        m = ev[-1]["metrics"]
        self.assertEqual(m["output_tokens"], n_prompts * max_out)
        self.assertEqual(m["batches"], n_batches)
        self.assertEqual(m["ttft_ms"]["samples"], n_prompts)
        self.assertEqual(m["prefill_window"]["calls"], end["calls"])
        res = ev[-1]
        self.assertEqual(res["model_weights"], "random")
        self.assertIn("torch", res["versions"])
        self.assertIn("transformers", res["versions"])
        self.assertEqual(res["observed_sampling_params"]["max_new_tokens"], max_out)
        self.assertEqual(res["observed_sampling_params"]["min_new_tokens"], max_out)
        self.assertEqual(res["observed_engine_params"]["dtype"], "bfloat16")
        return m

    def test_1_batch1_then_batch4_reuses_model(self):
        ev = self.run_cfg(llem_dump(batch_size=1), "b1")
        self.assertEqual(ev[0]["event"], "loaded", ev[-1])
        self.assertFalse(ev[0]["already_loaded"])
        ws = [e for e in ev if e["event"] == "warmup"]
        self.assertEqual(len(ws), 2)
        self.assertTrue(all(w["latency_ms"] for w in ws), ws)
        m = self.check_run(ev, 1)
        self.assertEqual(m["itl_measurement_mode"], "true_streaming")
        self.assertFalse(m["latency_estimated"])
        self.assertEqual(m["itl_ms"]["samples"], 8 * (MAX_OUT - 1))
        print("\n  bs1: ttft median %.2f ms, itl median %.3f ms, prefill call %.2f ms"
              % (m["ttft_ms"]["median"], m["itl_ms"]["median"],
                 [e for e in ev if e["event"] == "prefill_window_end"][0]["call_ms"]["mean"]),
              file=sys.stderr)

        ev = self.run_cfg(llem_dump(batch_size=4, preset="standard"), "b4")
        self.assertEqual(ev[0]["event"], "loaded", ev[-1])
        self.assertTrue(ev[0]["already_loaded"], "batch_size/sampling change must not reload")
        m = self.check_run(ev, 4)
        self.assertEqual(ev[-1]["observed_sampling_params"]["temperature"], 1.0)
        pong = send(self.sock, {"type": "ping"})[-1]
        self.assertIn("transformers", pong["engines"])
        self.assertEqual(pong["loaded_model_key"], ev[0]["model_key"])

    def test_2_beam_search_is_estimated(self):
        cfg = llem_dump(batch_size=2, n_prompts=4, engine_params={"num_beams": 2},
                        warmup=False)
        ev = self.run_cfg(cfg, "beam")
        self.assertEqual(ev[-1]["event"], "result", ev[-1])
        m = self.check_run(ev, 2, n_prompts=4, streaming=False)
        self.assertEqual(m["itl_measurement_mode"], "proportional")
        self.assertTrue(m["latency_estimated"])
        ends = [e for e in ev if e["event"] == "request_end"]
        self.assertTrue(all(e.get("estimated") for e in ends))

    def test_3_prefill_window_disabled_per_request(self):
        ev = self.run_cfg(llem_dump(batch_size=4, warmup=False), "nowin",
                          prefill_window_seconds=0)
        names = [e["event"] for e in ev]
        self.assertEqual(names[-1], "result", ev[-1])
        self.assertNotIn("prefill_window_start", names)
        self.assertIsNone(ev[-1]["metrics"]["prefill_window"])

    def test_4_uncached_hub_id_is_configuration_error(self):
        ev = self.run_cfg(llem_dump(model="no-such-org/no-such-model-xyz"), "hub")
        self.assertEqual(ev[-1]["event"], "error")
        self.assertEqual(ev[-1]["class"], "configuration", ev[-1])
        self.assertIn("no hub access", ev[-1]["message"])

    def test_5_bad_generate_kwarg_is_configuration_error(self):
        cfg = llem_dump(batch_size=1, n_prompts=2, warmup=False,
                        sampling={"no_such_generate_kwarg": 3})
        ev = self.run_cfg(cfg, "badkw")
        self.assertEqual(ev[-1]["event"], "error", ev[-1])
        self.assertEqual(ev[-1]["class"], "configuration", ev[-1])
        self.assertIn("no_such_generate_kwarg", ev[-1]["message"])


if __name__ == "__main__":
    unittest.main()
