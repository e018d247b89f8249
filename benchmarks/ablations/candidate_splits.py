"""Is a compensation candidate worse because it over-fits, or worse everywhere? Every candidate on every split.

    python -m benchmarks.ablations.candidate_splits [--model ppocr_rec] [--weights int4] [--activations int8]
        [--bias-correction sequential] [--layers A,B] [--keep DIR]

One ``onnxbc.compress`` call with the given settings (device cpu, every calibration sample) keeps every
candidate model its held-out check compares (without compensation, independent, min-max, sequential, ...).
This script captures them and measures each one's output relative MSE against the FP32 model on the three
splits: the calibration samples compensation is fitted on (``fit``), the samples the check holds out
(``holdout``, the last 20 %) and the model's separate eval split. A candidate that is better on ``fit`` but
worse on the others over-fits; one that is worse on all three is worse by its objective. ONNX Runtime
computes the graphs as written (QDQ fusions off); the first output is compared, batch of one.

``--layers A,B`` then compares two candidates layer by layer on the fit split: each Conv/Gemm/MatMul output's
relative MSE against the FP32 model's, in graph order, then every Softmax's input (the logits), to show where
one candidate's error grows past the other's.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

import onnxbc
import onnxbc.candidates
import onnxbc.flow
from benchmarks.settings import calibration_arrays, sample_count
from benchmarks.worker import EXACT_SESSION
from benchmarks.zoo import DEFAULT_CACHE, MODELS
from onnxbc.calibration.data import input_specs, open_data

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def capture_candidates(model: Path, data: onnxbc.DataOptions, options: onnxbc.CompressOptions) -> dict[str, ir.Model]:
    """Run compress once; return the float model and every candidate its held-out check compared."""
    captured: dict[str, ir.Model] = {}
    choose, load_prepared = onnxbc.candidates.choose, onnxbc.flow.load_prepared

    def spy_choose(built, *args, **kwargs):
        captured.update({c.name: c.model for c in built})
        return choose(built, *args, **kwargs)

    def spy_load(*args, **kwargs):
        captured["fp32"] = load_prepared(*args, **kwargs)  # the prepared float model the candidates start from
        return captured["fp32"]

    onnxbc.candidates.choose, onnxbc.flow.load_prepared = spy_choose, spy_load
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = onnxbc.compress(model, Path(tmp) / "out.onnx", data=data, options=options)
    finally:
        onnxbc.candidates.choose, onnxbc.flow.load_prepared = choose, load_prepared
    print(f"saved: {result.report.compensation.get('chosen', 'see report')}")
    return captured


def run(model: ir.Model, feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> Iterator[list[np.ndarray]]:
    """Per sample: the first output, then the values named ``extra`` (made graph outputs of a copy)."""
    model = model.clone()
    values = {v.name: v for node in model.graph for v in node.outputs}
    model.graph.outputs.extend(values[name] for name in extra)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        ir.save(model, path)
        so = ort.SessionOptions()
        for key, value in EXACT_SESSION.items():
            so.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outputs = [session.get_outputs()[0].name, *extra]
        inputs = [i.name for i in session.get_inputs()]  # eval files also hold labels
        for i in range(len(feeds[inputs[0]])):
            yield session.run(outputs, {k: feeds[k][i : i + 1] for k in inputs})


def first_output(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([outs[0] for outs in run(model, feeds)])


def layer_errors(model: ir.Model, fp32: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Relative MSE of every layer output of ``model`` (by value name) against ``fp32``'s, in graph order."""
    present = {v.name for node in model.graph for v in node.outputs}
    names = [n.outputs[0].name for n in fp32.graph if n.op_type in LAYER_OPS]
    names += [n.inputs[0].name for n in fp32.graph if n.op_type in ("Softmax", "LogSoftmax")]  # logits
    names = [name for name in dict.fromkeys(names) if name in present]
    err = np.zeros(len(names))
    power = np.zeros(len(names))
    for ours, ref in zip(run(model, feeds, names), run(fp32, feeds, names), strict=True):
        for k, (a, b) in enumerate(zip(ours[1:], ref[1:], strict=True)):
            err[k] += float(((a.astype(np.float64) - b) ** 2).sum())
            power[k] += float((b.astype(np.float64) ** 2).sum())
    return {name: e / max(p, 1e-30) for name, e, p in zip(names, err, power, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppocr_rec", choices=sorted(MODELS))
    parser.add_argument("--weights", default="int4")
    parser.add_argument("--activations", default="int8")
    parser.add_argument("--bias-correction", default="sequential")
    parser.add_argument("--layers", help="two candidate labels A,B to compare layer by layer on the fit split")
    parser.add_argument("--keep", type=Path, help="save every candidate here as LABEL.onnx")
    args = parser.parse_args()

    bench = MODELS[args.model].prepare(DEFAULT_CACHE)
    options = onnxbc.CompressOptions(
        weights=onnxbc.WeightType(args.weights),
        activations=onnxbc.ActivationType(args.activations),
        bias_correction=onnxbc.BiasCorrection(args.bias_correction),
        device=onnxbc.Device.CPU,
    )
    calib = calibration_arrays(bench)
    data = onnxbc.DataOptions(path=bench.calib_path, samples=sample_count(calib))
    candidates = capture_candidates(bench.onnx_path, data, options)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for label, model in candidates.items():
            ir.save(model, args.keep / f"{label}.onnx")
    n_fit = open_data(data, input_specs(candidates["fp32"])).n_fit  # the split compress used
    splits = {
        "fit": {k: v[:n_fit] for k, v in calib.items()},
        "holdout": {k: v[n_fit:] for k, v in calib.items()},
        "eval": dict(np.load(bench.eval_path)),
    }
    reference = {name: first_output(candidates["fp32"], feeds) for name, feeds in splits.items()}
    print(f"| candidate | {' | '.join(f'{s} ({len(next(iter(f.values())))})' for s, f in splits.items())} |")
    print("|---|" + "---|" * len(splits))
    for label, model in candidates.items():
        if label == "fp32":
            continue
        errors = []
        for name, feeds in splits.items():
            out, ref = first_output(model, feeds), reference[name]
            errors.append(f"{float(((out - ref) ** 2).sum() / (ref**2).sum()):.4g}")
        print(f"| {label} | {' | '.join(errors)} |")
    if args.layers:
        a, b = args.layers.split(",")
        first, second = (layer_errors(candidates[c], candidates["fp32"], splits["fit"]) for c in (a, b))
        print(f"\n| layer (fit split) | {a} | {b} | ratio |\n|---|---|---|---|")
        for name, error in first.items():
            print(f"| {name} | {error:.4g} | {second[name]:.4g} | {second[name] / max(error, 1e-30):.2f} |")


if __name__ == "__main__":
    main()
