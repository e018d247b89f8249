"""The ``onnxbc`` command line (typer). Every option is typed and validated before any work starts.

Exit codes: 0 success; 1 the model fails a check or cannot be processed; 2 usage errors (bad flags,
unreadable files). Errors print one line; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import onnxbc
from onnxbc import datafree, inspection, model_io, validate
from onnxbc.calibration.preprocess import (
    GRAMMAR,
    ImageFolder,
    TextSpec,
    TokenWindows,
    parse_preprocess,
    parse_text_preprocess,
)
from onnxbc.compare import compare_models
from onnxbc.errors import OnnxbcError, UsageError, display_path
from onnxbc.options import (
    ActivationType,
    BiasCorrection,
    BiasShape,
    CheckOptions,
    CompressOptions,
    DataOptions,
    Device,
    ErrorMetric,
    OutputFormat,
    RangeMethod,
    Rounding,
    Target,
    WeightType,
)
from onnxbc.policy import parse_size
from onnxbc.progress import Stages
from onnxbc.report import close_call_errors, least_error
from onnxbc.solvers.schemes import Scheme

# --activation-range offers RangeMethod without "auto" (which measures weight scales, not ranges)
ActivationRange = enum.Enum(
    "ActivationRange", {m.name: m.value for m in RangeMethod if m is not RangeMethod.AUTO}, type=str
)
# --scheme offers the Scheme values and "auto" (CompressOptions.scheme keeps the string)
SchemeChoice = enum.Enum("SchemeChoice", {**{s.name: s.value for s in Scheme}, "AUTO": "auto"}, type=str)

app = typer.Typer(
    name="onnxbc",
    help="Compress ONNX models by post-training quantization with closed-form bias compensation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)  # long lines: the terminal wraps them, rich would fold numbers

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging, and a traceback on errors.")]
Preprocess = Annotated[
    str | None,
    typer.Option(
        metavar="SPEC",
        help="Read --data as a folder of images (png/jpg/jpeg/bmp/webp, in name order; needs onnxbc[images]), "
        f"each one sample, preprocessed by SPEC: {GRAMMAR}.",
    ),
]
Tokenizer = Annotated[
    Path | None,
    typer.Option(
        help="Read --data as a UTF-8 text file tokenized by this tokenizer.json (or its folder; needs onnxbc[text]), "
        "cut into windows of the model's sequence length, one sample each; attention_mask, token_type_ids and "
        "position_ids are filled when the model takes them.",
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or tables: print only warnings, errors and the output path.")
]
Shape = Annotated[
    list[str] | None,
    typer.Option(
        metavar="NAME:DIMS",
        help="Every size of input NAME, e.g. input:1,3,224,224 or input_ids:8,128 (repeat for more inputs): fixes "
        "its dynamic dimensions, and those of the same name in other inputs, for --random-data and the checks "
        "on --data; a batch size given here makes every run exactly that many samples.",
    ),
]


class _StderrHandler(logging.Handler):
    """Log records as ``warning: ...`` lines on stderr, through the console the progress bars draw on."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))  # basicConfig would set its own otherwise

    def emit(self, record: logging.LogRecord) -> None:
        try:
            err.print(f"{record.levelname.lower()}: {self.format(record)}", markup=False)
        except Exception:
            self.handleError(record)


def _warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False)


@contextlib.contextmanager
def _errors(verbose: bool) -> Iterator[None]:
    """Turn errors into one line on stderr and the documented exit code; warnings go to stderr, also with -q."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, handlers=[_StderrHandler()], force=True)
    logging.getLogger("onnxbc").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        yield
    except OnnxbcError as e:
        if verbose:
            err.print_exception()
        err.print(f"error: {e}", markup=False)  # messages hold brackets: shapes, extras
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted; nothing was written")  # outputs are renamed into place only once all are complete
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
        typer.Option(
            help="Weight precision (zero point 0, per output channel by default); int3 is stored as int4, "
            "and int2 too unless --opset 25 (int2, ONNX Runtime)."
        ),
    ] = WeightType.INT8,
    activations: Annotated[
        ActivationType | None,
        typer.Option(
            help="Activation precision; 'none' = weight-only; int16 and int4 (W4A4) run in ONNX Runtime only. "
            "Default: int8, or none with --data-free (weight-only)."
        ),
    ] = None,
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
    weight_range: Annotated[
        RangeMethod,
        typer.Option(
            help="How weight scales are chosen; auto measures input-weighted mse and minmax per layer "
            "and keeps the better."
        ),
    ] = RangeMethod.AUTO,
    activation_range: Annotated[
        ActivationRange, typer.Option(help="How activation ranges are chosen from the calibration histograms.")
    ] = ActivationRange.MSE,
    percentile: Annotated[float, typer.Option(help="Percentile for --*-range percentile.")] = 99.99,
    bias_correction: Annotated[
        BiasCorrection,
        typer.Option(
            help="Bias compensation: 'independent' fits each layer on float inputs (kept only if it lowers the "
            "held-out output error); 'sequential' then refits layer by layer on the compensated upstream model "
            "(one pass over the data per wave of layers; kept only if it beats independent)."
        ),
    ] = BiasCorrection.INDEPENDENT,
    bias_shape: Annotated[
        BiasShape,
        typer.Option(
            help="'channel' folds into the layer bias; 'position' adds a per-position tensor (fixed shapes only)."
        ),
    ] = BiasShape.CHANNEL,
    quantize_attention: Annotated[
        bool,
        typer.Option(
            help="Quantize activation x activation MatMuls (attention scores and context). Off by default: "
            "measured, it costs accuracy on every transformer tried, for both targets, and gains no speed in "
            "ONNX Runtime's CPU session (benchmarks/README.md); TensorRT users may turn it on for int8 attention."
        ),
    ] = False,
    smoothing: Annotated[
        bool,
        typer.Option(
            help="Try dividing each layer input per channel by factors moved into its weights (SmoothQuant-style); "
            "kept per activation only where it lowers the held-out layer error."
        ),
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
    shape: Shape = None,
    preprocess: Preprocess = None,
    tokenizer: Tokenizer = None,
    data_free: Annotated[
        bool,
        typer.Option(
            help="No calibration data, no model run: DF-MPC pairs (low-bit Conv/Gemm -> BN -> ReLU -> next layer), "
            "factors folded into the next layer, data-free bias correction from BN statistics; weight-only. "
            "--weights sets the compensated low-bit layers, --next-weights the rest; "
            "--bias-correction none gives plain data-free rounding."
        ),
    ] = False,
    next_weights: Annotated[
        WeightType,
        typer.Option(help="With --data-free: precision of the layer after each low-bit layer and of unpaired layers."),
    ] = WeightType.INT8,
    avg_bits: Annotated[
        float | None,
        typer.Option(
            help="Mixed precision: each weight's bits (among --candidates) chosen to least output error, "
            "priced after compensation, at this average of bits per quantized weight."
        ),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(help="Mixed precision under a file-size budget instead: e.g. 1.5MB, 800KiB, 123456 (bytes)."),
    ] = None,
    candidates: Annotated[
        str, typer.Option(help="Bit widths mixed precision may give a weight, from 2,3,4,8.")
    ] = "2,3,4,8",
    compensated_prices: Annotated[
        bool,
        typer.Option(
            "--compensated-prices/--raw-prices",
            help="Price each candidate by the error left after bias compensation (or before it).",
        ),
    ] = True,
    measured_prices: Annotated[
        bool,
        typer.Option(
            "--measured-prices/--closed-form-prices",
            help="Scale each weight's prices to the model output by running its candidates alone on held-out "
            "samples (one run per weight and bit width; the whole model in one session, so not where it does not fit "
            "--max-memory), or price by layer errors only (no extra runs).",
        ),
    ] = True,
    block_candidates: Annotated[
        str | None,
        typer.Option(
            help="With --max-size: scale layouts each weight may take, e.g. 0,128,64 (0 = per channel; blocks of N "
            "input features cost more scale bytes for less error). Default: --block-size only."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            help="TOML/YAML per-layer overrides (bits, scheme, skip, block_size by name or regex) and a budget; "
            "`onnxbc inspect REPORT --policy-out FILE` writes one from a report."
        ),
    ] = None,
    rounding: Annotated[
        Rounding,
        typer.Option(
            help="'gptq': error feedback from the input second moments (2-D MatMul/Gemm weights); 'auto': per "
            "weight at 4 bits and fewer, GPTQ where it lowers the held-out layer error, checked end to end."
        ),
    ] = Rounding.AUTO,
    scheme: Annotated[
        SchemeChoice,
        typer.Option(
            help="Weight quantizing scheme; mul2q and residual need --emulate; auto: per weight, least output error."
        ),
    ] = SchemeChoice.UNIFORM,
    emulate: Annotated[
        bool,
        typer.Option(help="Allow schemes that are not codes x scale, written as float weights (no smaller file)."),
    ] = False,
    int32_bias: Annotated[
        bool | None,
        typer.Option(
            help="Store Conv/Gemm biases as int32 codes round(b / (s_x * s_w)) with a DequantizeLinear, "
            "as ONNX Runtime's integer kernels take them (compensation is folded in first); a MatMul and its "
            "bias Add become a Gemm with such a bias. "
            "Default: on for --target onnxruntime with int8 activations, off otherwise.",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        Device, typer.Option(help="Where calibration runs; 'auto' uses CUDA when it really works.")
    ] = Device.AUTO,
    target: Annotated[Target, typer.Option(help="Runtime whose rules the output follows.")] = Target.ONNXRUNTIME,
    opset: Annotated[int | None, typer.Option(help="Raise the model to at least this opset.")] = None,
    segments: Annotated[
        str,
        typer.Option(
            help="Cut each calibration graph into up to N segments at boundaries few tensors cross (between "
            "transformer blocks, CNN stages) and run them one after another, so that only one segment's weights "
            "are in memory at a time; the statistics are the same. 1: the whole graph at once; auto: as many as "
            "--max-memory asks for.",
        ),
    ] = "auto",
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory the run may use, e.g. 3GB: sizes the calibration runs and the segments (--segments "
            "auto); when given, ONNX Runtime's memory arena is off (freed memory goes back at once). Default: half "
            "of this machine's memory.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Shard the calibration batches across Ray workers: 'auto' joins the Ray cluster running here, or "
            "starts a local one with --workers CPUs; or give a cluster's address (HOST:PORT, ray://HOST:PORT). "
            "Each worker folds its batches (through every segment, with --segments) into its own statistics and "
            "this process merges them, so the output is that of a run without it (sums to float rounding); the "
            "other stages run here. Needs the ray extra: pip install 'onnxbc[ray]'.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="--ray: how many workers, one CPU and one ONNX Runtime thread each (--max-memory applies to each). "
            "Default: the cluster's CPUs.",
            show_default=False,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep each pass's collected statistics in this folder (made if missing), keyed by the calibration "
            "graph, the data and the run sizes: a run stopped in the middle resumes from the passes it finished, "
            "and the same run again writes the same bytes without running the model for its statistics.",
            show_default=False,
        ),
    ] = None,
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
            activation_range=RangeMethod(activation_range.value),
            percentile=percentile,
            bias_correction=bias_correction,
            bias_shape=bias_shape,
            quantize_attention=quantize_attention,
            smoothing=smoothing,
            device=device,
            target=target,
            opset=opset,
            segments=_segments(segments),
            max_memory=parse_size(max_memory, "--max-memory") if max_memory is not None else None,
            ray=ray,
            workers=workers,
            cache_dir=cache_dir,
            data_free=data_free,
            next_weights=next_weights,
            avg_bits=avg_bits,
            max_size=parse_size(max_size, "--max-size") if max_size is not None else None,
            candidates=_int_list(candidates, "--candidates", "2,3,4,8"),
            price_compensated=compensated_prices,
            price_measured=measured_prices,
            block_candidates=_int_list(block_candidates, "--block-candidates") if block_candidates else (),
            policy=policy,
            rounding=rounding,
            scheme=scheme.value,
            emulate=emulate,
            int32_bias=int32_bias,
        )
        if data_free:
            _refuse_data_flags(
                data, random_data, samples, batch_size, holdout_fraction, seed, preprocess, tokenizer, shape
            )
        data_options = (
            None
            if data_free
            else _data_options(
                data,
                preprocess,
                tokenizer,
                samples=samples,
                batch_size=batch_size,
                random=random_data,
                holdout_fraction=holdout_fraction,
                seed=seed,
                shapes=tuple(shape or ()),
            )
        )
        result = onnxbc.compress(
            model,
            output,
            data=data_options,
            options=options,
            report=report,
            force=force,
            stages=Stages(not quiet, err),
        )
        for warning in result.report.warnings:
            _warn(warning)
        _print_result(result, quiet)
        if verbose:
            _print_timings(result.report.timings_s)


def _refuse_data_flags(
    data, random_data, samples, batch_size, holdout_fraction, seed, preprocess, tokenizer, shape
) -> None:
    """--data-free reads no data: every data flag given with it is a usage error."""
    default = DataOptions(random=True)
    given = {
        "--data": data is not None,
        "--random-data": random_data,
        "--samples": samples != default.samples,
        "--batch-size": batch_size != default.batch_size,
        "--holdout-fraction": holdout_fraction != default.holdout_fraction,
        "--seed": seed != default.seed,
        "--preprocess": preprocess is not None,
        "--tokenizer": tokenizer is not None,
        "--shape": bool(shape),
    }
    flags = [flag for flag, is_given in given.items() if is_given]
    if flags:
        raise UsageError(f"--data-free uses no calibration data: drop {', '.join(flags)}")


def _data_options(data: Path | None, preprocess: str | None, tokenizer: Path | None, **fields) -> DataOptions:
    """--data for the data layer to read, or the model-aware source --preprocess / --tokenizer make of it."""
    if preprocess is None and tokenizer is None:
        return DataOptions(path=data, **fields)
    flag = "--tokenizer" if tokenizer is not None else "--preprocess"
    if data is None:
        kind = "a UTF-8 text file" if tokenizer is not None else "a folder of images"
        raise UsageError(f"{flag} reads --data: pass {kind}")
    if fields.get("random"):
        raise UsageError(f"{flag} reads --data; --random-data excludes it")
    if tokenizer is not None:
        text = TextSpec() if preprocess is None else parse_text_preprocess(preprocess)
        source = TokenWindows(data, tokenizer, seq=text.seq, input=text.input)
    else:
        source = ImageFolder(data, parse_preprocess(preprocess))
    return DataOptions(source=source, **fields)


def _samples(
    data, preprocess, tokenizer, samples: int, batch_size: int, shape: list[str] | None, *, random: bool = False
) -> DataOptions:
    """The samples ``check``, ``compare`` and ``bench`` run the models on (all of them: nothing is held out)."""
    return _data_options(
        data,
        preprocess,
        tokenizer,
        samples=samples,
        batch_size=batch_size,
        holdout_fraction=0.0,
        shapes=tuple(shape or ()),
        random=random,
    )


def _segments(text: str) -> int:
    """--segments: auto (0) or a number of segments."""
    if text.strip().lower() == "auto":
        return 0
    count = int(text) if text.strip().isdigit() else 0
    if count < 1:
        raise UsageError(f"--segments takes auto or a number of segments (1: the whole graph), not {text!r}")
    return count


def _int_list(text: str, flag: str, example: str = "0,128,64") -> tuple[int, ...]:
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers such as {example}, not {text!r}") from None


def _print_timings(timings: dict[str, float]) -> None:
    """--verbose: seconds per stage (the report's ``timings_s``), on stderr with the other diagnostics."""
    total = sum(timings.values())
    err.print(
        "time per stage: " + ", ".join(f"{name} {s:.2f} s ({s / max(total, 1e-9):.0%})" for name, s in timings.items())
    )


def _print_result(result: onnxbc.CompressResult, quiet: bool) -> None:
    rep = result.report
    if quiet:
        out.print(str(result.output))
        return
    rep.print_summary(out)
    if result.report.options.get("data_free"):
        for line in datafree.summary(rep):
            out.print(line, markup=False)
    before, after = rep.input["bytes"], rep.output["bytes"]
    out.print(f"Wrote {result.output}: {_mb(before)} -> {_mb(after)} ({before / max(after, 1):.2f}x smaller)")
    comp = rep.compensation
    split = rep.outputs.get("evaluated_on", "holdout")
    n = rep.data["holdout_samples"] if split == "holdout" else rep.data["fit_samples"]
    for name, m in rep.outputs.get(comp.get("chosen"), {}).items():  # the saved model's outputs
        top1 = f", top-1 agreement {m['top1_agreement']:.1%}" if m.get("top1_agreement") is not None else ""
        out.print(
            f"Output '{name}' vs FP32 on {n} {'held-out' if split == 'holdout' else 'calibration'} samples: "
            f"rel. MSE {m['rel_mse']:.3e}, cosine {m['cosine']:.5f}{top1}",
            markup=False,
        )
    if "output_rel_mse_with" in comp:
        verdict = "kept" if comp["applied"] else "dropped"
        without, with_ = least_error(comp, "without"), least_error(comp, "with")
        out.print(
            f"Bias compensation {verdict}: output rel. MSE {without} without, {with_} with; "
            f"saved {comp['description']} ({comp['output_rel_mse']:.3e})",
            markup=False,
        )
    if comp.get("close_call"):
        samples = rep.data["fit_samples"] + rep.data["holdout_samples"]
        errors = close_call_errors(comp)
        out.print(
            f"The held-out samples could not tell the closest candidates apart: decided on all {samples} "
            f"samples ({errors})",
            markup=False,
        )
    weighted = [r.fusion for r in rep.layers if r.fusion is not None and r.kind != "other"]
    if weighted:
        fused = sum(f["status"] == "fused" for f in weighted)
        out.print(
            f"ONNX Runtime (CPU) runs {fused} of {len(weighted)} quantized layers as integer kernels "
            "(each layer's 'fusion' in the report says which, or what is missing)",
            markup=False,
        )
    out.print(f"Device: {rep.device}. Report: {result.report_path}")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.command()
def check(
    model: Annotated[Path | None, typer.Argument(help="The (quantized) ONNX model to check.")] = None,
    target: Annotated[Target, typer.Option(help="Also check this runtime's rules.")] = Target.ONNXRUNTIME,
    reference: Annotated[
        Path | None, typer.Option(help="Float model: compare the outputs on --data (needs --max-error).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Samples (.npz/.npy, folder, test_data_set_*) for --reference and ort.session.")
    ] = None,
    max_error: Annotated[float | None, typer.Option(help="Largest --metric error allowed per output.")] = None,
    metric: Annotated[
        ErrorMetric, typer.Option(help="cosine: 1 - cosine; rel-mse: relative MSE; max-abs: max absolute error.")
    ] = ErrorMetric.REL_MSE,
    exact: Annotated[
        bool, typer.Option(help="Compute MODEL with ONNX Runtime's QDQ fusions off (the graph as written).")
    ] = False,
    preprocess: Preprocess = None,
    tokenizer: Tokenizer = None,
    shape: Shape = None,
    samples: Annotated[int, typer.Option(help="Use at most this many samples of --data.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Samples per ONNX Runtime run.")] = 16,
    device: Annotated[Device, typer.Option(help="Execution provider for the runtime rules.")] = Device.AUTO,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Report format.")] = OutputFormat.TEXT,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here (overwritten); stdout otherwise.")
    ] = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(metavar="RULE_ID", help="Rule to skip (repeat the option, or separate IDs with commas)."),
    ] = None,
    list_rules: Annotated[bool, typer.Option("--list-rules", help="List the rules and exit.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; with --output, print only the verdict.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Check MODEL against the ONNX, QDQ and target rules (and the float model's outputs): exit 0 if all pass,
    1 if any fails, 2 if MODEL cannot be read (the report says so too) or an option is wrong."""
    with _errors(verbose):
        if list_rules:
            typer.echo(validate.list_rules())
            return
        if model is None:
            raise UsageError("missing MODEL (or pass --list-rules)")
        if output is not None and not output.resolve().parent.is_dir():
            raise UsageError(f"{display_path(output)}: folder {display_path(output.resolve().parent)} does not exist")
        if shape and (data, preprocess, tokenizer) == (None, None, None):
            raise UsageError("--shape needs --data: it sets the sizes the samples are checked against")
        options = CheckOptions(
            target=target,
            device=device,
            reference=reference,
            data=None
            if (data, preprocess, tokenizer) == (None, None, None)
            else _samples(data, preprocess, tokenizer, samples, batch_size, shape),
            max_error=max_error,
            metric=metric,
            exact=exact,
            ignore=frozenset(i.strip() for value in ignore or () for i in value.split(",") if i.strip()),
        )
        result = validate.check(model, options, stages=Stages(not quiet, err))
        if output is None:
            typer.echo(result.render(fmt))
        else:
            result.write(fmt, output)
            typer.echo(result.summary() if quiet else result.to_text())
        text_on_stdout = fmt is OutputFormat.TEXT if output is None else not quiet
        if not text_on_stdout:  # else the text report shows the warnings
            for warning in result.warnings:
                _warn(warning)
        raise typer.Exit(result.exit_code)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A compress report (.json) or a quantized ONNX model.")],
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Draw per-layer bits and error to this PNG, and a mixed-precision report's priced error "
            "against average bits or bytes (needs onnxbc[plot])."
        ),
    ] = None,
    policy_out: Annotated[
        Path | None,
        typer.Option(
            help="Write a TOML policy that reproduces the report's per-layer bits, schemes, block sizes and skips "
            "(for compress --policy)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing --policy-out file.")] = False,
    verbose: Verbose = False,
) -> None:
    """Per-layer precision, scheme, bias deltas and errors of a compress report, or the QDQ layout of a model."""
    with _errors(verbose):
        if policy_out is not None:
            inspection.check_policy_path(path, policy_out, force=force)
        result = inspection.inspect(path)
        result.print(out if out.is_terminal else Console(highlight=False, width=160))  # files: no folding
        if plot is not None:
            inspection.plot(result, plot)
            out.print(f"Wrote {display_path(plot)}", markup=False)
        if policy_out is not None:
            inspection.write_policy(path, policy_out, force=force)
            out.print(f"Wrote {display_path(policy_out)}", markup=False)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="The reference model (usually the float one).")],
    b: Annotated[Path, typer.Argument(help="The model to compare with A.")],
    data: Annotated[Path, typer.Option(help="Samples: .npz/.npy, a folder of them, or test_data_set_* folders.")],
    exact: Annotated[
        bool, typer.Option(help="Also compute both with ONNX Runtime's QDQ fusions off (the graphs as written).")
    ] = False,
    preprocess: Preprocess = None,
    tokenizer: Tokenizer = None,
    shape: Shape = None,
    samples: Annotated[int, typer.Option(help="Use at most this many samples.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Samples per ONNX Runtime run.")] = 16,
    device: Annotated[Device, typer.Option(help="Execution provider; 'auto' uses CUDA when it really works.")] = (
        Device.AUTO
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Verbose = False,
) -> None:
    """Output agreement of B with A on the same samples: cosine, relative MSE, max abs error, top-1 agreement."""
    with _errors(verbose):
        options = _samples(data, preprocess, tokenizer, samples, batch_size, shape)
        result = compare_models(a, b, options, device=device, exact=exact, stages=Stages(not quiet, err))
        out.print(f"B = {b} against A = {a} on {result.data}, {result.device}", soft_wrap=True, markup=False)
        result.print(out)


@app.command()
def bench(
    models: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL...",
            help="ONNX models taking the same inputs (float and quantized); the first is the baseline.",
        ),
    ],
    data: Annotated[
        Path | None, typer.Option(help="Samples: .npz/.npy, a folder of them, or test_data_set_* folders.")
    ] = None,
    random_data: Annotated[
        bool, typer.Option(help="Time on random inputs instead of --data (all dimensions fixed, or set by --shape).")
    ] = False,
    preprocess: Preprocess = None,
    tokenizer: Tokenizer = None,
    shape: Shape = None,
    samples: Annotated[int, typer.Option(help="Samples per round (at most; a last partial batch is left out).")] = 64,
    batch_size: Annotated[int, typer.Option(help="Samples per ONNX Runtime run: one latency is one run.")] = 16,
    rounds: Annotated[
        int, typer.Option(help="Timed rounds; each runs every model over all samples, the models in turn.")
    ] = 10,
    warmup: Annotated[
        int,
        typer.Option(
            help="Untimed runs at the start of each model's turn in a round (switching models costs the first runs)."
        ),
    ] = 3,
    threads: Annotated[
        int, typer.Option(help="Intra-op threads per session; 0 = ONNX Runtime's default (one per physical core).")
    ] = 0,
    device: Annotated[Device, typer.Option(help="Execution provider; 'auto' uses CUDA when it really works.")] = (
        Device.AUTO
    ),
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json",
            metavar="PATH",
            help="Write the JSON report (docs/bench-schema.md) to PATH (overwritten); '-' prints it on stdout "
            "instead of the table.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    verbose: Verbose = False,
) -> None:
    """Latency of MODELs in ONNX Runtime's default session on the same samples, in rounds that run the models
    in turn (each turn after --warmup untimed runs); per model the median, spread, min and max of the per-run
    latency, samples/s, and the median's ratio to the first model's. The CPU (with VNNI or not) and the threads
    are printed with it."""
    with _errors(verbose):
        options = onnxbc.BenchOptions(rounds=rounds, warmup=warmup, threads=threads, device=device)
        if data is None and not random_data:
            raise UsageError("bench needs samples: pass --data PATH, or --random-data")
        to_stdout = json_path is not None and str(json_path) == "-"
        if json_path is not None and not to_stdout and not json_path.resolve().parent.is_dir():
            raise UsageError(
                f"--json {display_path(json_path)}: folder {display_path(json_path.resolve().parent)} does not exist"
            )
        samples_options = _samples(data, preprocess, tokenizer, samples, batch_size, shape, random=random_data)
        result = onnxbc.bench(models, samples_options, options, stages=Stages(not quiet, err))
        text = json.dumps(result.to_dict(), indent=2)
        if to_stdout:
            typer.echo(text)
            return
        if json_path is not None:
            model_io.write_text(json_path, text + "\n")
        typer.echo(result.to_text())


@app.command()
def version() -> None:
    """Print the onnxbc version."""
    out.print(onnxbc.__version__)


def main(argv: list[str] | None = None) -> None:
    for stream in (sys.stdout, sys.stderr):  # a path that is not UTF-8 prints escaped, never a crash
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # a job killed by its pipeline (SIGTERM) stops as Ctrl-C does: temporary folders (GBs of boundary tensors,
    # moments, reference outputs) are removed and the exit code is 130
    signal.signal(signal.SIGTERM, _interrupted)
    app(args=argv, prog_name="onnxbc")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
