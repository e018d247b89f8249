"""The ``onnxbc`` command line (typer). Every option is typed and validated before any work starts.

Exit codes: 0 success; 1 the model fails a check or cannot be processed; 2 usage errors (bad flags,
unreadable files). Errors print one line; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import onnxbc
from onnxbc.errors import OnnxbcError
from onnxbc.options import (
    ActivationType,
    BiasCorrection,
    BiasShape,
    CompressOptions,
    DataOptions,
    Device,
    RangeMethod,
    Target,
    WeightType,
)
from onnxbc.progress import Stages

app = typer.Typer(
    name="onnxbc",
    help="Compress ONNX models by post-training quantization with closed-form bias compensation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and a traceback on errors.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the output path.")]


class _LowercaseLevel(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


@contextlib.contextmanager
def _errors(verbose: bool) -> Iterator[None]:
    """Turn errors into one line on stderr and the documented exit code."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LowercaseLevel("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[handler], force=True)
    logging.getLogger("onnxbc").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        yield
    except OnnxbcError as e:
        if verbose:
            err.print_exception()
        err.print(f"error: {e}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted; nothing was written")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:  # a bug: still one line unless --verbose
        if verbose:
            err.print_exception()
        err.print(f"error: internal error: {type(e).__name__}: {e} (rerun with --verbose for the traceback)")
        raise typer.Exit(1) from None


@app.command()
def compress(
    model: Annotated[Path, typer.Argument(help="The float ONNX model to compress (never modified).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Output model. Default: MODEL.int8.onnx (W8A8), MODEL.w4a8.onnx, MODEL.w4.onnx, ...",
        ),
    ] = None,
    weights: Annotated[
        WeightType,
        typer.Option(help="Weight precision (zero point 0, per output channel by default); int3 is stored as int4."),
    ] = WeightType.INT8,
    activations: Annotated[
        ActivationType, typer.Option(help="Activation precision; 'none' = weight-only.")
    ] = ActivationType.INT8,
    block_size: Annotated[
        int,
        typer.Option(help="0 = one scale per output channel; N = blocks of N input features (int4: 64/128; opset 21)."),
    ] = 0,
    per_tensor_weights: Annotated[
        bool, typer.Option(help="One scale per weight tensor instead of per channel.")
    ] = False,
    reduce_range: Annotated[
        bool,
        typer.Option(
            help="7-bit codes in int8 weights, for ONNX Runtime on x86 CPUs without VNNI "
            "(its u8s8 kernels saturate otherwise)."
        ),
    ] = False,
    weight_range: Annotated[RangeMethod, typer.Option(help="How weight scales are chosen.")] = RangeMethod.MSE,
    activation_range: Annotated[
        RangeMethod, typer.Option(help="How activation ranges are chosen from the calibration histograms.")
    ] = RangeMethod.MSE,
    percentile: Annotated[float, typer.Option(help="Percentile for --*-range percentile.")] = 99.99,
    bias_correction: Annotated[
        BiasCorrection,
        typer.Option(
            help="Bias compensation: 'independent' fits each layer on float inputs "
            "(kept only if it lowers the held-out output error)."
        ),
    ] = BiasCorrection.INDEPENDENT,
    bias_shape: Annotated[
        BiasShape,
        typer.Option(
            help="'channel' folds into the layer bias; 'position' adds a per-position tensor (fixed shapes only)."
        ),
    ] = BiasShape.CHANNEL,
    quantize_attention: Annotated[
        bool, typer.Option(help="Quantize activation x activation MatMuls (attention).")
    ] = True,
    data: Annotated[
        Path | None,
        typer.Option(help="Calibration data: .npz/.npy, a folder of them, or ONNX test_data_set_* folders."),
    ] = None,
    samples: Annotated[int, typer.Option(help="Use at most this many calibration samples.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Samples per ONNX Runtime run.")] = 16,
    holdout_fraction: Annotated[
        float, typer.Option(help="Share of samples held out to measure errors and decide on compensation.")
    ] = 0.2,
    random_data: Annotated[
        bool, typer.Option(help="Calibrate on random inputs (a warning goes into the report).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for --random-data.")] = 0,
    device: Annotated[
        Device, typer.Option(help="Where calibration runs; 'auto' uses CUDA when it really works.")
    ] = Device.AUTO,
    target: Annotated[Target, typer.Option(help="Runtime whose rules the output follows.")] = Target.ONNXRUNTIME,
    opset: Annotated[int | None, typer.Option(help="Raise the model to at least this opset.")] = None,
    report: Annotated[
        Path | None, typer.Option(help="Report JSON path. Default: next to the output, OUTPUT.report.json.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Overwrite an existing output/report (never the input).")
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Quantize MODEL (QDQ), compensate the quantization error with folded biases, and write it with a report."""
    with _errors(verbose):
        options = CompressOptions(
            weights=weights,
            activations=activations,
            block_size=block_size,
            per_tensor_weights=per_tensor_weights,
            reduce_range=reduce_range,
            weight_range=weight_range,
            activation_range=activation_range,
            percentile=percentile,
            bias_correction=bias_correction,
            bias_shape=bias_shape,
            quantize_attention=quantize_attention,
            device=device,
            target=target,
            opset=opset,
        )
        data_options = DataOptions(data, samples, batch_size, random_data, holdout_fraction, seed)
        result = onnxbc.compress(
            model,
            output,
            data=data_options,
            options=options,
            report=report,
            force=force,
            stages=Stages(not quiet, err),
        )
        _print_result(result, quiet)


def _print_result(result: onnxbc.CompressResult, quiet: bool) -> None:
    rep = result.report
    if quiet:
        out.print(str(result.output))
        return
    rep.print_summary(out)
    before, after = rep.input["bytes"], rep.output["bytes"]
    out.print(f"Wrote {result.output}: {_mb(before)} -> {_mb(after)} ({before / max(after, 1):.2f}x smaller)")
    label = "with_compensation" if rep.compensation.get("applied") else "without_compensation"
    split = rep.outputs.get("evaluated_on", "holdout")
    n = rep.data["holdout_samples"] if split == "holdout" else rep.data["fit_samples"]
    for name, m in rep.outputs.get(label, {}).items():
        top1 = f", top-1 agreement {m['top1_agreement']:.1%}" if m.get("top1_agreement") is not None else ""
        out.print(
            f"Output '{name}' vs FP32 on {n} {'held-out' if split == 'holdout' else 'calibration'} samples: "
            f"rel. MSE {m['rel_mse']:.3e}, cosine {m['cosine']:.5f}{top1}"
        )
    comp = rep.compensation
    if "output_rel_mse_with" in comp:
        verdict = "kept" if comp["applied"] else "dropped"
        out.print(
            f"Bias compensation {verdict}: output rel. MSE "
            f"{comp['output_rel_mse_without']:.3e} -> {comp['output_rel_mse_with']:.3e}"
        )
    out.print(f"Device: {rep.device}. Report: {result.report_path}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.command()
def version() -> None:
    """Print the onnxbc version."""
    out.print(onnxbc.__version__)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="onnxbc")
