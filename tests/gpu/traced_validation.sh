#!/usr/bin/env bash
# The live-energy validation (h200_validation.sh) with OpenTelemetry export on: the
# coordinator and the worker send their spans over OTLP/HTTP to tests/gpu/otlp_sink.py
# while the GPU is measured, so the energy figures are judged with tracing running,
# and the spans come back in $OUT/traced.tar.gz (otlp.bin: length-prefixed
# ExportTraceServiceRequest bodies; the worker's log) for tests/gpu/otlp_check.py.
# Changes no GPU setting.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
rm -f /tmp/otlp.bin
python3 tests/gpu/otlp_sink.py 4318 /tmp/otlp.bin &
SINK=$!
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318
export OTEL_BSP_SCHEDULE_DELAY=1000
bash tests/gpu/h200_validation.sh
# Stop the fleet so each process flushes what it still holds.
pkill -TERM -f "$PWD/.carry/bin/lem-worker"; sleep 3
pkill -TERM -f "$PWD/.carry/bin/lem-coord"; sleep 2
kill "$SINK"
ls -la /tmp/otlp.bin
mv "$OUT/worker.log" /tmp/worker.log
tar -C /tmp -czf "$OUT/traced.tar.gz" otlp.bin worker.log
ls -la "$OUT"
