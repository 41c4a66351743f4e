#!/usr/bin/env python3
"""A GPU load pattern for recording an NVML trace (tests/gpu/README.md).

Idle, then bursts of bf16 matmuls of different lengths and intensities separated by
idle gaps, so a trace holds rising and falling edges, short and long windows. Writes
one JSON line per window to --marks: {"name", "t0_ns", "t1_ns"} on CLOCK_MONOTONIC
(time.monotonic_ns()), the clock lem-gpu-trace stamps its samples with. Changes no
GPU setting.
"""
import argparse
import json
import time

import torch


def burst(seconds, n, a, b):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(4):
            torch.mm(a, b)
        torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--marks", required=True)
    p.add_argument("--lead-idle", type=float, default=4.0)
    args = p.parse_args()
    torch.manual_seed(0)
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    small = torch.randn(2048, 2048, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    marks = open(args.marks, "w")
    time.sleep(args.lead_idle)
    plan = [
        ("heavy_3s", 3.0, big),
        ("idle_2s", 2.0, None),
        ("light_2s", 2.0, small),
        ("idle_1s", 1.0, None),
        ("heavy_0.5s", 0.5, big),
        ("idle_1.5s", 1.5, None),
        ("heavy_10s", 10.0, big),
        ("idle_3s", 3.0, None),
    ]
    for name, seconds, m in plan:
        t0 = time.monotonic_ns()
        if m is None:
            time.sleep(seconds)
        else:
            burst(seconds, m.shape[0], m, m)
        t1 = time.monotonic_ns()
        marks.write(json.dumps({"name": name, "t0_ns": t0, "t1_ns": t1}) + "\n")
        marks.flush()


if __name__ == "__main__":
    main()
