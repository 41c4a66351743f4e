"""Checks the spans a traced device run exported (tests/gpu/traced_validation.sh).

For every result in results.jsonl: its trace_id names a trace that holds the run's
spans (lease > run > gate/baseline/dispatch > load/window/prefill_window, collect,
report) and the coordinator's handling of the lease and the complete; the `window`
span (the worker's view, from harness events as they arrived) is compared with the
result's measured window (the harness's own monotonic stamps). Prints one line per
run and a summary; exit 1 if a run's trace is incomplete.

    python tests/gpu/otlp_check.py otlp.bin results.jsonl
Needs the `opentelemetry-proto` package (pip).
"""
import json
import struct
import sys
from collections import defaultdict

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def spans(path):
    data = open(path, "rb").read()
    i = 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        req = ExportTraceServiceRequest()
        req.ParseFromString(data[i + 4 : i + 4 + n])
        i += 4 + n
        for rs in req.resource_spans:
            svc = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    yield {
                        "service": svc,
                        "name": s.name,
                        "trace": s.trace_id.hex(),
                        "id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "dur_s": (s.end_time_unix_nano - s.start_time_unix_nano) / 1e9,
                    }


def main():
    by_trace = defaultdict(list)
    total = 0
    for s in spans(sys.argv[1]):
        by_trace[s["trace"]].append(s)
        total += 1
    rows = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
    print(f"{total} spans in {len(by_trace)} traces; {len(rows)} results")
    bad, diffs = 0, []
    for r in rows:
        t = r.get("trace_id")
        got = by_trace.get(t or "", [])
        ids = {s["id"]: s for s in got}
        names = {(s["service"], s["name"]) for s in got}
        need = {("lem-worker", n) for n in ["lease", "run", "dispatch", "load", "window", "collect", "report"]}
        need |= {("lem-coord", "Coordinator/lease"), ("lem-coord", "Coordinator/complete")}
        missing = sorted(need - names)
        parent = lambda s: ids.get(s["parent"], {}).get("name")
        wrong = [
            s["name"]
            for s in got
            if s["service"] == "lem-worker"
            and (s["name"] in ("gate", "baseline", "dispatch", "collect", "report") and parent(s) != "run"
                 or s["name"] in ("load", "window", "prefill_window") and parent(s) != "dispatch"
                 or s["name"] == "run" and parent(s) != "lease")
        ]
        window = next((s["dur_s"] for s in got if s["name"] == "window"), None)
        measured = r.get("total_inference_time_sec")
        d = None if window is None or measured is None else (window - measured) * 1000
        if d is not None:
            diffs.append(abs(d))
        ok = not missing and not wrong
        bad += not ok
        print(
            f"{r['experiment_id']}: trace {t} spans={len(got)} window span {window} s, measured {measured} s"
            f" (diff {d if d is None else round(d, 2)} ms){'' if ok else f' MISSING {missing} WRONG PARENT {wrong}'}"
        )
    if diffs:
        diffs.sort()
        print(f"window span - measured window: median |diff| {diffs[len(diffs)//2]:.2f} ms, max {diffs[-1]:.2f} ms")
    print(f"{len(rows) - bad} of {len(rows)} runs with a complete trace")
    sys.exit(1 if bad else 0)


main()
