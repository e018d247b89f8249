"""Calibration samples from data as people keep it: a folder of images, a text file and its tokenizer.

Both are *model-aware sources*: ``feeds(specs)`` receives the model's inputs, checks them against what the
source can give (one line naming what the model takes and what the source gives), and returns an iterator of
feed dicts, one sample each with a leading axis 1. The data layer spills and checks them like file data.

Images (``ImageFolder``, needs Pillow: ``onnxbc[images]``). Every ``.png/.jpg/.jpeg/.bmp/.webp`` file of a
folder (not its subfolders), in sorted name order, becomes one sample::

    img  = convert(file, mode)                    # RGB, BGR (RGB with the channels reversed) or L
    img  = resize(img, resize, filter)            # N: shorter side to N, the longer int(N * long / short);
                                                  # HxW: exactly that size
    img  = img[top:top+H, left:left+W]            # crop HxW, top = round((h - H) / 2), left likewise
    x    = float32(img) * scale                   # scale = 1/N divides by N (bit-equal to x / N)
    x    = (x - mean[c]) / std[c]                 # per channel c; one value serves every channel
    feed = x as [1, C, H, W] (NCHW) or [1, H, W, C] (NHWC), in the model input's float type

Resizing and cropping follow torchvision's ``Resize(N)`` and ``CenterCrop`` on PIL images, with a fixed
Pillow filter (bilinear unless ``filter=`` says otherwise). A crop larger than an image is refused (torchvision
pads). Known limits: the EXIF orientation is not applied; 16-bit and float images go through Pillow's
``convert``, which clips them to 8 bits.

Text (``TokenWindows``, needs the ``tokenizers`` package: ``onnxbc[text]``). The whole UTF-8 file is tokenized
once without special tokens, cut into consecutive windows of ``seq - k`` tokens (``k`` special tokens the
tokenizer's post-processor adds to one sequence, e.g. BERT's [CLS] and [SEP]), each window post-processed to
``seq`` ids; the shorter tail is dropped. ``seq`` is the token input's fixed axis-1 size, or ``seq=N`` when that
axis is dynamic. ``attention_mask`` gets ones, ``token_type_ids`` the post-processor's type ids (zeros for one
sequence), ``position_ids`` 0..seq-1; a model input outside these is refused.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from onnxbc.calibration.data import InputSpec
from onnxbc.errors import UsageError, display_path, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

GRAMMAR = (
    "comma-separated key=value pairs, or a TOML file with the same keys. Images: mode=RGB|BGR|L (default: from "
    "the model's channels), resize=N (shorter side) or HxW, crop=N or HxW (center), scale=X or 1/N (default 1), "
    "mean=A/B/C and std=A/B/C (per channel, or one value for all), layout=NCHW|NHWC (default NCHW), "
    "filter=bilinear|bicubic|lanczos|nearest (default bilinear), input=NAME. "
    "Steps: convert to mode, resize, crop, float32 pixels * scale, - mean, / std, layout, batch axis of 1. "
    "Text (with --tokenizer): seq=N (window length, when the model's is dynamic), input=NAME. "
    "Example: resize=256,crop=224,scale=1/255,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"
)


class ColorMode(str, enum.Enum):
    RGB = "RGB"
    BGR = "BGR"  # OpenCV's channel order
    L = "L"  # grayscale

    @property
    def channels(self) -> int:
        return 1 if self is ColorMode.L else 3


class Layout(str, enum.Enum):
    """Where the channels go: after the batch axis (PyTorch, ONNX's default) or last (TensorFlow)."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class Resample(str, enum.Enum):
    """Pillow's resampling filter for ``resize``."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    LANCZOS = "lanczos"


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """How an image file becomes a model input (see the module docstring); validated on construction.

    Attributes:
        mode: color mode the image is converted to; None takes it from the model's channels (1: L, 3: RGB).
        resize: N resizes the shorter side to N (aspect kept); (H, W) resizes to exactly that; None keeps the size.
        crop: center crop (H, W); None keeps the size.
        scale: factor applied to the 0..255 pixel values first.
        mean, std: per-channel normalization after scaling (one value: every channel).
        layout: NCHW or NHWC.
        filter: Pillow resampling filter of the resize.
        input: the model input to feed; None: the model's only float input of rank 4.
    """

    mode: ColorMode | None = None
    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = Layout.NCHW
    filter: Resample = Resample.BILINEAR
    input: str | None = None

    def __post_init__(self) -> None:
        resize = (self.resize,) if isinstance(self.resize, int) else self.resize or ()
        sizes = [*resize, *(self.crop or ())]
        if any(s < 1 for s in sizes):
            raise UsageError(f"preprocessing: sizes must be positive ({self})")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise UsageError(f"preprocessing: scale must be a positive number, got {self.scale}")
        if any(s == 0 for s in self.std):
            raise UsageError(f"preprocessing: std must not be 0 ({_numbers(self.std)})")
        lengths = {len(v) for v in (self.mean, self.std) if len(v) > 1}
        if len(lengths) > 1 or (self.mode is not None and lengths - {self.mode.channels}):
            channels = (
                "" if self.mode is None else f" (mode={self.mode.value}: {_plural(self.mode.channels, 'channel')})"
            )
            raise UsageError(
                f"preprocessing: mean has {len(self.mean)} values and std {len(self.std)}{channels}: "
                "give one value per channel, or one for all"
            )

    @property
    def size(self) -> tuple[int, int] | None:
        """The (H, W) every image has after resizing and cropping, when the spec fixes it."""
        return self.crop or (self.resize if isinstance(self.resize, tuple) else None)

    def __str__(self) -> str:
        """The inline form, which parses back to an equal spec."""
        parts = [] if self.mode is None else [f"mode={self.mode.value}"]
        if self.resize is not None:
            parts.append(f"resize={_hw(self.resize)}")
        if self.crop is not None:
            parts.append(f"crop={_crop_text(self.crop)}")
        inverse = 1 / self.scale
        parts.append(f"scale=1/{round(inverse)}" if _is_integer(inverse) and inverse > 1 else f"scale={self.scale!r}")
        parts += [f"mean={_numbers(self.mean)}", f"std={_numbers(self.std)}", f"layout={self.layout.value}"]
        parts.append(f"filter={self.filter.value}")
        if self.input is not None:
            parts.append(f"input={self.input}")
        return ",".join(parts)


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """``--preprocess`` keys for token windows: ``seq`` (window length when the model's is dynamic), ``input``."""

    seq: int | None = None
    input: str | None = None

    def __post_init__(self) -> None:
        if self.seq is not None and self.seq < 1:
            raise UsageError(f"preprocessing: seq must be positive, got {self.seq}")


# ---- parsing ---------------------------------------------------------------------------------------------

_IMAGE_KEYS = ("mode", "resize", "crop", "scale", "mean", "std", "layout", "filter", "input")
_TEXT_KEYS = ("seq", "input")


def parse_preprocess(text: str) -> ImageSpec:
    """An image ``ImageSpec`` from ``--preprocess``: inline ``key=value,...`` or the path of a TOML file."""
    pairs, where = _read_pairs(text)
    if "seq" in pairs:
        raise UsageError(f"{where}: seq= sets the length of token windows: it needs --tokenizer")
    _refuse_unknown(pairs, _IMAGE_KEYS, where)
    fields: dict[str, Any] = {}
    for key, value in pairs.items():
        fields[key] = _IMAGE_PARSERS[key](value, f"{where}: {key}")
    return ImageSpec(**fields)


def parse_text_preprocess(text: str) -> TextSpec:
    """A ``TextSpec`` from ``--preprocess`` given with ``--tokenizer`` (keys ``seq`` and ``input``)."""
    pairs, where = _read_pairs(text)
    image_keys = [k for k in pairs if k in _IMAGE_KEYS and k not in _TEXT_KEYS]
    if image_keys:
        raise UsageError(f"{where}: '{image_keys[0]}' is an image key; with --tokenizer the keys are seq and input")
    _refuse_unknown(pairs, _TEXT_KEYS, where)
    seq = pairs.get("seq")
    return TextSpec(
        seq=None if seq is None else _int(seq, f"{where}: seq"),
        input=None if "input" not in pairs else _name(pairs["input"], f"{where}: input"),
    )


def _read_pairs(text: str) -> tuple[dict[str, Any], str]:
    """Keys and raw values (strings inline; TOML values as TOML gives them), and where they come from."""
    path = Path(text)
    if "=" not in text or path.is_file():
        return _read_toml(path), display_path(path)
    where = "--preprocess"
    pairs: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise UsageError(f"{where}: '{item.strip()}' is not key=value ({GRAMMAR})")
        if key in pairs:
            raise UsageError(f"{where}: '{key}' is given twice")
        pairs[key] = value
    return pairs, where


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(
            f"--preprocess {display_path(path)}: no such file, and not an inline spec (key=value,...; {GRAMMAR})"
        )
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
        raise UsageError(f"{display_path(path)}: not a readable TOML file ({one_line(e)})") from e
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if tables:
        raise UsageError(f"{display_path(path)}: [{tables[0]}] is a table; the preprocessing keys are top-level")
    if not data:
        raise UsageError(f"{display_path(path)}: no preprocessing keys in it")
    return {k.lower(): v for k, v in data.items()}


def _refuse_unknown(pairs: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in pairs if k not in known]
    if unknown:
        raise UsageError(f"{where}: unknown key '{unknown[0]}' (keys: {', '.join(known)})")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise UsageError(f"{where} must be a positive integer, not {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{where} must be a positive integer, not {value!r}") from None
    if n < 1:
        raise UsageError(f"{where} must be a positive integer, not {value!r}")
    return n


def _hw_value(value: Any, where: str) -> int | tuple[int, int]:
    """N, "N", "HxW" or [H, W]."""
    if isinstance(value, list) and len(value) == 2:
        return _int(value[0], where), _int(value[1], where)
    if isinstance(value, str) and "x" in value.lower():
        h, _, w = value.lower().partition("x")
        return _int(h.strip(), f"{where} (HxW)"), _int(w.strip(), f"{where} (HxW)")
    return _int(value, f"{where} (N or HxW)")


def _crop(value: Any, where: str) -> tuple[int, int]:
    size = _hw_value(value, where)
    return (size, size) if isinstance(size, int) else size


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise UsageError(f"{where}: {value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {value!r} is not a number") from None


def _numbers_value(value: Any, where: str) -> tuple[float, ...]:
    """A/B/C, one number, or a TOML array of numbers."""
    items = value if isinstance(value, list) else str(value).split("/") if isinstance(value, str) else [value]
    if not items:
        raise UsageError(f"{where}: no values")
    return tuple(_number(v.strip() if isinstance(v, str) else v, where) for v in items)


def _scale(value: Any, where: str) -> float:
    """X or A/B."""
    if isinstance(value, str) and "/" in value:
        a, _, b = value.partition("/")
        denominator = _number(b.strip(), where)
        if denominator == 0:
            raise UsageError(f"{where}: {value!r} divides by 0")
        return _number(a.strip(), where) / denominator
    return _number(value, where)


def _choice(enum_type: type[enum.Enum]):
    def parse(value: Any, where: str) -> Any:
        by_name = {m.value.lower(): m for m in enum_type}
        member = by_name.get(str(value).lower()) if isinstance(value, str) else None
        if member is None:
            raise UsageError(f"{where}: {value!r} is not one of {'|'.join(m.value for m in enum_type)}")
        return member

    return parse


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{where} must be an input name, not {value!r}")
    return value.strip()


_IMAGE_PARSERS = {
    "mode": _choice(ColorMode),
    "resize": _hw_value,
    "crop": _crop,
    "scale": _scale,
    "mean": _numbers_value,
    "std": _numbers_value,
    "layout": _choice(Layout),
    "filter": _choice(Resample),
    "input": _name,
}


def _hw(size: int | tuple[int, int]) -> str:
    return str(size) if isinstance(size, int) else f"{size[0]}x{size[1]}"


def _crop_text(crop: tuple[int, int]) -> str:
    return str(crop[0]) if crop[0] == crop[1] else _hw(crop)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _numbers(values: tuple[float, ...]) -> str:
    return "/".join(repr(v) for v in values)


def _is_integer(x: float) -> bool:
    return abs(x - round(x)) <= 1e-9 * abs(x)


# ---- images ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """Images of ``folder`` (or one image file) preprocessed by ``spec``: a model-aware calibration source."""

    folder: Path
    spec: ImageSpec

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if isinstance(self.spec, str):
            object.__setattr__(self, "spec", parse_preprocess(self.spec))

    @property
    def description(self) -> str:
        return f"{display_path(self.folder)} (images, {self.spec})"

    def files(self) -> tuple[list[Path], list[Path]]:
        """The images in sorted name order, and the other entries of the folder (skipped)."""
        if self.folder.is_file():
            if self.folder.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(
                    f"{display_path(self.folder)}: --preprocess reads images ({'/'.join(IMAGE_SUFFIXES)}) "
                    "or a folder of them"
                )
            return [self.folder], []
        if not self.folder.is_dir():
            raise UsageError(f"{display_path(self.folder)}: no such file or folder")
        entries = sorted(self.folder.iterdir(), key=lambda p: p.name)
        images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        others = [p for p in entries if p not in images]
        if not images:
            raise UsageError(
                f"{display_path(self.folder)}: no {'/'.join(IMAGE_SUFFIXES)} images in it "
                f"({len(others)} other entries; subfolders are not searched)"
            )
        return images, others

    def feeds(self, specs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        """Check the model's inputs against the spec now; the returned iterator reads one image per feed."""
        target = _image_input(specs, self.spec)
        mode = _check_geometry(target, self.spec)
        image_module = _pillow()
        files, _ = self.files()
        return self._read(files, target, mode, image_module)

    def _read(self, files: list[Path], target: InputSpec, mode: ColorMode, image_module) -> Iterator[dict]:
        spec = self.spec
        fixed_hw = _model_hw(target, spec.layout)
        first: tuple[Path, tuple[int, int]] | None = None
        mean = np.asarray(spec.mean, np.float32)
        std = np.asarray(spec.std, np.float32)
        for path in files:
            pixels = _load_image(path, mode, spec, image_module)
            hw = pixels.shape[:2]
            where = f"{display_path(path)}: {hw[0]}x{hw[1]} after preprocessing"
            if fixed_hw is not None and hw != fixed_hw:
                raise UsageError(
                    f"{where}; input '{target.name}' takes {fixed_hw[0]}x{fixed_hw[1]} ({target.describe()}): "
                    "add crop=HxW or resize=HxW"
                )
            if first is not None and hw != first[1]:
                raise UsageError(
                    f"{where}, {display_path(first[0])} {first[1][0]}x{first[1][1]}: "
                    "add crop= or resize=HxW so that all images have one size"
                )
            first = first or (path, hw)
            x = (_apply_scale(pixels, spec.scale) - mean) / std
            if spec.layout is Layout.NCHW:
                x = x.transpose(2, 0, 1)
            yield {target.name: np.ascontiguousarray(x[None], dtype=target.dtype)}


def _pillow():
    try:
        from PIL import Image
    except ImportError as e:
        raise UsageError("reading images needs Pillow: pip install 'onnxbc[images]'") from e
    return Image


def _load_image(path: Path, mode: ColorMode, spec: ImageSpec, image_module) -> np.ndarray:
    """The resized and cropped image as float32 [H, W, C] in 0..255."""
    try:
        with image_module.open(path) as img:
            img = img.convert("L" if mode is ColorMode.L else "RGB")
    except (OSError, ValueError, image_module.DecompressionBombError) as e:
        raise UsageError(f"{display_path(path)}: not a readable image ({one_line(e)})") from e
    resample = getattr(image_module.Resampling, spec.filter.name)
    if spec.resize is not None:
        img = img.resize(_resized(img.size, spec.resize), resample)
    if spec.crop is not None:
        (h, w), (ch, cw) = (img.height, img.width), spec.crop
        if ch > h or cw > w:
            raise UsageError(
                f"{display_path(path)}: {h}x{w} (after resizing) is smaller than crop={_crop_text(spec.crop)}"
            )
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        img = img.crop((left, top, left + cw, top + ch))
    pixels = np.asarray(img, dtype=np.float32)
    if mode is ColorMode.L:
        return pixels[:, :, None]
    return pixels[:, :, ::-1] if mode is ColorMode.BGR else pixels


def _resized(size: tuple[int, int], resize: int | tuple[int, int]) -> tuple[int, int]:
    """Pillow's (width, height) after ``resize``: torchvision's Resize(N) rule for the shorter side."""
    if isinstance(resize, tuple):
        return resize[1], resize[0]
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    return (resize, new_long) if w <= h else (new_long, resize)


def _apply_scale(pixels: np.ndarray, scale: float) -> np.ndarray:
    inverse = 1.0 / scale
    if _is_integer(inverse):  # 1/255: divide, as torchvision's ToTensor does (x * float32(1/255) differs by an ulp)
        return pixels / np.float32(round(inverse))
    return pixels * np.float32(scale)


def _list(specs: list[InputSpec]) -> str:
    return ", ".join(f"'{s.name}' {s.describe()}" for s in specs) or "no inputs"


def _image_input(specs: list[InputSpec], spec: ImageSpec) -> InputSpec:
    """The one input images feed: named by ``input=``, or the model's only float input of rank 4."""
    if spec.input is not None:
        found = [s for s in specs if s.name == spec.input]
        if not found:
            raise UsageError(f"preprocessing input={spec.input}: the model takes {_list(specs)}")
        target = found[0]
    else:
        candidates = [s for s in specs if _is_float_image(s)]
        if len(candidates) != 1:
            hint = "; name one with input=NAME" if candidates else ""
            raise UsageError(f"images feed one float input of rank 4; the model takes {_list(specs)}{hint}")
        target = candidates[0]
    others = [s for s in specs if s is not target]
    if others:
        raise UsageError(
            f"images feed only '{target.name}'; the model also takes {_list(others)}: "
            "give --data as .npz with an array per input"
        )
    if not _is_float_image(target):
        raise UsageError(f"input '{target.name}' takes {target.describe()}; images give a float tensor of rank 4")
    return target


def _is_float_image(spec: InputSpec) -> bool:
    return np.issubdtype(spec.dtype, np.floating) and (spec.shape is None or len(spec.shape) == 4)


def _model_hw(target: InputSpec, layout: Layout) -> tuple[int, int] | None:
    """The model's fixed (H, W), or None when either is dynamic or the rank unknown."""
    if target.shape is None:
        return None
    h, w = target.shape[1:3] if layout is Layout.NHWC else target.shape[2:4]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def _model_channels(target: InputSpec, layout: Layout) -> int | None:
    if target.shape is None:
        return None
    c = target.shape[3 if layout is Layout.NHWC else 1]
    return c if isinstance(c, int) else None


def _check_geometry(target: InputSpec, spec: ImageSpec) -> ColorMode:
    """Channels and fixed sizes of the model's input against the spec; the color mode to read images in."""
    layout = spec.layout
    other = Layout.NHWC if layout is Layout.NCHW else Layout.NCHW
    model_c, other_c = _model_channels(target, layout), _model_channels(target, other)
    mode = spec.mode or {1: ColorMode.L, 3: ColorMode.RGB}.get(model_c)
    if mode is None or (model_c is not None and model_c != mode.channels):
        channels = "a dynamic channel axis" if model_c is None else _plural(model_c, "channel")
        if mode is None:
            gives = "give mode=RGB, BGR or L"
        else:
            gives = f"the preprocessing gives {_plural(mode.channels, 'channel')} (mode={mode.value})"
        fits = other_c in (1, 3) and (mode is None or other_c == mode.channels)
        hint = f"; layout={other.value}?" if fits else ""
        raise UsageError(f"input '{target.name}' takes {target.describe()} ({layout.value}: {channels}); {gives}{hint}")
    for key, values in (("mean", spec.mean), ("std", spec.std)):
        if len(values) not in (1, mode.channels):
            raise UsageError(
                f"preprocessing {key}={_numbers(values)}: {len(values)} values for "
                f"{_plural(mode.channels, 'channel')} (mode={mode.value})"
            )
    fixed, size = _model_hw(target, layout), spec.size
    if fixed is not None and size is not None and fixed != size:
        key = f"crop={_crop_text(spec.crop)}" if spec.crop else f"resize={_hw(spec.resize)}"
        raise UsageError(
            f"input '{target.name}' takes {target.describe()} ({layout.value}: {fixed[0]}x{fixed[1]}); "
            f"the preprocessing gives {size[0]}x{size[1]} ({key})"
        )
    return mode


# ---- text ------------------------------------------------------------------------------------------------

_MASK, _TYPES, _POSITIONS = "attention_mask", "token_type_ids", "position_ids"


@dataclasses.dataclass(frozen=True)
class TokenWindows:
    """A UTF-8 text ``file`` tokenized by ``tokenizer`` (a tokenizer.json, or a folder holding one), cut into
    windows of the model's sequence length: a model-aware calibration source.

    Attributes:
        seq: window length, for a model whose sequence axis is dynamic (else it must equal the fixed size).
        input: the token-id input; None: ``input_ids``, or the model's only integer input besides the
            ``attention_mask``/``token_type_ids``/``position_ids`` it may take.
    """

    file: Path
    tokenizer: Path
    seq: int | None = None
    input: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", Path(self.file))
        object.__setattr__(self, "tokenizer", Path(self.tokenizer))

    @property
    def description(self) -> str:
        return f"{display_path(self.file)} (tokenized by {display_path(self.tokenizer)})"

    def feeds(self, specs: list[InputSpec]) -> Iterator[dict[str, np.ndarray]]:
        """Check the model's inputs and read the tokenizer and the file now; the iterator tokenizes."""
        ids_input, companions = _token_inputs(specs, self.input)
        seq = self._length(ids_input)
        for spec in companions:
            if spec.shape is None:
                continue
            if len(spec.shape) != 2 or (isinstance(spec.shape[1], int) and spec.shape[1] != seq):
                raise UsageError(
                    f"input '{spec.name}' takes {spec.describe()}; token windows give [1, {seq}] "
                    f"(the length of '{ids_input.name}')"
                )
        tokenizer = _load_tokenizer(self.tokenizer)
        if not self.file.is_file():
            raise UsageError(f"{display_path(self.file)}: --tokenizer reads a text file; no such file")
        try:
            text = self.file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as e:
            raise UsageError(f"{display_path(self.file)}: not a readable UTF-8 text file ({one_line(e)})") from e
        return self._windows(tokenizer, text, seq, ids_input, companions)

    def _length(self, ids_input: InputSpec) -> int:
        fixed = ids_input.shape[1] if ids_input.shape is not None else None
        takes = f"input '{ids_input.name}' takes {ids_input.describe()}"
        if isinstance(fixed, int):
            if self.seq is not None and self.seq != fixed:
                raise UsageError(f"{takes}: windows of {fixed} tokens; the preprocessing gives seq={self.seq}")
            return fixed
        if self.seq is None:
            raise UsageError(f"{takes}, a dynamic sequence length: give the window length with --preprocess seq=N")
        return self.seq

    def _windows(self, tokenizer, text: str, seq: int, ids_input: InputSpec, companions: list[InputSpec]) -> Iterator:
        special = tokenizer.num_special_tokens_to_add(is_pair=False)
        width = seq - special
        if width < 1:
            raise UsageError(f"{display_path(self.tokenizer)} adds {special} special tokens; no room in seq={seq}")
        encoding = tokenizer.encode(text, add_special_tokens=False)
        count = len(encoding.ids) // width
        if count == 0:
            raise UsageError(
                f"{display_path(self.file)}: {len(encoding.ids)} tokens, fewer than one window of {width} "
                f"(seq={seq}, {special} special tokens)"
            )
        encoding.truncate(width)  # the rest moves into .overflowing, one window each
        windows = [encoding, *encoding.overflowing][:count]  # the shorter tail is dropped
        for window in windows:
            full = tokenizer.post_process(window)
            if len(full.ids) != seq:
                raise UsageError(
                    f"{display_path(self.tokenizer)}: its post-processor made {len(full.ids)} tokens of a window "
                    f"of {width}, not {seq}"
                )
            feed = {ids_input.name: np.asarray(full.ids, ids_input.dtype)[None]}
            for spec in companions:
                values = {_MASK: np.ones(seq), _TYPES: np.asarray(full.type_ids), _POSITIONS: np.arange(seq)}
                feed[spec.name] = values[spec.name].astype(spec.dtype)[None]
            yield feed


def _token_inputs(specs: list[InputSpec], name: str | None) -> tuple[InputSpec, list[InputSpec]]:
    """The token-id input and the companions token windows fill; any other input is refused."""
    companions = [s for s in specs if s.name in (_MASK, _TYPES, _POSITIONS) and s.name != name]
    rest = [s for s in specs if s not in companions]
    if name is not None:
        found = [s for s in rest if s.name == name]
        if not found:
            raise UsageError(f"preprocessing input={name}: the model takes {_list(specs)}")
        ids_input = found[0]
    else:
        by_name = [s for s in rest if s.name == "input_ids"]
        integers = [s for s in rest if np.issubdtype(s.dtype, np.integer)]
        if not by_name and len(integers) != 1:
            raise UsageError(
                f"token windows feed one integer input of token ids; the model takes {_list(specs)}"
                + ("; name it with --preprocess input=NAME" if integers else "")
            )
        ids_input = (by_name or integers)[0]
    others = [s for s in rest if s is not ids_input]
    if others:
        raise UsageError(
            f"token windows fill '{ids_input.name}', {_MASK}, {_TYPES} and {_POSITIONS}; the model also takes "
            f"{_list(others)}: give --data as .npz with an array per input"
        )
    if not np.issubdtype(ids_input.dtype, np.integer) or (ids_input.shape is not None and len(ids_input.shape) != 2):
        raise UsageError(f"input '{ids_input.name}' takes {ids_input.describe()}; token windows give integer [1, seq]")
    return ids_input, companions


def _load_tokenizer(path: Path):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise UsageError("--tokenizer needs the tokenizers package: pip install 'onnxbc[text]'") from e
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{display_path(file)}: no such file (--tokenizer takes a tokenizer.json or its folder)")
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a plain Exception
        raise UsageError(f"{display_path(file)}: not a readable tokenizer.json ({one_line(e)})") from e
    tokenizer.no_padding()  # windows are cut to the model's length here; a saved padding/truncation would undo it
    tokenizer.no_truncation()
    return tokenizer
