"""A build worker process: `python -m onnxdtype.worker` reads one JSON task per line, answers one JSON result per line.

build.run_tasks starts one per parallel slot; each builds many variants, one after another.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from onnxdtype.build import build_variant


def main() -> None:
    for line in sys.stdin:
        if line.strip():
            result = build_variant(**json.loads(line))
            sys.stdout.write(json.dumps(asdict(result)) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
