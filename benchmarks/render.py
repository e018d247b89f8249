"""Results JSON -> the tables of benchmarks/README.md (between two marker lines) and one PNG per model.

Only the part between ``<!-- results:begin -->`` and ``<!-- results:end -->`` is rewritten; the rest of the
README is prose kept by hand. Plots need matplotlib (``pip install matplotlib``); without it the tables are
still written and the plots are skipped with a message.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.methods import FP32, METHODS
from benchmarks.settings import SETTINGS
from benchmarks.zoo import MODELS

README = Path(__file__).resolve().parent / "README.md"
BEGIN = "<!-- results:begin -->"
END = "<!-- results:end -->"
FAMILIES = {"ort": "ONNX Runtime", "nncf": "NNCF", "onnxbc": "onnxbc"}
# metrics where lower is better (the others: higher is better)
LOWER_IS_BETTER = {"perplexity", "nll"}


def family(method: str) -> str:
    return method.split("_")[0]


# --------------------------------------------------------------------------- formatting


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _metric(name: str, value: Any) -> str:
    if value is None:
        return "nan/inf"
    if name in ("perplexity", "nll"):
        return f"{value:.3f}"
    return f"{value:.4f}"


def _ratio(value: float | None) -> str:
    return "" if value is None else f" ({value:.2f}×)"


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.2f}" if n_bytes < 1e8 else f"{n_bytes / 1e6:.0f}"


class Notes:
    """Numbered, deduplicated footnotes of one table."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def render(self) -> list[str]:
        return [f"{i}. {text}" for i, text in enumerate(self.items, 1)]


# --------------------------------------------------------------------------- matrix tables


def _row_order(row: dict) -> tuple[int, int]:
    settings = list(SETTINGS)
    methods = [FP32, *METHODS]
    s = -1 if row["setting"] is None else settings.index(row["setting"])
    return s, methods.index(row["method"])


def model_table(model: str, info: dict, rows: list[dict]) -> list[str]:
    metrics = info["metric_names"]
    metrics = [m for m in metrics if m != "nll"] or metrics  # perplexity says it
    head = ["setting", "method"]
    for m in metrics:
        head += [f"{m} exact", f"{m} ORT default"]
    head += ["rel. MSE", "size MB (×FP32)", "compress s (×ORT)", "peak RSS MB (×ORT)", "latency ms (×FP32)", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = Notes()
    for row in sorted(rows, key=_row_order):
        cells = [row["setting"] or "–", f"`{row['method']}`"]
        refs = [notes.ref(n) for n in row.get("notes", [])]
        if row.get("status") != "ok":
            cells += [row.get("status", "?")] * (2 * len(metrics) + 5)
            refs.append(notes.ref(f"`{row['method']}` {row['setting']}: {row.get('reason')}"))
        else:
            for m in metrics:
                cells += [_metric(m, row["metrics_exact"].get(m)), _metric(m, row["metrics_default"].get(m))]
            ratios = row.get("ratios", {})
            comp = row.get("compress")
            cells += [
                _num(row.get("rel_mse"), 3),
                _mb(row["size_bytes"]) + _ratio(ratios.get("size_vs_fp32")),
                (f"{comp['process_s']:.1f}" + _ratio(ratios.get("time_vs_baseline"))) if comp else "–",
                (f"{comp['peak_rss_mb']:.0f}" + _ratio(ratios.get("rss_vs_baseline"))) if comp else "–",
                f"{row['latency_ms']:.2f}" + _ratio(ratios.get("latency_vs_fp32")),
            ]
        cells.append(" ".join(refs))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + notes.render()


def summary_table(results: Sequence[dict]) -> list[str]:
    """Per model and setting: rel. MSE of onnxbc's default row, and the best row of each tool."""
    head = [
        "model",
        "setting",
        "onnxbc default",
        "onnxbc best",
        "ONNX Runtime best",
        "NNCF best",
        "onnxbc default vs best other",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        rows = [r for r in res["rows"] if r.get("status") == "ok" and r["setting"] and r.get("rel_mse") is not None]
        for model in res["models"]:
            for setting in SETTINGS:
                cell = [r for r in rows if r["model"] == model and r["setting"] == setting]
                if not cell:
                    continue
                default = next((r for r in cell if r["method"] == "onnxbc_independent"), None)
                best = {
                    f: min((r for r in cell if family(r["method"]) == f), key=lambda r: r["rel_mse"], default=None)
                    for f in FAMILIES
                }

                def show(r: dict | None) -> str:
                    return "–" if r is None else f"{r['rel_mse']:.3g} (`{r['method']}`)"

                others = [b for f, b in best.items() if f != "onnxbc" and b is not None]
                verdict = "–"
                if default and others:
                    rival = min(others, key=lambda r: r["rel_mse"])
                    factor = rival["rel_mse"] / default["rel_mse"] if default["rel_mse"] else math.inf
                    verdict = f"{factor:.2f}× lower" if factor >= 1 else f"{1 / factor:.2f}× higher"
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            model,
                            setting,
                            _num(default and default["rel_mse"], 3),
                            show(best["onnxbc"]),
                            show(best["ort"]),
                            show(best["nncf"]),
                            verdict,
                        ]
                    )
                    + " |"
                )
    return lines


def size_scaling_table(results: Sequence[dict]) -> list[str]:
    """onnxbc (default, W8A8) and ORT quantize_static cost versus model size, from the matrix rows."""
    head = [
        "model",
        "FP32 MB",
        "calib samples",
        "onnxbc s",
        "onnxbc peak RSS MB",
        "quantize_static s",
        "quantize_static peak RSS MB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = []
    for res in results:
        for model, info in res["models"].items():
            by_method = {r["method"]: r for r in res["rows"] if r["model"] == model and r["setting"] == "w8a8"}
            bc, ort = by_method.get("onnxbc_independent"), by_method.get("ort_static")

            def cost(r: dict | None, key: str) -> str:
                if not r or r.get("status") != "ok":
                    return "–"
                return f"{r['compress'][key]:.1f}" if key == "process_s" else f"{r['compress'][key]:.0f}"

            entries.append(
                (
                    info["size_bytes"],
                    [
                        model,
                        _mb(info["size_bytes"]),
                        str(info["calibration_samples"]),
                        cost(bc, "process_s"),
                        cost(bc, "peak_rss_mb"),
                        cost(ort, "process_s"),
                        cost(ort, "peak_rss_mb"),
                    ],
                )
            )
    for _, cells in sorted(entries):
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def scaling_table(res: dict) -> list[str]:
    cfg = res["config"]
    head = ["samples", "method", "compress s", "call s", "peak RSS MB", "passes over data", "rel. MSE", "metric exact"]
    lines = [
        f"{cfg['model']}, {cfg['setting']}, the first N samples of a deterministic larger calibration set "
        f"(`benchmarks.zoo.{cfg['model']}.calibration_set`), `{res.get('command', '')}` at commit "
        f"{res.get('onnxbc_source', {}).get('commit', '?')}:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in res["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['samples']} | `{r['method']}` | {r.get('status')}: {r.get('reason')} | | | | | |")
            continue
        comp = r["compress"]
        passes = r.get("info", {}).get("passes_over_data", "–")
        metric = ", ".join(f"{k} {_metric(k, v)}" for k, v in (r.get("metrics_exact") or {}).items() if k != "nll")
        lines.append(
            f"| {r['samples']} | `{r['method']}` | {comp['process_s']:.1f} | {comp['call_s']:.1f} | "
            f"{comp['peak_rss_mb']:.0f} | {passes} | {_num(r.get('rel_mse'), 3)} | {metric} |"
        )
    return lines


# --------------------------------------------------------------------------- plots


MARKERS = {"w8a8": "o", "w4a8": "s", "w4a8-b128": "D", "w4-b128": "^", "w3": "v"}
COLORS = {"ort": "tab:blue", "nncf": "tab:green", "onnxbc": "tab:red"}


def plot_model(model: str, info: dict, rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5))
    points = [r for r in rows if r.get("status") == "ok" and r["setting"] and r.get("rel_mse")]
    for r in points:
        fam = family(r["method"])
        ax.scatter(
            r["size_bytes"] / 1e6, r["rel_mse"], marker=MARKERS[r["setting"]], color=COLORS[fam], s=40, alpha=0.8
        )
        label = r["method"].replace("onnxbc_", "bc:").replace("ort_static", "ort").replace("nncf_", "nncf:")
        ax.annotate(label, (r["size_bytes"] / 1e6, r["rel_mse"]), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("file size, MB (log)")
    ax.set_ylabel("output rel. MSE vs FP32 on the eval split (log; exact graph semantics)")
    ax.set_title(f"{model}: error vs size (FP32 {info['size_bytes'] / 1e6:.2f} MB)")
    for fam, color in COLORS.items():
        ax.scatter([], [], color=color, label=FAMILIES[fam])
    for setting, marker in MARKERS.items():
        ax.scatter([], [], color="gray", marker=marker, label=setting)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- README


def _header(results: Sequence[dict]) -> list[str]:
    first = results[0]
    m = first["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, AVX2 {'yes' if m['avx2'] else 'no'}, "
        f"VNNI {'yes' if m['vnni'] else 'no'}; {m['os']}; Python {m['python']}.",
        "",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in first["packages"].items()) + ".",
        "",
        _source_line(results),
        "",
        "Commands (each result file records its own):",
        "",
        "```console",
    ]
    lines += [
        f"{r['command']}    # {r['name']}.json, {r['created']}, {r.get('wall_s', 0) / 60:.0f} min" for r in results
    ]
    return lines + ["```"]


def _source_line(results: Sequence[dict]) -> str:
    states = []
    for r in results:
        src = r.get("onnxbc_source") or {}
        state = f"commit {src.get('commit') or '?'}"
        if src.get("modified"):
            state += f" + uncommitted changes to {', '.join(src['modified'])}"
        states.append(f"{r['name']}: {state}")
    return "onnxbc source measured: " + "; ".join(states) + "."


def _baseline_line(rows: list[dict]) -> str:
    used: dict[str, str] = {}
    for r in rows:
        base = r.get("ratios", {}).get("baseline")
        if base:
            used.setdefault(r["setting"], base)
    if not used:
        return ""
    pairs = ", ".join(f"{setting}: `{base}`" for setting, base in used.items())
    return f"Compress time and peak RSS ratios are to the ONNX Runtime row of the same setting ({pairs})."


def merged_matrix(results: Sequence[dict]) -> dict | None:
    """Every matrix result as one: a later file's row takes the place of an earlier row for the same model,
    setting and method, unless the later one did not run and the earlier one did (``--slow`` or extra-method
    runs fill in or re-measure the main run). FP32 rows stay from the first run: every run measures its own
    FP32 latency and its rows' ratios are to that, so the first is as good as any."""
    matrices = [r for r in results if r.get("kind") == "matrix"]
    if not matrices:
        return None
    rows: dict[tuple, dict] = {}
    models: dict[str, dict] = {}
    batches: dict[str, int] = {}
    for res in matrices:
        for model, info in res["models"].items():
            models.setdefault(model, info)
        for model, batch in res["config"]["latency_batch"].items():
            batches.setdefault(model, batch)
        for row in res["rows"]:
            key = (row["model"], row["setting"], row["method"])
            if (
                key not in rows
                or rows[key].get("status") != "ok"
                or (row["method"] != "fp32" and row.get("status") == "ok")
            ):
                rows[key] = row
    config = {**matrices[0]["config"], "latency_batch": batches}
    order = {name: i for i, name in enumerate(MODELS)}  # the zoo's order, whichever file came first
    models = dict(sorted(models.items(), key=lambda item: order.get(item[0], len(order))))
    return {**matrices[0], "models": models, "rows": list(rows.values()), "config": config}


def results_markdown(results: Sequence[dict], plots: dict[str, str]) -> list[str]:
    merged = merged_matrix(results)
    matrices = [merged] if merged is not None else []
    scalings = [r for r in results if r.get("kind") == "scaling"]
    lines = _header(results) + [""]
    if matrices:
        lines += ["### Summary: output rel. MSE (exact graph semantics), onnxbc vs the best row of each tool", ""]
        lines += summary_table(matrices) + [""]
    for res in matrices:
        for model, info in res["models"].items():
            rows = [r for r in res["rows"] if r["model"] == model]
            fp32 = next((r for r in rows if r["method"] == FP32), {})
            fp32_metrics = ", ".join(f"{k} {_metric(k, v)}" for k, v in fp32.get("metrics_exact", {}).items())
            lines += [
                f"### {model}",
                "",
                f"FP32 {info['onnx']}: {_mb(info['size_bytes'])} MB, {fp32_metrics}; {info['calibration_samples']} "
                f"calibration samples, {info['eval_samples']} eval samples; latency batch "
                f"{res['config']['latency_batch'][model]}.",
                "",
            ]
            lines += model_table(model, info, rows) + ["", _baseline_line(rows), ""]
            if model in plots:
                lines += [f"![{model}: error vs size]({plots[model]})", ""]
    if matrices:
        lines += ["### Cost versus model size (W8A8, onnxbc default vs quantize_static)", ""]
        lines += size_scaling_table(matrices) + [""]
    for res in scalings:
        lines += ["### Cost versus calibration samples", ""] + scaling_table(res) + [""]
    return lines


def load(paths: Iterable[Path]) -> list[dict]:
    """The matrix and scaling results among ``paths`` (the other result files have their own pages:
    DATAFREE.md, MIXED.md), in page order."""
    order = {"matrix": 0, "scaling": 1}
    results = [json.loads(Path(p).read_text()) for p in paths]
    return sorted((r for r in results if r.get("kind") in order), key=lambda r: (order[r["kind"]], r["created"]))


def render(results_dir: Path, readme: Path = README, paths: Sequence[Path] | None = None) -> list[Path]:
    results = load(paths if paths is not None else sorted(Path(results_dir).glob("*.json")))
    if not results:
        raise SystemExit(f"no results JSON in {results_dir}")
    written: list[Path] = []
    plots: dict[str, str] = {}
    merged = merged_matrix(results)
    for model, info in merged["models"].items() if merged is not None else ():
        png = Path(results_dir) / f"{model}.png"
        if plot_model(model, info, [r for r in merged["rows"] if r["model"] == model], png):
            plots[model] = os.path.relpath(png.resolve(), readme.resolve().parent)
            written.append(png)
    if not plots:
        print("matplotlib is not importable: plots skipped")
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: marker lines {BEGIN} / {END} not found")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    body = "\n".join(results_markdown(results, plots))
    readme.write_text(f"{before}{BEGIN}\n{body}\n{END}{after}")
    written.append(readme)
    return written
