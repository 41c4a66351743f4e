#!/usr/bin/env python3
"""Expands many study files with llem's own code in ONE process (for the randomized
differential test, common/tests/llem_oracle_random.rs).

Usage: python llem_oracle_driver.py LLEM_SHARED_DIR < paths.txt

Reads one study path per line on stdin and prints, per path and in order, one line
of JSON: exactly what `expand_study.py PATH --compact` prints for it (the oracle's
own `expand` function, with its main()'s error handling).
"""

import json
import logging
import sys
import warnings
from pathlib import Path


def main():
    sys.path.insert(0, sys.argv[1])
    import expand_study  # the oracle, beside FORMAT.md
    from pydantic import ValidationError
    from llenergymeasure.utils.exceptions import ConfigError

    logging.disable(logging.CRITICAL)
    out = sys.stdout
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = expand_study.expand(Path(path), False)
        except (ConfigError, ValidationError) as exc:
            result = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:  # llem crashed on the input: still a rejection
            result = {"error": {"type": type(exc).__name__, "message": str(exc), "internal": True}}
        out.write(json.dumps(result))
        out.write("\n")
        out.flush()


if __name__ == "__main__":
    main()
