#!/usr/bin/env python3
"""Train the bundled Fashion-MNIST CNN and write its ONNX files and data slices.

Run from the repository root:

    python models/train_fashion_cnn.py --out models

Needs torch (CPU), onnx, onnxruntime and numpy, plus the Debian package
``dataset-fashion-mnist`` (IDX files under /usr/share/datasets/fashion-mnist/).
Nothing is downloaded. Everything is seeded and runs on 2 threads with
deterministic algorithms, so a re-run reproduces the same weights.

Writes, under --out:
  fashion_cnn.onnx          BatchNorm folded into Conv (legacy exporter, eval mode)
  fashion_cnn_bn.onnx       same weights, BatchNormalization kept as its own nodes
  data/fashion_calib.npz    input float32 [256,1,28,28], seeded draw from the train split
  data/fashion_eval.npz     input float32 [1000,1,28,28], labels int64 [1000]: first 1000 test images
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
SEED = 0
CALIB_SEED = 1234
N_CALIB = 256
N_EVAL = 1000
EPOCHS = 2
BATCH = 64
LR = 1e-3
OPSET = 17
IR_VERSION = 8  # onnxruntime rejects the IR version onnx 1.23 writes by default


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (unsigned-byte data) into a numpy array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: size mismatch")
    return data.reshape(dims)


def load_split(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images float32 [N,1,28,28] in [0,1], labels int64 [N])."""
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")
    x = (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    return np.ascontiguousarray(x), labels.astype(np.int64)


class FashionCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    n = len(xt)
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, t0 = 0.0, time.time()
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}: loss {total / n:.4f} ({time.time() - t0:.0f} s)", flush=True)


def export(model: nn.Module, path: Path, keep_bn: bool) -> None:
    model.eval()
    dummy = torch.zeros(2, 1, 28, 28)
    kwargs = dict(
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        do_constant_folding=not keep_bn,
        dynamo=False,
    )
    if keep_bn:
        # PRESERVE with the model in eval mode exports BatchNormalization(training_mode=0)
        # with the running statistics, and skips the Conv+BN fusion pass that EVAL runs.
        # Constant folding is off here only to silence the exporter's warning about
        # folding in training-amenable mode; this graph has nothing to fold.
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(model, (dummy,), str(path), **kwargs)
    m = onnx.load(str(path))
    m.ir_version = min(m.ir_version, IR_VERSION)
    m.producer_name = "onnxbc/models/train_fashion_cnn.py"
    m.doc_string = "Fashion-MNIST CNN; input = pixel/255, NCHW [N,1,28,28]; " + (
        "BatchNormalization kept" if keep_bn else "BatchNorm folded into Conv"
    )
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(sess: ort.InferenceSession, x: np.ndarray, batch: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(["logits"], {"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)

    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")
    print(f"train {x_train.shape}, test {x_test.shape}")

    out = args.out
    (out / "data").mkdir(parents=True, exist_ok=True)

    # Data slices (independent of training).
    calib_idx = np.sort(np.random.default_rng(CALIB_SEED).choice(len(x_train), N_CALIB, replace=False))
    np.savez_compressed(out / "data" / "fashion_calib.npz", input=x_train[calib_idx])
    x_eval, y_eval = x_test[:N_EVAL], y_test[:N_EVAL]
    np.savez_compressed(out / "data" / "fashion_eval.npz", input=x_eval, labels=y_eval)

    model = FashionCNN()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")
    t0 = time.time()
    train(model, x_train, y_train)
    print(f"training time: {time.time() - t0:.0f} s")
    model.eval()

    digest = hashlib.sha256()
    for k, v in model.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().tobytes())
    print(f"state_dict sha256: {digest.hexdigest()}")

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    print(f"torch test accuracy: {100.0 * float((torch_logits.argmax(1) == y_test).mean()):.2f} %")
    accs = {}
    for name, keep_bn in (("fashion_cnn.onnx", False), ("fashion_cnn_bn.onnx", True)):
        path = out / name
        export(model, path, keep_bn)
        m = onnx.load(str(path))
        ops = [n.op_type for n in m.graph.node]
        n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        sess = ort_session(path)
        for bs in (1, 37):  # dynamic batch dim works
            assert sess.run(["logits"], {"input": x_test[:bs]})[0].shape == (bs, 10)
        logits = ort_logits(sess, x_test)
        full = 100.0 * float((logits.argmax(1) == y_test).mean())
        sl = 100.0 * float((logits[:N_EVAL].argmax(1) == y_eval).mean())
        accs[name] = (full, sl)
        print(f"{name}: {os.path.getsize(path)} bytes, IR {m.ir_version}, {n_init} initializer values")
        print(f"{name}: ops {ops}")
        print(f"{name}: max |ort - torch| logit diff {np.abs(logits - torch_logits).max():.2e}")
        print(f"{name}: onnxruntime accuracy full 10k {full:.2f} %, eval slice 1000 {sl:.2f} %")
    a, b = accs.values()
    assert abs(a[0] - b[0]) <= 0.1 and abs(a[1] - b[1]) <= 0.1, accs
    for f in ("data/fashion_calib.npz", "data/fashion_eval.npz"):
        print(f"{f}: {os.path.getsize(out / f)} bytes")


if __name__ == "__main__":
    main()
