"""Prompt-set loading per llem FORMAT.md section 11 (standard library only).

The worker resolves `task.dataset.source` to a file on this machine (the built-in
alias `aienergyscore` included) and passes it as the request's `dataset_path`.
"""

import json
import os
import random

from protocol import ConfigError

PROMPT_KEYS = ("prompt", "text", "instruction", "input", "question")
ORDERS = ("interleaved", "grouped", "shuffled")


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
    """Return exactly `n_prompts` prompt strings, or raise ConfigError."""
    if order not in ORDERS:
        raise ConfigError(
            "task.dataset.order %r is not one of %s; fix the config" % (order, ", ".join(ORDERS))
        )
    if not isinstance(path, str) or not path:
        raise ConfigError("dataset_path is empty; the worker must pass the resolved .jsonl path")
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
