"""The harness-only engine images (docker/engine-images.sh ENGINE --harness-only).

The full vLLM and TensorRT-LLM images need NVIDIA's base images, which cannot be
pulled where this repo is built; this test builds the part that can be built (the
same Dockerfiles on the Debian base, engine check off), starts a container and
checks that its harness refuses the engine it lacks with the image hint, and that
the labels carry the pins. Needs Docker and the base image (docker/base-image.sh,
built by test.sh first); skipped, with the reason printed, without them or with
LEM_SKIP_DOCKER=1.
"""

import json
import os
import shutil
import subprocess
import sys
import unittest
import uuid

import engine_fixtures as F

SCRIPT = os.path.join(F.REPO, "docker", "engine-images.sh")
PINS = {"vllm": "vllm==0.19.1", "tensorrt": "tensorrt-llm==1.2.1"}
MISSING = {"vllm": "vllm is not installed in this image",
           "tensorrt": "tensorrt_llm is not installed in this image"}


def docker_reason():
    if os.environ.get("LEM_SKIP_DOCKER") == "1":
        return "LEM_SKIP_DOCKER=1"
    if shutil.which("docker") is None:
        return "docker is not installed"
    if subprocess.run(["docker", "version"], capture_output=True).returncode != 0:
        return "the Docker daemon is not reachable"
    if subprocess.run(["docker", "image", "inspect", "lem-fleet/base:latest"],
                      capture_output=True).returncode != 0:
        return "no lem-fleet/base image (run docker/base-image.sh or ./test.sh first)"
    return None


REASON = docker_reason()
if REASON:
    print("SKIPPING engine image tests: %s" % REASON, file=sys.stderr)


def sh(*cmd, stdin=None, check=True):
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError("%s -> %s\nstdout: %s\nstderr: %s"
                             % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    return r


@unittest.skipIf(REASON, REASON or "")
class HarnessOnlyImageTests(unittest.TestCase):
    def check_engine(self, engine):
        tag = sh(SCRIPT, engine, "--harness-only").stdout.strip().splitlines()[-1]
        self.assertTrue(tag.startswith("lem-fleet/%s-harness-only:" % engine), tag)
        labels = json.loads(sh("docker", "image", "inspect", "-f", "{{json .Config.Labels}}",
                               tag).stdout)
        self.assertEqual(labels["org.lem-fleet.engine"], engine)
        self.assertEqual(labels["org.lem-fleet.engine-pin"], PINS[engine])
        self.assertEqual(labels["org.lem-fleet.engine-checked"], "0")
        self.assertEqual(labels["org.lem-fleet.protocol"], "1")
        self.assertTrue(labels["org.lem-fleet.base-digest"])

        name = "lem-engine-image-test-%s" % uuid.uuid4().hex[:8]
        sh("docker", "run", "-d", "--name", name, "--init", "--network", "none",
           "--read-only", "--tmpfs", "/tmp", "--user", "%d:%d" % (os.getuid(), os.getgid()),
           tag, "python3", "/opt/lem/harness/server.py", "--socket", "/tmp/h.sock",
           "--no-parent-watch")
        try:
            client = ["docker", "exec", "-i", name, "python3", "-I", "-S",
                      "/opt/lem/harness/client.py", "--socket", "/tmp/h.sock",
                      "--connect-wait-seconds", "20"]
            pong = json.loads(sh(*client, stdin='{"type": "ping"}\n').stdout.splitlines()[-1])
            self.assertEqual(pong["engines"], ["synthetic"])
            req = {"type": "run", "run_id": "x",
                   "config": F.dump(engine, model="random:llama-tiny")}
            r = sh(*client, stdin=json.dumps(req) + "\n", check=False)
            self.assertEqual(r.returncode, 3, r.stderr)
            err = json.loads(r.stdout.splitlines()[-1])
            self.assertEqual(err["class"], "infrastructure")
            self.assertIn(MISSING[engine], err["message"])
            self.assertIn("docker/%s/" % engine, err["message"])
        finally:
            sh("docker", "rm", "-f", name, check=False)

    def test_vllm_harness_only_image(self):
        self.check_engine("vllm")

    def test_tensorrt_harness_only_image(self):
        self.check_engine("tensorrt")

    def test_a_full_build_without_the_base_says_how_to_get_it(self):
        r = sh(SCRIPT, "vllm", "--base", "lem-fleet/no-such-base:0", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("never pulls", r.stderr)
        self.assertIn("docker save", r.stderr)


if __name__ == "__main__":
    unittest.main()
