"""Shared by the fakes: the constructor log and the recorded fixture."""
import json
import os


def log(kind, **data):
    path = os.environ.get("FAKE_ENGINE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(data, kind=kind), default=str, sort_keys=True) + "\n")


def fixture(env):
    with open(os.environ[env], "r", encoding="utf-8") as fh:
        return json.load(fh)
