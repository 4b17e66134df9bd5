"""report.html: self-contained, one point per measured variant, and it renders in a real browser."""

from html.parser import HTMLParser

import numpy as np
import pytest
from browser import needs_chromium, screenshot

from onnxdtype.build import quantize
from onnxdtype.html_report import REPORT_NAME, write_report
from onnxdtype.verify.evaluate import EvalData


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.points: list[dict] = []
        self.rows = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "circle" and attrs.get("class") == "point":
            self.points.append(attrs)
        if tag == "tr" and attrs.get("class") == "variant":
            self.rows += 1
        for key in ("src", "href"):
            if attrs.get(key):
                self.external.append(attrs[key])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import tinymodels

    folder = tmp_path_factory.mktemp("report")
    model = tinymodels.save(tinymodels.outlier_matmul(), folder / "models" / "outlier.onnx")
    rng = np.random.default_rng(0)
    data = EvalData([{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(4)], "test data", False)
    result = quantize(model, "all", folder / "out", eval_data=data, latency_runs=2, keep_failed=True,
                      tolerances={"fp16": 0.9999})
    return result, write_report(result)


def test_report_is_self_contained_with_one_point_per_variant(report):
    result, path = report
    assert path.name == REPORT_NAME and path.parent == result.out_dir
    parsed = Collector()
    parsed.feed(path.read_text())
    assert parsed.external == []  # no scripts, stylesheets or images from anywhere
    measured = [r for r in result.results if r.size_ratio is not None]
    error_points = [p for p in parsed.points if True]
    assert len(error_points) == 2 * len(measured)  # error vs size, speed vs size
    assert {p["data-variant"] for p in parsed.points} == {f"{r.module} {r.dtype}" for r in measured}
    assert parsed.rows == len(result.results)
    repaired = [r for r in result.results if r.repaired]
    assert repaired and "(repaired)" in path.read_text()


@needs_chromium
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, path = report
    data = screenshot(path, tmp_path, "1200,900")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
