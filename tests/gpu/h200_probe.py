#!/usr/bin/env python3
"""A probe of how the GPU's energy counter behaves around work edges, and what the
harness's per-step streamer costs (tests/gpu/README.md).

Run on the GPU machine while `lem-gpu-trace` reads the counter back to back. Writes one
JSON line per marked interval to --marks: {"name", "t0_ns", "t1_ns", ...} on
CLOCK_MONOTONIC (time.monotonic_ns()), the clock lem-gpu-trace stamps its reads with.

Phases:
  edges     idle, then bf16 matmul bursts with sharp edges and idle gaps: the counter's
            update period, how fast its steps follow an edge, the power after work.
  generate  a random-weight Llama 1.1B (the harness's `random:llama-1.1b` shape, bf16)
            at batch 1, 8 and 32, each shape with and without the harness's per-step
            streamer, interleaved, --repeats times, with quiet gaps between: the
            streamer's cost in window length and the power around each window.
  readers   (--readers '{"name": "CMD", ...}') two of the generate shapes, streamer on,
            interleaved, with no other process reading NVML and with each reader
            running (e.g. one reading the counter back to back, one sampling power
            and the rest at 20 Hz): whether those reads slow the inference.
Changes no GPU setting.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "..", "..", "docker", "harness")
sys.path.insert(0, HARNESS)

import torch  # noqa: E402

SHAPES = [  # (name, batch size, prompts, prompt tokens, new tokens)
    ("bs1", 1, 4, 128, 64),
    ("bs8", 8, 16, 128, 64),
    ("bs32", 32, 32, 128, 128),
]


class Marks:
    def __init__(self, path):
        self.f = open(path, "w")

    def write(self, name, t0, t1, **extra):
        rec = {"name": name, "t0_ns": t0, "t1_ns": t1}
        rec.update(extra)
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


def quiet(marks, seconds, name="quiet"):
    t0 = time.monotonic_ns()
    time.sleep(seconds)
    marks.write(name, t0, time.monotonic_ns())


def edges(marks):
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    small = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    torch.mm(big, big)
    torch.cuda.synchronize()
    quiet(marks, 2.0)
    for name, seconds, m in [("heavy_2s", 2.0, big), ("light_2s", 2.0, small),
                             ("heavy_0.5s", 0.5, big), ("heavy_1s", 1.0, big)]:
        t0 = time.monotonic_ns()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(4):
                torch.mm(m, m)
            torch.cuda.synchronize()
        marks.write(name, t0, time.monotonic_ns())
        quiet(marks, 1.5)
    del big, small
    torch.cuda.empty_cache()


def build_model():
    from transformers import AutoConfig, AutoModelForCausalLM
    from engines import hf_logic as L
    cfg = dict(L.RANDOM_PRESETS["llama-1.1b"])
    model_type = cfg.pop("model_type")
    torch.manual_seed(42)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg),
                                                 dtype=torch.bfloat16)
    model.eval()
    return model


class NullObserver:
    def first_token(self, i):
        pass

    def decode(self):
        pass

    def tokens(self, live):
        pass


def generate_once(model, shape, streamer_on):
    from engines.transformers import _streamer_class
    _, bs, n, plen, new = shape
    g = torch.Generator(device="cpu").manual_seed(7)
    ids = torch.randint(3, 32000, (n, plen), generator=g)
    torch.cuda.synchronize()
    t0 = time.monotonic_ns()
    out_tokens = 0
    for first in range(0, n, bs):
        batch = ids[first:first + bs].to("cuda")
        mask = torch.ones_like(batch)
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        if streamer_on:
            kw["streamer"] = _streamer_class()(NullObserver(), batch.shape[0], batch.shape, [2])
        with torch.inference_mode():
            seqs = model.generate(input_ids=batch, attention_mask=mask, **kw)
        torch.cuda.synchronize()
        out_tokens += (seqs.shape[1] - plen) * seqs.shape[0]
    return t0, time.monotonic_ns(), out_tokens


def generate_phase(marks, model, repeats, gap_s, tag="", readers=None):
    """Each shape, each condition, interleaved (the order rotates every repeat).
    Without `readers`: the streamer on and off. With `readers` ({name: argv}): the
    streamer on, with no other process reading NVML ("none") or with each reader."""
    shapes = SHAPES if readers is None else [SHAPES[0], SHAPES[2]]
    for shape in shapes:
        generate_once(model, shape, True)  # compile-free warm-up of this shape
    conds = [True, False] if readers is None else ["none"] + sorted(readers)
    for r in range(repeats):
        for shape in shapes:
            k = r % len(conds)
            for cond in conds[k:] + conds[:k]:
                proc = None
                if readers is not None and cond != "none":
                    proc = subprocess.Popen(readers[cond], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                quiet(marks, gap_s)
                t0, t1, toks = generate_once(model, shape, cond if readers is None else True)
                key = "streamer" if readers is None else "reader"
                marks.write("gen%s_%s" % (tag, shape[0]), t0, t1, repeat=r, batch_size=shape[1],
                            output_tokens=toks, **{key: cond})
                if proc is not None:
                    proc.terminate()
                    proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--marks", required=True)
    p.add_argument("--phase", choices=["edges+generate", "readers"], default="edges+generate")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gap", type=float, default=1.0)
    p.add_argument("--readers", help='JSON {"name": "command line", ...} of other NVML readers')
    args = p.parse_args()
    marks = Marks(args.marks)
    if args.phase == "edges+generate":
        edges(marks)
        model = build_model()
        generate_phase(marks, model, args.repeats, args.gap)
    else:
        model = build_model()
        readers = {k: v.split() for k, v in json.loads(args.readers).items()}
        generate_phase(marks, model, args.repeats, 0.3, tag="_rd", readers=readers)


if __name__ == "__main__":
    main()
