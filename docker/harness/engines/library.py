"""What the engines of an external inference library (vLLM, TensorRT-LLM) share at
class level: whether the library imports, its version and its neighbours', and the
llem section's validation and model identity through the engine's pure logic module.

A subclass names its library (`library`, the module to import), its pin (`pin_key`,
`pin`), the modules whose versions its results carry (`version_modules`), its logic
module (`logic`: validate, model_identity) and its import probe (`probe`: None when
the library imports, else why not). Instances share the prompts' tokenisation
(`prepare_prompts`: through the byte tokenizer of a random-weight model, else the
model's tokenizer), kept as `self.ids` for the engine's generate call.
"""

import os

from engines.base import Engine
from llem_config import task_settings
from protocol import ConfigError


class LibraryEngine(Engine):
    library = None
    pin_key = None
    pin = None
    version_modules = ()
    logic = None
    probe = None

    @classmethod
    def available(cls):
        return cls.probe() is None

    @classmethod
    def unavailable_reason(cls):
        return cls.probe()

    @classmethod
    def version(cls):
        try:
            return str(__import__(cls.library).__version__)
        except Exception:
            return "not installed"

    @classmethod
    def versions(cls):
        out = {cls.pin_key: cls.pin}
        for name in cls.version_modules:
            try:
                out[name] = str(__import__(name).__version__)
            except Exception:
                pass
        try:
            import torch
            out["cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                out["gpu"] = torch.cuda.get_device_name(0)
        except Exception:
            pass
        return out

    @classmethod
    def validate(cls, config):
        cls.logic.validate(config)

    @classmethod
    def model_identity(cls, config):
        return cls.logic.model_identity(config)

    @classmethod
    def batch_size(cls, config):
        return task_settings(config)["n_prompts"]

    @classmethod
    def needs_dataset(cls, config):
        return True

    # --- prompts (instances with `tokenizer` or `byte_tok` set by load) ---------------
    def prepare_prompts(self, config, texts):
        if texts is None:
            raise ConfigError("the %s engine needs the prompt texts (dataset_path)" % self.name)
        limit = task_settings(config)["max_input_tokens"]
        counts = []
        self.ids = {}
        for text in texts:
            if self.byte_tok is not None:
                ids = self.byte_tok.encode(text, limit)
            else:
                try:
                    ids = list(self.tokenizer.encode(text, truncation=True, max_length=limit))
                except TypeError:
                    ids = list(self.tokenizer.encode(text))[:limit]
            if not ids:
                raise ConfigError("a prompt tokenised to 0 tokens: %r" % text[:80])
            self.ids[text] = ids
            counts.append(len(ids))
        self._limit = limit
        return counts


_PROBED = {}


def probe_library(module, image_hint):
    """None when `module` imports and torch sees a CUDA device, else why not (the
    image hint says which image has it); asked once per process."""
    if module not in _PROBED:
        reason = None
        try:
            mod = __import__(module)
        except Exception as exc:
            reason = ("%s is not installed in this image (%s: %s); %s"
                      % (module, type(exc).__name__, exc, image_hint))
        else:
            try:
                import torch
                if not torch.cuda.is_available():
                    reason = ("%s %s is installed but torch %s sees no CUDA device "
                              "(CUDA_VISIBLE_DEVICES=%r)"
                              % (module, getattr(mod, "__version__", "?"), torch.__version__,
                                 os.environ.get("CUDA_VISIBLE_DEVICES")))
            except Exception as exc:
                reason = "%s is installed but CUDA cannot be checked: %s: %s" % (
                    module, type(exc).__name__, exc)
        _PROBED[module] = reason
    return _PROBED[module]


def is_oom(exc):
    """Whether `exc` is the GPU running out of memory (torch's or a library's)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
