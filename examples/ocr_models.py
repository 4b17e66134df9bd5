"""Copy the PP-OCRv4 det/cls/rec models that rapidocr-onnxruntime ships into a folder as det.onnx, cls.onnx, rec.onnx.

Usage: python examples/ocr_models.py DEST   (the folder is then a multi-module input for `onnxdtype quantize`)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realmodels  # noqa: E402


def main(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, source in realmodels.ocr_model_paths().items():
        target = dest / f"{name}.onnx"
        if not target.exists():
            shutil.copyfile(source, target)
        print(f"{target}  <-  {source.name}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out/ocr"))
