"""The zoo overview: a model's cell at a dtype sums its modules (failed if any failed), colours by verdict, links
to the model's report, and renders in a browser."""

from __future__ import annotations

from html.parser import HTMLParser

from browser import needs_chromium, screenshot

from onnxdtype.zoo.index import VERDICT_COLORS, model_cell, render


def _cell(status: str, size: int | None = None, fp32_ms: float | None = None, variant_ms: float | None = None,
          reason: str | None = None) -> dict:
    return {"status": status, "bytes": size, "fp32_ms": fp32_ms, "variant_ms": variant_ms, "reason": reason}


INDEX = {"spec": "zoo.toml", "seconds": 1.0, "versions": {"onnxdtype": "0"}, "models": {
    "ocr": {"report": "ocr/report.html", "modules": {
        "det": {"base": {"bytes": 400}, "dtypes": {"fp16": _cell("ok", 200, 4.0, 2.0),
                                                   "q4": _cell("not_applicable", reason="no MatMul")}},
        "rec": {"base": {"bytes": 600}, "dtypes": {"fp16": _cell("ok", 300, 6.0, 3.0),
                                                   "q4": _cell("failed", reason="verification")}}}},
    "minilm": {"report": "minilm/report.html", "modules": {
        "model": {"base": {"bytes": 100}, "dtypes": {"fp16": _cell("ok", 50, 1.0, 2.0)}}}}}}


def test_a_cell_sums_the_modules_and_fails_when_one_does():
    verdict, size, speed, detail = model_cell(INDEX["models"]["ocr"], "fp16")
    assert (verdict, size, speed) == ("ok", 0.5, 2.0)
    verdict, size, speed, detail = model_cell(INDEX["models"]["ocr"], "q4")
    assert verdict == "failed" and size is None and "det: not_applicable (no MatMul)" in detail


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows, self.links, self.cells = 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.rows += tag == "tr"
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "td" and attrs.get("class"):
            self.cells.append((attrs["class"], attrs["style"]))


def test_one_row_per_model_one_column_per_dtype_coloured_by_verdict(tmp_path):
    page = _Page()
    page.feed(render(INDEX))
    assert page.rows == 1 + 2 and page.links == ["ocr/report.html", "minilm/report.html"]
    coloured = [(verdict, f"background:{VERDICT_COLORS[verdict]}") for verdict in ("ok", "failed", "ok")]
    assert page.cells == coloured  # ocr fp16, ocr q4; minilm fp16 (minilm has no q4: an empty cell)
    assert "size ×0.50<br>speed ×2.00" in render(INDEX)


@needs_chromium
def test_the_zoo_report_renders_in_headless_chromium(tmp_path):
    path = tmp_path / "report.html"
    path.write_text(render(INDEX))
    data = screenshot(path, tmp_path, "900,500")
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
