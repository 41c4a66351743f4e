#!/usr/bin/env python3
"""Records the signatures the vLLM and TensorRT-LLM engines use, from the pinned packages.

    python3 docker/engines-signatures/record.py [--cache DIR] [--out DIR] [--check]

Reads the packages' own source, never memory: the wheels are downloaded with
`pip download --no-deps` into a cache (default $LEM_WHEEL_CACHE, else
~/.cache/lem-fleet/wheels; they are hundreds of MB and never committed) and parsed
with `ast` straight out of the zip: nothing is imported, no GPU is needed.

What it writes (docker/harness/engines/signatures/ by default):

* `vllm.json`: vLLM 0.19.1 from its wheel: `LLM.__init__` (whose **kwargs go to
  `EngineArgs`), the `EngineArgs` dataclass fields, `SamplingParams` and
  `BeamSearchParams` (msgspec structs), `LLM.generate`, `LLM.beam_search`,
  `LLMEngine.add_request` / `step` (the streaming loop), `RequestOutputKind`, and the
  nested config dataclasses the llem fields reach (`SpeculativeConfig`,
  `CompilationConfig`, `AttentionConfig`, with their init=False fields marked). A
  cross-check against llem 0.7.0's own `schema.discovered.json` for vLLM (which llem
  recorded with `dataclasses.fields(EngineArgs)` in a vLLM 0.19.1 image) is stored
  beside it.
* `tensorrt_llm.json`: TensorRT-LLM 1.2.1. PyPI serves only a 10 kB `wheel_stub`
  sdist for it, whose build downloads the real wheel from https://pypi.nvidia.com/;
  where that index cannot be reached (the development machine), the fields come from
  llem 0.7.0's `engines/tensorrt/schema.discovered.json`, which llem recorded inside
  `nvcr.io/nvidia/tensorrt-llm/release:1.2.1` (`TorchLlmArgs`/`TrtLlmArgs`
  `.model_json_schema()` with per-field backends, `dataclasses.fields(SamplingParams)`).
  The file says which source it used. Given a real wheel (`--tensorrt-wheel PATH`,
  or one that pip can fetch), it parses `tensorrt_llm/llmapi/llm_args.py`,
  `sampling_params.py` and `llmapi/llm.py` instead.
* `llem.json`: llem 0.7.0's declared `vllm:` / `tensorrt:` section fields (its
  generated pydantic models, `config/generated/{vllm,tensorrt}.py`), the list the
  harness's tests walk.

Each file carries the package version and the sha256 of the file it was read from.
`--check` rewrites nothing and exits 1 when a fixture differs from what the
packages give (run it after changing a pin).
"""

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "docker", "harness", "engines", "signatures")

# The pins (llem 0.7.0's rule corpora, FORMAT.md section 1). Keep in step with
# VLLM_PIN / TENSORRT_LLM_PIN in docker/harness/engines/{vllm,tensorrt}_logic.py and
# docker/{vllm,tensorrt}/Dockerfile: the harness's tests compare them.
VLLM_PIN = "0.19.1"
TENSORRT_LLM_PIN = "1.2.1"
LLEM_PIN = "0.7.0"

FORMAT_VERSION = 1


def say(message):
    print("record: %s" % message, file=sys.stderr)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- downloads --------------------------------------------------------------------------
def pip_download(requirement, cache, extra=()):
    """pip download --no-deps REQ into cache; returns (path or None, pip's output tail)."""
    os.makedirs(cache, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1]
    for fn in sorted(os.listdir(cache)):
        low = fn.lower().replace("-", "_")
        if low.startswith("%s_%s" % (name, version)) and fn.endswith(".whl"):
            return os.path.join(cache, fn), "cached"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", cache, requirement] + list(extra)
    say("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = "\n".join(proc.stdout.strip().splitlines()[-6:])
    for fn in sorted(os.listdir(cache)):
        low = fn.lower().replace("-", "_")
        if low.startswith("%s_%s" % (name, version)) and fn.endswith(".whl"):
            return os.path.join(cache, fn), tail
    return None, tail


def pypi_files(project, version):
    """The files PyPI lists for project==version (its JSON simple API), or an error."""
    import urllib.request
    url = "https://pypi.org/simple/%s/" % project
    req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data = json.load(resp)
    except Exception as exc:
        return None, "%s: %s" % (type(exc).__name__, exc)
    out = []
    for f in data.get("files", []):
        fn = f.get("filename", "")
        if "-%s." % version in fn or "-%s-" % version in fn:
            out.append({"filename": fn, "sha256": (f.get("hashes") or {}).get("sha256"),
                        "url": f.get("url")})
    return out, None


def fetch_sdist(entry, cache):
    import urllib.request
    path = os.path.join(cache, entry["filename"])
    if not os.path.exists(path):
        with urllib.request.urlopen(entry["url"], timeout=60) as resp, open(path, "wb") as fh:
            fh.write(resp.read())
    return path


# --- ast helpers --------------------------------------------------------------------------
class Source:
    """One module's text and tree, read from a zip."""

    def __init__(self, zf, path):
        self.path = path
        self.text = zf.read(path).decode("utf-8")
        self.tree = ast.parse(self.text, filename=path)

    def seg(self, node):
        if node is None:
            return None
        text = ast.get_source_segment(self.text, node)
        return " ".join(text.split()) if text is not None else None

    def cls(self, name):
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return node
        raise KeyError("class %s not found in %s" % (name, self.path))

    def method(self, cls_name, name):
        for node in self.cls(cls_name).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return node
        raise KeyError("%s.%s not found in %s" % (cls_name, name, self.path))


def params_of(src, fn):
    """The parameters of a def, in order, self/cls dropped."""
    a = fn.args
    out = []
    positional = list(a.posonlyargs) + list(a.args)
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        if i == 0 and arg.arg in ("self", "cls"):
            continue
        kind = "positional_only" if arg in a.posonlyargs else "positional_or_keyword"
        out.append({"name": arg.arg, "kind": kind, "annotation": src.seg(arg.annotation),
                    "default": src.seg(default), "required": default is None})
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append({"name": arg.arg, "kind": "keyword_only", "annotation": src.seg(arg.annotation),
                    "default": src.seg(default), "required": default is None})
    return {"file": src.path, "line": fn.lineno, "params": out,
            "var_positional": a.vararg.arg if a.vararg else None,
            "var_keyword": a.kwarg.arg if a.kwarg else None}


def _call_name(node):
    if isinstance(node, ast.Call):
        f = node.func
        return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
    return None


def _init_false(node):
    if isinstance(node, ast.Call):
        for kw in node.keywords:
            if kw.arg == "init" and isinstance(kw.value, ast.Constant) and kw.value.value is False:
                return True
    return False


def class_fields(src, cls_name, kind):
    """Annotated class-body fields (dataclass, msgspec.Struct, pydantic dataclass):
    ClassVar left out; `field(..., init=False)` marked init=false; a leading underscore
    marked private."""
    node = src.cls(cls_name)
    fields = []
    for stmt in node.body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name):
            continue
        ann = src.seg(stmt.annotation) or ""
        if ann.startswith("ClassVar") or ann.startswith("typing.ClassVar"):
            continue
        name = stmt.target.id
        entry = {"name": name, "annotation": ann, "default": src.seg(stmt.value),
                 "required": stmt.value is None}
        if _init_false(stmt.value):
            entry["init"] = False
        if name.startswith("_"):
            entry["private"] = True
        fields.append(entry)
    bases = [src.seg(b) for b in node.bases]
    decorators = [src.seg(d) for d in node.decorator_list]
    return {"file": src.path, "line": node.lineno, "kind": kind, "bases": bases,
            "decorators": decorators, "fields": fields}


def enum_members(src, cls_name):
    node = src.cls(cls_name)
    members = []
    for stmt in node.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            members.append({"name": stmt.targets[0].id, "value": src.seg(stmt.value)})
    return {"file": src.path, "line": node.lineno, "kind": "enum", "members": members}


def module_constant(src, name):
    for node in src.tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            names = [t] if isinstance(t, ast.Name) else []
            if isinstance(t, ast.Tuple):
                names = [e for e in t.elts if isinstance(e, ast.Name)]
            for n in names:
                if n.id == name and node.value is not None:
                    value = node.value
                    while isinstance(value, ast.Assign):
                        value = value.value
                    try:
                        return ast.literal_eval(value)
                    except Exception:
                        pass
    # `a = b = '0.19.1'` chains
    for node in src.tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except Exception:
                return None
    return None


def names(block):
    return [f["name"] for f in block["fields"]]


# --- vLLM ---------------------------------------------------------------------------------
def record_vllm(wheel, llem_zip):
    zf = zipfile.ZipFile(wheel)
    ver = Source(zf, "vllm/_version.py")
    version = module_constant(ver, "__version__")
    commit = module_constant(ver, "__commit_id__")
    llm = Source(zf, "vllm/entrypoints/llm.py")
    args = Source(zf, "vllm/engine/arg_utils.py")
    sp = Source(zf, "vllm/sampling_params.py")
    engine = Source(zf, "vllm/v1/engine/llm_engine.py")
    spec = Source(zf, "vllm/config/speculative.py")
    comp = Source(zf, "vllm/config/compilation.py")
    attn = Source(zf, "vllm/config/attention.py")
    inputs = Source(zf, "vllm/inputs/llm.py")
    tok = Source(zf, "vllm/tokenizers/protocol.py")

    init = Source(zf, "vllm/__init__.py")
    attrs = module_constant(init, "MODULE_ATTRS") or {}
    sig = {
        # What `import vllm` exposes (lazily, through MODULE_ATTRS): BeamSearchParams is
        # not among them at 0.19.1, so it is imported from vllm.sampling_params.
        "vllm.exports": {"file": init.path, "kind": "module",
                         "names": sorted(set(attrs) | set(module_constant(init, "__all__")
                                                          or []))},
        "LLM.__init__": dict(params_of(llm, llm.method("LLM", "__init__")),
                             var_keyword_to="EngineArgs"),
        "EngineArgs": class_fields(args, "EngineArgs", "dataclass"),
        "SamplingParams": class_fields(sp, "SamplingParams", "msgspec.Struct"),
        "BeamSearchParams": class_fields(sp, "BeamSearchParams", "msgspec.Struct"),
        "RequestOutputKind": enum_members(sp, "RequestOutputKind"),
        "LLM.generate": params_of(llm, llm.method("LLM", "generate")),
        "LLM.beam_search": params_of(llm, llm.method("LLM", "beam_search")),
        "LLMEngine.add_request": params_of(engine, engine.method("LLMEngine", "add_request")),
        "LLMEngine.step": params_of(engine, engine.method("LLMEngine", "step")),
        "LLMEngine.has_unfinished_requests": params_of(
            engine, engine.method("LLMEngine", "has_unfinished_requests")),
        "LLMEngine.abort_request": params_of(engine, engine.method("LLMEngine", "abort_request")),
        "TokensPrompt": class_fields(inputs, "TokensPrompt", "TypedDict"),
        "TokenizerLike.encode": params_of(tok, tok.method("TokenizerLike", "encode")),
        "SamplingParams.clone": params_of(sp, sp.method("SamplingParams", "clone")),
        "LLM.get_tokenizer": params_of(llm, llm.method("LLM", "get_tokenizer")),
        "SpeculativeConfig": class_fields(spec, "SpeculativeConfig", "pydantic dataclass"),
        "CompilationConfig": class_fields(comp, "CompilationConfig", "pydantic dataclass"),
        "AttentionConfig": class_fields(attn, "AttentionConfig", "pydantic dataclass"),
    }
    out = {
        "format": FORMAT_VERSION,
        "package": "vllm",
        "version": version,
        "commit": commit,
        "source": {"kind": "wheel", "filename": os.path.basename(wheel),
                   "sha256": sha256_of(wheel),
                   "obtained_with": "pip download --no-deps vllm==%s" % VLLM_PIN},
        "method": "ast of the wheel's source (nothing imported)",
        "signatures": sig,
    }
    if llem_zip is not None:
        out["cross_check"] = cross_check_vllm(sig, llem_zip)
    return out


def cross_check_vllm(sig, llem_zip):
    """Compare with llem's own record of vLLM 0.19.1 (dataclasses.fields(EngineArgs),
    msgspec schema of SamplingParams)."""
    zf = zipfile.ZipFile(llem_zip)
    disc = json.loads(zf.read("llenergymeasure/engines/vllm/schema.discovered.json"))
    ours_ep = set(names(sig["EngineArgs"]))
    theirs_ep = set(disc.get("engine_params", {}))
    ours_sp = {n for n in names(sig["SamplingParams"]) if not n.startswith("_")}
    theirs_sp = set(disc.get("sampling_params", {}))
    return {
        "llem_schema": "llenergymeasure/engines/vllm/schema.discovered.json",
        "llem_engine_version": disc.get("engine_version"),
        "llem_discovery_method": disc.get("discovery_method"),
        "engine_args_only_in_ast": sorted(ours_ep - theirs_ep),
        "engine_args_only_in_llem": sorted(theirs_ep - ours_ep),
        "sampling_params_only_in_ast": sorted(ours_sp - theirs_sp),
        "sampling_params_only_in_llem": sorted(theirs_sp - ours_sp),
    }


# --- TensorRT-LLM -----------------------------------------------------------------------
def record_tensorrt_from_llem(llem_zip, attempt):
    zf = zipfile.ZipFile(llem_zip)
    path = "llenergymeasure/engines/tensorrt/schema.discovered.json"
    disc = json.loads(zf.read(path))
    ep = disc["engine_params"]
    spp = disc["sampling_params"]

    def fields(pred):
        out = []
        for name, spec in ep.items():
            if pred(spec):
                out.append({"name": name, "annotation": spec.get("type"),
                            "default": json.dumps(spec.get("default")),
                            "deprecated": bool(spec.get("deprecated"))})
        return out

    torch_fields = fields(lambda s: "pytorch" in (s.get("backends") or []))
    trt_fields = fields(lambda s: "trt" in (s.get("backends") or []))
    sp_fields = [{"name": n, "annotation": s.get("type"), "default": json.dumps(s.get("default"))}
                 for n, s in spp.items()]
    return {
        "format": FORMAT_VERSION,
        "package": "tensorrt_llm",
        "version": disc.get("engine_version"),
        "commit": disc.get("engine_commit_sha"),
        "source": {
            "kind": "llem-discovered-schema",
            "file": path,
            "wheel": os.path.basename(llem_zip),
            "sha256": sha256_of(llem_zip),
            "discovered_from": disc.get("image_ref"),
            "discovered_at": disc.get("discovered_at"),
            "discovery_method": disc.get("discovery_method"),
            "discovery_limitations": disc.get("discovery_limitations"),
        },
        "pypi": attempt,
        "method": "llem 0.7.0's record of the live 1.2.1 classes (pydantic model_json_schema, "
                  "dataclasses.fields); TensorRT-LLM's own source was not readable here",
        "signatures": {
            "TorchLlmArgs": {"kind": "pydantic (extra=forbid)", "backend": "pytorch",
                             "class": "tensorrt_llm.llmapi.llm_args.TorchLlmArgs",
                             "constructor": "tensorrt_llm.LLM", "fields": torch_fields},
            "TrtLlmArgs": {"kind": "pydantic (extra=forbid)", "backend": "trt",
                           "class": "tensorrt_llm.llmapi.llm_args.TrtLlmArgs",
                           "constructor": "tensorrt_llm._tensorrt_engine.LLM",
                           "fields": trt_fields},
            "SamplingParams": {"kind": "dataclass", "class": "tensorrt_llm.SamplingParams",
                               "fields": sp_fields},
            # Not in llem's record; the engine checks them on the installed library at
            # run time (inspect.signature) and falls back to non-streaming when
            # generate_async has no `streaming`.
            "LLM.generate": None,
            "LLM.generate_async": None,
        },
        "unrecorded": {
            "LLM.generate": "not in llem's discovered schema and TensorRT-LLM 1.2.1's source "
                            "was not readable here (pypi.nvidia.com unreachable)",
            "LLM.generate_async": "as LLM.generate",
        },
    }


def record_tensorrt_from_wheel(wheel, attempt):
    zf = zipfile.ZipFile(wheel)
    ver = Source(zf, "tensorrt_llm/version.py")
    args = Source(zf, "tensorrt_llm/llmapi/llm_args.py")
    sp = Source(zf, "tensorrt_llm/sampling_params.py")
    llm = Source(zf, "tensorrt_llm/llmapi/llm.py")

    def pyd(cls):
        # pydantic fields inherited from the bases inside llm_args.py are added too
        seen, out = set(), []
        todo = [cls]
        while todo:
            name = todo.pop(0)
            try:
                block = class_fields(args, name, "pydantic")
            except KeyError:
                continue
            for f in block["fields"]:
                if f["name"] not in seen:
                    seen.add(f["name"])
                    out.append(f)
            todo.extend(b.split(".")[-1] for b in block["bases"])
        return out

    base_llm = "BaseLLM"
    sigs = {
        "TorchLlmArgs": {"kind": "pydantic (extra=forbid)", "backend": "pytorch",
                         "fields": pyd("TorchLlmArgs")},
        "TrtLlmArgs": {"kind": "pydantic (extra=forbid)", "backend": "trt",
                       "fields": pyd("TrtLlmArgs")},
        "SamplingParams": class_fields(sp, "SamplingParams", "dataclass"),
        "LLM.generate": params_of(llm, llm.method(base_llm, "generate")),
        "LLM.generate_async": params_of(llm, llm.method(base_llm, "generate_async")),
    }
    return {
        "format": FORMAT_VERSION, "package": "tensorrt_llm",
        "version": module_constant(ver, "__version__"), "commit": None,
        "source": {"kind": "wheel", "filename": os.path.basename(wheel),
                   "sha256": sha256_of(wheel)},
        "pypi": attempt, "method": "ast of the wheel's source (nothing imported)",
        "signatures": sigs,
    }


def tensorrt_attempt(cache):
    """What PyPI gives for tensorrt-llm==1.2.1, and whether the real wheel is reachable."""
    files, err = pypi_files("tensorrt-llm", TENSORRT_LLM_PIN)
    attempt = {"requirement": "tensorrt-llm==%s" % TENSORRT_LLM_PIN, "files": files,
               "error": err}
    if files:
        sdists = [f for f in files if f["filename"].endswith(".tar.gz")]
        wheels = [f for f in files if f["filename"].endswith(".whl")]
        attempt["pypi_wheels"] = len(wheels)
        if sdists and not wheels:
            try:
                path = fetch_sdist(sdists[0], cache)
                attempt["sdist_sha256"] = sha256_of(path)
                import tarfile
                with tarfile.open(path) as tf:
                    for m in tf.getmembers():
                        if m.name.endswith("pyproject.toml"):
                            text = tf.extractfile(m).read().decode("utf-8")
                            attempt["sdist_pyproject"] = [
                                line for line in text.splitlines()
                                if line.strip() and not line.startswith("#")]
            except Exception as exc:
                attempt["sdist_error"] = "%s: %s" % (type(exc).__name__, exc)
    nvidia = "https://pypi.nvidia.com/tensorrt-llm/"
    try:
        import urllib.request
        urllib.request.urlopen(nvidia, timeout=15).close()
        attempt["nvidia_index"] = "reachable"
    except Exception as exc:
        attempt["nvidia_index"] = "unreachable from this machine (%s: %s)" % (
            type(exc).__name__, exc)
    return attempt


# --- llem's section fields ------------------------------------------------------------
def record_llem(llem_zip):
    zf = zipfile.ZipFile(llem_zip)
    ver = Source(zf, "llenergymeasure/_version.py")
    out = {"format": FORMAT_VERSION, "package": "llenergymeasure",
           "version": module_constant(ver, "__version__"),
           "source": {"kind": "wheel", "filename": os.path.basename(llem_zip),
                      "sha256": sha256_of(llem_zip),
                      "obtained_with": "pip download --no-deps llenergymeasure==%s" % LLEM_PIN},
           "method": "ast of config/generated/{vllm,tensorrt}.py (the pydantic models of "
                     "the engine sections)",
           "sections": {}}
    for engine in ("vllm", "tensorrt"):
        src = Source(zf, "llenergymeasure/config/generated/%s.py" % engine)
        section = {}
        for node in src.tree.body:
            if isinstance(node, ast.ClassDef):
                block = class_fields(src, node.name, "pydantic")
                section[node.name] = [{"name": f["name"], "annotation": f["annotation"],
                                       "default": f["default"]} for f in block["fields"]]
        out["sections"][engine] = section
    return out


# --- main -------------------------------------------------------------------------------
def write_or_check(path, data, check):
    text = json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
    if check:
        try:
            with open(path, "r", encoding="utf-8") as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            say("%s: missing or unreadable" % path)
            return False
        # The PyPI attempt (reachability) is of the moment, not of the package.
        a = {k: v for k, v in old.items() if k != "pypi"}
        b = {k: v for k, v in json.loads(text).items() if k != "pypi"}
        if a != b:
            say("%s differs from what the packages give (re-run without --check)" % path)
            return False
        say("%s matches" % path)
        return True
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    say("wrote %s" % path)
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=os.environ.get("LEM_WHEEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "lem-fleet", "wheels"))
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--tensorrt-wheel", help="a tensorrt_llm-1.2.1 wheel to read instead of "
                                            "llem's record")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    llem, tail = pip_download("llenergymeasure==%s" % LLEM_PIN, args.cache)
    if llem is None:
        say("cannot download llenergymeasure==%s:\n%s" % (LLEM_PIN, tail))
        return 2
    vllm, tail = pip_download("vllm==%s" % VLLM_PIN, args.cache,
                              ["--python-version", "3.12", "--platform", "manylinux_2_31_x86_64"])
    if vllm is None:
        say("cannot download vllm==%s:\n%s" % (VLLM_PIN, tail))
        return 2

    ok = True
    data = record_vllm(vllm, llem)
    if data["version"] != VLLM_PIN:
        say("the vllm wheel says version %r, not the pin %s" % (data["version"], VLLM_PIN))
        return 2
    ok &= write_or_check(os.path.join(args.out, "vllm.json"), data, args.check)

    attempt = tensorrt_attempt(args.cache)
    wheel = args.tensorrt_wheel
    if wheel is None and attempt.get("nvidia_index") == "reachable":
        wheel, _ = pip_download("tensorrt-llm==%s" % TENSORRT_LLM_PIN, args.cache,
                                ["--extra-index-url", "https://pypi.nvidia.com/",
                                 "--python-version", "3.12",
                                 "--platform", "manylinux_2_28_x86_64"])
    if wheel:
        data = record_tensorrt_from_wheel(wheel, attempt)
    else:
        say("no TensorRT-LLM %s wheel here (%s); using llem's discovered schema"
            % (TENSORRT_LLM_PIN, attempt.get("nvidia_index")))
        data = record_tensorrt_from_llem(llem, attempt)
    if data["version"] != TENSORRT_LLM_PIN:
        say("the TensorRT-LLM record says version %r, not the pin %s"
            % (data["version"], TENSORRT_LLM_PIN))
        return 2
    ok &= write_or_check(os.path.join(args.out, "tensorrt_llm.json"), data, args.check)

    data = record_llem(llem)
    ok &= write_or_check(os.path.join(args.out, "llem.json"), data, args.check)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
