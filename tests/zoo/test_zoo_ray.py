"""The zoo on Ray, for real, in local mode (ray.init(num_cpus=2), no cluster): tiny models and PP-OCR's cls build
as Ray tasks, the keys are the local executor's (a local rerun skips everything), and a worker killed mid-task
is retried with the folder still vouched for."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import realmodels
import zookit

from onnxdtype.manifest import read_manifest
from onnxdtype.zoo import build_zoo

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ocr_zoo(tmp_path, ocr_dir):
    """The tiny zoo plus PP-OCRv4 cls at fp16 and q8, judged on rendered text lines."""
    spec = zookit.tiny_zoo(tmp_path)
    shutil.copyfile(ocr_dir / "cls.onnx", tmp_path / "models" / "cls.onnx")
    (tmp_path / "cls-eval").mkdir()
    lines = realmodels.text_line_images()
    for i in range(0, len(lines), 2):
        np.savez(tmp_path / "cls-eval" / f"{i}.npz", **realmodels.ocr_cls_feed(lines[i:i + 2]))
    spec.write_text(spec.read_text() + '\n[[models]]\nname = "ocr-cls"\npath = "models/cls.onnx"\n'
                                       'eval = "cls-eval"\ntasks = {"*" = "classify"}\n')
    return spec


@pytest.mark.real
def test_a_zoo_with_a_real_model_builds_on_ray_and_a_local_rerun_skips_it(local_ray, ocr_zoo, tmp_path):
    out = tmp_path / "out"
    result = build_zoo(ocr_zoo, out, executor="ray")
    cells = zookit.cells(out)
    assert {c["status"] for c in cells.values()} == {"ok"}, {k: c["reason"] for k, c in cells.items()}
    assert {("ocr-cls", "cls", "fp16"), ("ocr-cls", "cls", "q8")} <= set(cells)
    assert result.progress.done == len(cells) + 1 and not result.progress.failed
    cls = zookit.index(out)["models"]["ocr-cls"]["modules"]["cls"]["dtypes"]["q8"]
    assert 0 < cls["size_ratio"] < 0.5  # 8-bit weights of a real network
    verification = read_manifest(out / "ocr-cls")["modules"]["cls"]["variants"]["q8"]["verification"]
    assert not verification["synthesized"] and verification["data"].endswith("cls-eval")  # judged on text lines
    calibration = read_manifest(out / "mlp")["modules"]["mlp"]["calibration"]
    assert calibration["cached"] and calibration["samples_used"]  # the pass ran in a Ray task; the driver read it
    zookit.assert_vouched(out)
    again = build_zoo(ocr_zoo, out, executor="local")
    assert again.progress.total == 0 and again.progress.skipped == len(cells)


def test_a_worker_killed_mid_task_is_retried_and_the_folder_stays_vouched(local_ray, tmp_path):
    from onnxdtype.zoo.executors import RayExecutor

    spec, marker = zookit.tiny_zoo(tmp_path), tmp_path / "killed"

    def dies_once(task):
        """Builds the variant, then the first q8 task's worker process dies before returning it."""
        import os

        from onnxdtype.build.worker import build_variant

        result = build_variant(task)
        if task.dtype == "q8" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return result

    result = build_zoo(spec, tmp_path / "out", runner=RayExecutor(build=dies_once))
    assert marker.exists()  # a worker did die
    assert not result.failed and {c["status"] for c in zookit.cells(tmp_path / "out").values()} == {"ok"}
    zookit.assert_vouched(tmp_path / "out")


def test_a_task_no_ray_node_has_the_memory_for_fails_at_once_instead_of_waiting(local_ray, tmp_path):
    from onnxdtype.build.task import VariantTask
    from onnxdtype.zoo.executors import RayExecutor, memory_estimate

    task = VariantTask("big", "q8", str(tmp_path / "big.onnx"), [], {}, str(tmp_path), base_bytes=1 << 50)
    largest = max(n["Resources"].get("memory", 0) for n in ray.nodes() if n["Alive"])
    assert memory_estimate(task) > largest
    (done_task, result), = RayExecutor().run([task], lambda _: None)
    assert done_task is task and result.status == "failed" and "the largest Ray node offers" in result.reason
