"""benchmarks/mixed.py on the bundled Fashion-MNIST CNN, small enough for the default suite.

The size section only (FP32, uniform int4, mixed precision at 4.5 bits with compensated and raw prices, the
int4-sized budget, NNCF where it is installed), one budget; the cache, results and markdown go to a temporary
folder. The full run is ``python -m benchmarks.mixed`` (benchmarks/MIXED.md); this test keeps its code alive,
and checks the NNCF ratio search and the claim check on numbers made up here.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import mixed


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    config = mixed.MixedConfig(
        models=("fashion",),
        avg_bits=(4.5,),
        uniform_bits=(4,),
        sections={"fashion": ("size",)},
        nncf_probes=3,
        cache=root / "cache",
        results_path=root / "results" / "mixed.json",
        markdown=root / "MIXED.md",
        command="pytest tests/test_benchmarks_mixed.py",
    )
    mixed.run(config, log_line=lambda line: None)
    return config, json.loads(config.results_path.read_text())


def test_rows(smoke):
    config, results = smoke
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == [
        "fp32",
        "int4",
        "mixed4.5-comp",
        "mixed4.5-raw",
        "max-size-int4",
        "max-size-int4-blocks",
        "int4-b64",
        "max-size-int4-b64",
        "max-size-int4-b64-blocks",
        "nncf",
    ]
    fp32, int4, comp, raw = rows["fp32"], rows["int4"], rows["mixed4.5-comp"], rows["mixed4.5-raw"]
    assert all(r["status"] == "ok" for r in (fp32, int4, comp, raw)), [r.get("reason") for r in rows.values()]
    assert fp32["metrics"]["top1"] == pytest.approx(0.91) and fp32["rel_mse"] == 0.0  # models/README.md
    assert int4["avg_bits"] == 4.0 and int4["bits_params"] == {"4": 421408}  # the CNN's 4 weights, all int4
    for row in (comp, raw):
        assert 2.0 <= row["avg_bits"] <= 4.5 + 1e-9  # the budget holds
        assert row["avg_bits"] == pytest.approx(row["precision"]["chosen"]["avg_bits"])
        assert 0 < row["rel_mse"] < 0.05 and row["size_bytes"] < 0.2 * fp32["size_bytes"]
        assert row["compress_s"] > 0
    assert comp["precision"]["priced"] == "after compensation" and raw["precision"]["priced"] == "before compensation"
    assert "--raw-prices" in raw["cli"] and "--avg-bits 4.5" in comp["cli"]
    capped = rows["max-size-int4"]
    assert f"--max-size {int4['size_bytes']}" in capped["cli"]
    if capped["status"] == "ok":
        assert capped["size_bytes"] <= int4["size_bytes"]
    else:  # onnxbc may refuse a budget it cannot meet; the row says so
        assert capped["status"] == "failed" and "--max-size" in capped["reason"]
    blocks = rows["int4-b64"]
    assert blocks["status"] == "ok" and blocks["size_bytes"] > int4["size_bytes"]  # 4.5 bits stored
    for key, base in (
        ("max-size-int4-b64", blocks),
        ("max-size-int4-b64-blocks", blocks),
        ("max-size-int4-blocks", int4),
    ):
        if rows[key]["status"] == "ok":
            assert rows[key]["size_bytes"] <= base["size_bytes"]
    assert "--block-candidates 0,128,64,32" in rows["max-size-int4-blocks"]["cli"]
    if importlib.util.find_spec("nncf") is None:
        assert rows["nncf"]["status"] == "skipped" and "nncf" in rows["nncf"]["reason"]
    assert results["machine"]["cores"] >= 1 and "onnxbc" in results["packages"]
    assert results["command"] == config.command and results["created"]
    assert not config.work_root.exists()  # quantized models are not left behind


def test_claim_and_markdown(smoke):
    config, results = smoke
    claim = results["claims"]["fashion"]
    entry = next(e for e in claim["rows"] if e["key"] == "mixed4.5-comp")
    assert claim["answer"] is entry["beats_int4"]
    assert entry["same_or_smaller_file"] is (entry["size_bytes"] <= claim["int4"]["size_bytes"])
    text = config.markdown.read_text()
    assert "## Claim check" in text and "fashion: claim (" in text
    assert (
        "| uniform int4 (policy: every layer) | `--activations none --weights int4 --policy int4-policy.toml` |" in text
    )
    if importlib.util.find_spec("matplotlib"):
        assert (config.results_path.parent / "mixed_fashion.png").stat().st_size > 0
        assert "](results/mixed_fashion.png)" in text


def _row(key: str, size: int, rel_mse: float, perplexity: float) -> dict:
    return {"key": key, "label": key, "status": "ok", "size_bytes": size, "rel_mse": rel_mse, "avg_bits": 4.0,
            "metrics": {"perplexity": perplexity}}  # fmt: skip


@pytest.mark.parametrize(
    ("mixed_row", "answer"),
    [
        ((100, 0.5, 6.0), True),  # same file, lower error, lower perplexity
        ((101, 0.5, 6.0), False),  # one byte larger
        ((90, 1.0, 6.0), False),  # error not lower
        ((90, 0.5, 7.5), False),  # perplexity worse
    ],
)
def test_claim_check(mixed_row, answer):
    rows = [_row("int4", 100, 1.0, 7.0), _row("mixed4.5-comp", *mixed_row)]
    claim = mixed.claim_check(rows, "perplexity")
    assert claim["answer"] is answer
    assert any(line.endswith(f": {'YES' if answer else 'NO'}.") for line in mixed.claim_lines("m", claim))


@pytest.mark.parametrize("target", [1000, 900, 850, 800, 700, 650, 610, 2000, 100])
def test_match_ratio_finds_the_closest_step(target):
    """NNCF's file size as a function of ratio: layers, least sensitive first, go int4 while their share of the
    parameters stays below the ratio; each saves half a byte per parameter."""
    params = [400, 50, 300, 250]  # in NNCF's order
    full = 1000

    def size_at(ratio: float) -> int:
        total, size = 0, full
        for n in params:
            if (total + n) / sum(params) >= ratio and ratio < 1:
                break
            total += n
            size -= n // 2
        return size

    reachable = {size_at(r / 1000) for r in range(1, 1001)}
    calls = []
    ratio, probes = mixed.match_ratio(lambda r: calls.append(r) or size_at(r), target, probes=8)
    assert len(calls) <= 8 and [p["ratio"] for p in probes] == calls
    closest = min(abs(s - target) for s in reachable)
    assert abs(size_at(ratio) - target) == closest


def test_plan_and_flags():
    config = mixed.MixedConfig(models=("chargpt",))
    rows = mixed.plan("chargpt", config)
    keys = [r.key for r in rows]
    assert keys[0] == "fp32" and {"int8", "int4", "int3", "max-size-int4", "nncf"} <= set(keys)
    assert sum(k.startswith("mixed") for k in keys) == 2 * len(mixed.AVG_BITS)
    assert {"w4a4-none", "w4a4-independent", "w4a8-none", "w4a8-independent"} <= set(keys)
    assert {"int3-nearest-none", "int3-gptq-none", "int3-nearest-independent", "int3-gptq-independent"} <= set(keys)
    gptq = next(r for r in rows if r.key == "int3-gptq-independent")
    assert mixed.cli_flags(gptq.options) == (
        "--activations none --weights int3 --rounding gptq --bias-correction independent"
    )
    assert [r.key for r in mixed.plan("smollm2", config)][1:] == [k for k in keys if k.startswith("int3-")]
