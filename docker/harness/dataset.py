"""Prompt-set loading per llem FORMAT.md section 11 (standard library only).

`task.dataset.source` is either the built-in alias `aienergyscore`, which resolves
to the copy of llem 0.7.0's prompt set shipped beside this file
(datasets/aienergyscore.jsonl, see datasets/README.md), or a path to a `.jsonl`
file (relative paths are relative to the working directory of the run, as in llem).
`load_prompts` accepts either.
"""

import json
import os
import random

from protocol import ConfigError

PROMPT_KEYS = ("prompt", "text", "instruction", "input", "question")
ORDERS = ("interleaved", "grouped", "shuffled")

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
BUILTIN = {"aienergyscore": "aienergyscore.jsonl"}
# The shipped copy is llem 0.7.0's file byte for byte (FORMAT.md 11).
AIENERGYSCORE_SHA256 = "99410f8dd50a176a7dfba137a4ff51a4dc555648f76eb377e43e9ba79129d835"


def resolve_source(source):
    """The file a `task.dataset.source` names, or raise ConfigError."""
    if not isinstance(source, str) or not source.strip():
        raise ConfigError("task.dataset.source is empty; use 'aienergyscore' or a path to a .jsonl file")
    if source in BUILTIN:
        path = os.path.join(BUILTIN_DIR, BUILTIN[source])
        if not os.path.isfile(path):
            raise ConfigError(
                "the built-in dataset %r is not installed at %s; reinstall the harness "
                "(docker/harness/datasets/)" % (source, path)
            )
        return path
    if not source.endswith(".jsonl"):
        raise ConfigError(
            "task.dataset.source %r is neither the built-in 'aienergyscore' nor a path "
            "ending in .jsonl; fix task.dataset.source" % source
        )
    return source


def _usable(record):
    """(prompt, source) of a usable record, or None."""
    if not isinstance(record, dict):
        return None
    if any(isinstance(k, str) and k.startswith("_") for k in record):
        return None
    for key in PROMPT_KEYS:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            source = record.get("source")
            return value.strip(), source if isinstance(source, str) else ""
    return None


def load_prompts(path, n_prompts, order="interleaved", seed=42):
    """Return exactly `n_prompts` prompt strings, or raise ConfigError.

    `path` is a `.jsonl` path or a built-in alias (`aienergyscore`). Per FORMAT.md 11:
    blank and non-JSON lines are skipped, as are records with a key starting with
    `_`; the prompt is the first of PROMPT_KEYS holding a non-blank string, trimmed.
    `interleaved` = file order (reading stops at `n_prompts`); `grouped` = stable
    sort by the record's `source` field; `shuffled` = every usable record shuffled
    with CPython's `random.Random(seed)`, then the first `n_prompts`.
    """
    if order not in ORDERS:
        raise ConfigError(
            "task.dataset.order %r is not one of %s; fix the config" % (order, ", ".join(ORDERS))
        )
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ConfigError("task.dataset.n_prompts must be an integer >= 1, got %r" % (n_prompts,))
    if not isinstance(path, str) or not path:
        raise ConfigError("dataset_path is empty; the worker must pass the resolved .jsonl path")
    path = resolve_source(path) if path in BUILTIN else path
    if not os.path.isfile(path):
        raise ConfigError(
            "dataset file %r does not exist on this host; fix task.dataset.source or "
            "install the dataset" % path
        )
    records = []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                usable = _usable(rec)
                if usable is None:
                    continue
                records.append(usable)
                if order == "interleaved" and len(records) >= n_prompts:
                    break
    except OSError as exc:
        raise ConfigError("cannot read dataset file %r: %s" % (path, exc)) from exc
    if len(records) < n_prompts:
        raise ConfigError(
            "dataset %r has %d usable prompts but task.dataset.n_prompts is %d; lower "
            "n_prompts or use a larger dataset" % (path, len(records), n_prompts)
        )
    if order == "grouped":
        records.sort(key=lambda r: r[1])  # stable
    elif order == "shuffled":
        random.Random(seed).shuffle(records)
    return [r[0] for r in records[:n_prompts]]
