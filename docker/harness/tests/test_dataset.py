"""Tests for dataset.py against the shipped aienergyscore set (FORMAT.md 11)."""

import hashlib
import json
import os
import random
import sys
import tempfile
import unittest

HARNESS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if HARNESS not in sys.path:
    sys.path.insert(0, HARNESS)

import dataset  # noqa: E402
from protocol import ConfigError  # noqa: E402

SHIPPED = os.path.join(HARNESS, "datasets", "aienergyscore.jsonl")


def all_prompts():
    """The prompts of the shipped file, read independently of dataset.py."""
    out = []
    with open(SHIPPED, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            if "prompt" in rec:
                out.append(rec["prompt"].strip())
    return out


class BuiltinDatasetTests(unittest.TestCase):
    def test_shipped_file_is_llems_byte_for_byte(self):
        with open(SHIPPED, "rb") as fh:
            data = fh.read()
        self.assertEqual(hashlib.sha256(data).hexdigest(), dataset.AIENERGYSCORE_SHA256)
        self.assertEqual(len(data), 1723096)
        self.assertEqual(data.count(b"\n"), 1001)

    def test_alias_resolves_to_the_shipped_file(self):
        self.assertEqual(os.path.realpath(dataset.resolve_source("aienergyscore")),
                         os.path.realpath(SHIPPED))

    def test_first_prompts_in_file_order(self):
        got = dataset.load_prompts("aienergyscore", 3)
        self.assertEqual(len(got), 3)
        self.assertTrue(got[0].startswith("Du Fu 's work is notable above all for its range ."), got[0][:60])
        self.assertEqual(got, all_prompts()[:3])
        # The header line (keys starting with "_") is never a prompt.
        self.assertNotIn("AIEnergyScore/text_generation", got)
        self.assertEqual(len(dataset.load_prompts("aienergyscore", 1000)), 1000)

    def test_grouped_is_file_order_for_the_builtin_set(self):
        self.assertEqual(dataset.load_prompts("aienergyscore", 25, "grouped"), all_prompts()[:25])

    def test_shuffled_uses_cpython_random_with_the_task_seed(self):
        for seed in (42, 0, 7, 20240607):
            expected = all_prompts()
            random.Random(seed).shuffle(expected)
            self.assertEqual(dataset.load_prompts("aienergyscore", 10, "shuffled", seed), expected[:10])
        # The RNG is CPython's MT19937 seeded as FORMAT.md 8.5 says (its test vector).
        order = list(range(9))
        random.Random(20240607).shuffle(order)
        self.assertEqual(order, [2, 3, 8, 5, 1, 4, 0, 7, 6])
        # Regression anchor: the first shuffled prompt for the default seed.
        first = dataset.load_prompts("aienergyscore", 1, "shuffled", 42)[0]
        self.assertEqual(first, all_prompts()[_first_index_for_seed_42()])

    def test_too_few_prompts_is_a_configuration_error(self):
        with self.assertRaises(ConfigError) as cm:
            dataset.load_prompts("aienergyscore", 1001)
        self.assertIn("1000 usable prompts", str(cm.exception))
        self.assertIn("n_prompts is 1001", str(cm.exception))

    def test_bad_sources_are_configuration_errors(self):
        tmp = tempfile.mkdtemp()
        missing = os.path.join(tmp, "missing.jsonl")
        with self.assertRaises(ConfigError) as cm:
            dataset.load_prompts(missing, 1)
        self.assertIn("does not exist", str(cm.exception))
        with self.assertRaises(ConfigError) as cm:
            dataset.resolve_source("prompts.csv")
        self.assertIn(".jsonl", str(cm.exception))
        with self.assertRaises(ConfigError):
            dataset.load_prompts("aienergyscore", 0)
        with self.assertRaises(ConfigError):
            dataset.load_prompts("aienergyscore", 5, "random")


def _first_index_for_seed_42():
    idx = list(range(1000))
    random.Random(42).shuffle(idx)
    return idx[0]


if __name__ == "__main__":
    unittest.main()
