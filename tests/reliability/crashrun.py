"""`python crashrun.py ARGS...` runs `onnxdtype ARGS...` with a SIGKILL armed at a deterministic point.

Used by test_crash_safety.py; onnxdtype itself has no test hook. The events are the main process's file
renames (before and after every os.replace: variants, external data, the base copy, the manifest) and
model writes (write_model: inline-built variants; plan's write_streaming: the normalized models and the streamed
copy of a single-file base they are made from).

  ONNXDTYPE_CRASH_AT=N    SIGKILL the whole process group (workers too, as a CI job kill does) at event N
                          (1-based); at a "write" event, half of the file is written first.
  ONNXDTYPE_CRASH_MATCH=RE[#K]  instead, at the K-th (default 1st) event whose name matches the regex RE.
  ONNXDTYPE_CRASH_SCOPE=process   SIGKILL this process only (its workers are orphaned, as when the OOM killer
                          picks the main process); default "group".
  ONNXDTYPE_CRASH_LOG=F   append each event's name to F, one per line (a dry run counts them).

Run it in a session of its own (start_new_session=True): "group" kills the process group.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path


def main() -> None:
    kill_at = int(os.environ.get("ONNXDTYPE_CRASH_AT", "0"))
    group = os.environ.get("ONNXDTYPE_CRASH_SCOPE", "group") == "group"
    if (kill_at or os.environ.get("ONNXDTYPE_CRASH_MATCH")) and group and os.getpgrp() != os.getpid():
        sys.exit("crashrun.py: run me in a session of my own (start_new_session=True)")
    pattern, _, nth = os.environ.get("ONNXDTYPE_CRASH_MATCH", "").partition("#")
    match_at = int(nth or 1) if pattern else 0
    log = os.environ.get("ONNXDTYPE_CRASH_LOG")
    count = matched = 0

    def event(name: str, before_kill=None) -> None:
        nonlocal count, matched
        count += 1
        matched += bool(pattern and re.fullmatch(pattern, name))
        if log:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"{name}\n")
        if count == kill_at or (match_at and matched == match_at and re.fullmatch(pattern, name)):
            if before_kill is not None:
                before_kill()
            if group:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    from onnxdtype import model
    from onnxdtype.build import plan, worker

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        event(f"before-replace {Path(dst).name}")
        real_replace(src, dst, *args, **kwargs)
        event(f"after-replace {Path(dst).name}")

    def armed(real_write):
        def write(proto, path, *how, **keywords):
            def half() -> None:
                data = proto.SerializeToString()
                with open(path, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())

            event(f"write {Path(path).name}", half)
            real_write(proto, path, *how, **keywords)
        return write

    os.replace = replace
    model.write_model = worker.write_model = armed(model.write_model)
    plan.write_streaming = armed(plan.write_streaming)

    from onnxdtype.cli import main as cli_main

    sys.argv = ["onnxdtype", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
