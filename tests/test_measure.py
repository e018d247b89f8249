"""The held-out check (``candidates.measure``): the float model runs once per batch for every candidate, and a
candidate stops being measured once it cannot win, without changing what is saved or the errors reported.

Small models built here (the float model and copies with noise of a chosen size in their weights) give
candidates whose errors are computed again in numpy; a real compress of the bundled CNN and of a test graph
checks the errors against the old computation (the float model re-run beside each candidate) and the saved bytes
against a run that measures every candidate to the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

import onnxbc
from models import test_graphs
from onnxbc import candidates, compare, model_io, records
from onnxbc.calibration.collector import collect
from onnxbc.calibration.data import input_specs, open_data
from onnxbc.calibration.session import SessionFactory
from onnxbc.candidates import Candidate, Weights
from onnxbc.cli import app
from onnxbc.compare import Reference, compare_sessions
from onnxbc.options import BiasCorrection, CompressOptions, DataOptions, Device, WeightType
from onnxbc.plan import QuantPlan
from onnxbc.progress import Stages
from onnxbc.report import close_call_errors

FASHION = Path("models/fashion_cnn.onnx")
FASHION_DATA = Path("models/data/fashion_calib.npz")
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 4)).astype(np.float32)
V = 100 * RNG.standard_normal((8, 3)).astype(np.float32)  # a second output 100x larger: weighed per output
X = RNG.standard_normal((64, 8)).astype(np.float32)
NAMES = {  # one name per (weights, compensation), as the report keys candidates
    0: (Weights.PLAN, BiasCorrection.NONE),
    1: (Weights.PLAN, BiasCorrection.INDEPENDENT),
    2: (Weights.MINMAX, BiasCorrection.INDEPENDENT),
}


def two_outputs(w: np.ndarray, v: np.ndarray, pad: int = 0) -> ir.Model:
    """y = x @ w and z = x @ v; ``pad`` floats of an unused initializer make the file bigger."""
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape(["N", 8]))
    inits = [ir.Value(name=n, const_value=ir.tensor(a, name=n)) for n, a in (("w", w), ("v", v))]
    if pad:
        inits.append(ir.Value(name="pad", const_value=ir.tensor(np.zeros(pad, np.float32), name="pad")))
    nodes = [ir.node("MatMul", [x, inits[0]], name="mw"), ir.node("MatMul", [x, inits[1]], name="mv")]
    for node, name, width in zip(nodes, ("y", "z"), (4, 3)):
        y = node.outputs[0]
        y.name, y.dtype, y.shape = name, ir.DataType.FLOAT, ir.Shape(["N", width])
    graph = ir.Graph([x], [n.outputs[0] for n in nodes], nodes=nodes, initializers=inits, opset_imports={"": 17})
    return ir.Model(graph, ir_version=8)


def candidate(index: int, noise: float, pad: int = 0) -> Candidate:
    """Candidate ``index`` (its name: ``NAMES``) whose weights carry relative noise of size ``noise``."""
    rng = np.random.default_rng(index + 1)
    w, v = (a * (1 + noise * rng.standard_normal(a.shape)).astype(np.float32) for a in (W, V))
    weights, compensation = NAMES[index]
    return Candidate(weights, compensation, QuantPlan(), {}, model=two_outputs(w, v, pad))


class Counting:
    """A session whose runs are counted."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session, self.runs = session, 0

    def run(self, names, feeds):
        self.runs += 1
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


@pytest.fixture
def calib():
    data = open_data(DataOptions(source={"x": X}, batch_size=4, holdout_fraction=0.5), input_specs(two_outputs(W, V)))
    assert data.count_batches("holdout") == 8
    return data


def reference_of(calib, sessions: SessionFactory) -> tuple[Reference, Counting]:
    session = Counting(sessions.create(two_outputs(W, V)))
    return candidates.reference(lambda: session, calib), session


def numpy_error(c: Candidate) -> float:
    """The candidate's error on the held-out half, from its weights alone."""
    held = X[32:].astype(np.float64)
    inits = c.model.graph.initializers
    errors = []
    for ref, test in ((W, inits["w"].const_value.numpy()), (V, inits["v"].const_value.numpy())):
        a, b = held @ ref.astype(np.float64), held @ test.astype(np.float64)
        errors.append(np.sum((a - b) ** 2) / np.sum(a**2))
    return float(np.mean(errors))


def measure(cands, calib, max_size=None):
    sessions = SessionFactory(Device.CPU)
    reference, counted = reference_of(calib, sessions)
    candidates.measure(cands, reference, calib, sessions, Stages(enabled=False), max_size)
    return reference, counted


def test_a_clearly_worse_candidate_is_stopped_and_reported(calib):
    good, bad = candidate(1, 0.01), candidate(0, 0.2)
    reference, counted = measure([good, bad], calib)
    assert good.outputs is not None and good.error == pytest.approx(numpy_error(good), rel=1e-4)
    assert bad.outputs is None and bad.stopped is not None
    assert bad.stopped.by == good.name and bad.stopped.of == 8 and bad.stopped.batches < 8
    # the bound is a lower bound of the error it would have had, and above the winner's
    assert good.error < bad.stopped.bound <= numpy_error(bad) * (1 + 1e-4)
    assert counted.runs == reference.calls == 8  # once per batch for both
    winner, warnings = candidates.choose([good, bad], None, "holdout")
    assert winner is good and warnings == []
    section = records.compensation(winner, [good, bad], "holdout")
    assert section["candidates"] == {good.name: good.error, bad.name: bad.stopped.bound}
    assert section["stopped"] == {
        bad.name: {
            "rel_mse_at_least": bad.stopped.bound,
            "batches": bad.stopped.batches,
            "of_batches": 8,
            "beaten_by": good.name,
        }
    }
    assert section["output_rel_mse_without"] == bad.stopped.bound and section["output_rel_mse_without_is_bound"]
    assert section["output_rel_mse_with"] == good.error and not section["output_rel_mse_with_is_bound"]
    with pytest.raises(RuntimeError, match="was stopped"):
        _ = bad.error


def test_a_candidate_worse_only_once_every_batch_is_in_is_measured(calib):
    """Its bound stays below the winner's error until the last batch (0.99x after 7 of 8), and on the last
    batch its error is known: it is measured to the end, not stopped."""
    good, close = candidate(1, 0.01), candidate(0, 0.013)
    measure([good, close], calib)
    assert close.stopped is None and good.error < close.error < 1.2 * good.error


def test_pruning_never_changes_the_winner(calib):
    """Every order of three candidates: the same winner and errors as measuring all to the end, and the
    compensation warning says a stopped candidate's error is a lower bound."""
    noises = {0: 0.01, 1: 0.05, 2: 0.3}
    full = {i: numpy_error(candidate(i, n)) for i, n in noises.items()}
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        cands = [candidate(i, noises[i]) for i in order]
        measure(cands, calib)
        winner, warnings = candidates.choose(cands, None, "holdout")
        assert winner.name == candidate(0, 0).name
        for i, c in zip(order, cands):
            assert (c.error if c.outputs is not None else c.stopped.bound) <= full[i] * (1 + 1e-4)
            if c.outputs is not None:
                assert c.error == pytest.approx(full[i], rel=1e-4)
        assert cands[order.index(0)].outputs is not None
        # the least compensated error, a lower bound where a stopped candidate's bound is below the others' errors
        value, bound = min((c.stopped.bound, True) if c.stopped else (c.error, False) for c in cands if c.compensated)
        assert warnings == [
            f"compensation raised the holdout output error ({full[0]:.3e} -> {'at least ' if bound else ''}"
            f"{value:.3e}); saved without it"
        ]
    assert any(c.stopped for c in cands)


def test_only_candidates_that_fit_the_budget_stop_others(calib):
    """The best candidate does not fit --max-size: it cannot stop the next one, which fits and is saved; that
    one stops the worst."""
    best, fitting, worst = candidate(1, 0.01, pad=4096), candidate(0, 0.05), candidate(2, 0.5)
    budget = model_io.serialized_bytes(fitting.model) + 100
    assert model_io.serialized_bytes(best.model) > budget
    measure([best, fitting, worst], calib, max_size=budget)
    assert best.outputs is not None and fitting.outputs is not None and fitting.error > best.error
    assert worst.stopped is not None and worst.stopped.by == fitting.name
    winner, warnings = candidates.choose([best, fitting, worst], budget, "holdout")
    assert winner is fitting and "would pass --max-size" in warnings[0]
    # without the budget the same candidates stop the fitting one
    again = [candidate(1, 0.01, pad=4096), candidate(0, 0.05), candidate(2, 0.5)]
    measure(again, calib)
    assert again[1].stopped is not None and again[1].stopped.by == again[0].name


@pytest.mark.parametrize("keep", [2**20, 0])
def test_reference_runs_once(calib, monkeypatch, keep):
    """The float model runs once per batch for every candidate and the default-session comparison, its outputs
    kept in memory or, beyond ``KEEP_REFERENCE_BYTES``, in temporary files that ``close`` removes. The errors
    are the same either way."""
    monkeypatch.setattr(candidates, "KEEP_REFERENCE_BYTES", keep)
    cands = [candidate(i, 0.01 * (3 - i)) for i in range(3)]  # each better than the one before: none stops
    reference, counted = measure(cands, calib)
    assert reference.kept and counted.runs == reference.calls == 8
    folder = reference._stash._folder
    assert (folder is None) is (keep > 0) and (keep > 0 or len(list(folder.iterdir())) == 8 * 2)  # 2 outputs
    for c in cands:
        assert c.outputs is not None and c.error == pytest.approx(numpy_error(c), rel=1e-4)
    agreement = reference.compare(SessionFactory(Device.CPU).create(cands[0].model))
    assert counted.runs == 8 and candidates.mean_rel_mse(agreement) == cands[0].error
    reference.close()
    assert folder is None or not folder.exists()


def test_the_float_outputs_of_pass_2_stand_for_the_reference_runs(calib):
    """``Reference.take``: the float outputs a collector fetched on every batch, whole, are kept as a pass of the
    float session would keep them (it never runs; the errors are the same); a reference that runs a batch in parts
    (``most``), outputs fetched in other runs, or a split not fetched are refused, and it runs as before."""
    sessions = SessionFactory(Device.CPU)
    outputs = compare.FloatOutputs(["y", "z"], candidates.KEEP_REFERENCE_BYTES)
    collect(two_outputs(W, V), [outputs], calib, sessions, splits=("holdout",))
    assert len(outputs.runs["holdout"]) == 8 and outputs.bytes["holdout"] == 32 * (4 + 3) * 4
    cands = [candidate(i, 0.01 * (3 - i)) for i in range(3)]
    reference, counted = reference_of(calib, sessions)
    assert reference.take(outputs, "holdout") and reference.kept
    candidates.measure(cands, reference, calib, sessions, Stages(enabled=False))
    assert counted.runs == 0
    for c in cands:
        assert c.error == pytest.approx(numpy_error(c), rel=1e-4)
    parts = Reference(counted, lambda: calib.batches("holdout"), most=2)
    assert not parts.take(outputs, "holdout") and parts.kept is None
    assert not reference_of(calib, sessions)[0].take(outputs, "fit")
    outputs.runs["holdout"].pop()
    assert not reference_of(calib, sessions)[0].take(outputs, "holdout")


def test_the_float_session_is_let_go_once_its_outputs_are_kept(calib):
    """No candidate's session shares memory with the float model's: that one goes after the first pass, and is
    made again only when asked for (the close-call check on the fit samples)."""
    sessions, made = SessionFactory(Device.CPU), []

    def make():
        session = Counting(sessions.create(two_outputs(W, V)))
        made.append(weakref.ref(session))
        return session

    reference = candidates.reference(make, calib)
    cands = [candidate(i, 0.01 * (3 - i)) for i in range(2)]
    candidates.measure(cands, reference, calib, sessions, Stages(enabled=False))
    assert len(made) == 1 and made[0]() is None
    assert reference.session.runs == 0 and len(made) == 2


def test_a_pass_left_early_keeps_nothing(calib):
    reference, counted = reference_of(calib, SessionFactory(Device.CPU))
    for _ in zip(range(3), reference.runs()):
        pass
    assert reference.kept is None
    assert sum(1 for _ in reference.runs()) == 8 and reference.kept
    assert sum(1 for _ in reference.runs()) == 8 and counted.runs == 3 + 8


def old_errors(model: ir.Model, cands: list[Candidate], calib) -> dict[str, dict[str, dict]]:
    """The old computation: the float model re-run beside each candidate, in its own session."""
    sessions = SessionFactory(Device.CPU)
    split = candidates.evaluated_on(calib)
    return {
        c.name: {
            n: a.as_dict()
            for n, a in compare_sessions(sessions.create(model), sessions.create(c.model), calib.batches(split)).items()
        }
        for c in cands
    }


@pytest.mark.parametrize(
    "source, options",
    [("fashion", CompressOptions(weights=WeightType.INT4)), ("multi_output", CompressOptions(weights=WeightType.INT4))],
)
def test_errors_and_saved_bytes_of_a_real_compress(source, options, tmp_path, monkeypatch):
    """The errors equal the old per-candidate computation; the saved file is the one a run that measures every
    candidate to the end saves; the float model's session never ran: pass 2 fetched its outputs on the held-out
    batches (``Reference.take``). With nothing kept (``KEEP_REFERENCE_BYTES`` 0) it runs, the same file saved."""
    if source == "fashion":
        model, data = FASHION, FASHION_DATA
    else:
        graph = test_graphs.build(source)
        model, data = test_graphs.save(graph, tmp_path / f"{source}.onnx"), tmp_path / f"{source}.npz"
        np.savez(data, **graph.feeds(64, 0))
    seen = {}
    make, choose = candidates.reference, candidates.choose

    def reference(session, calib, most=None):
        seen["session"], seen["calib"] = Counting(session()), calib
        seen["reference"] = make(lambda: seen["session"], calib, most)
        return seen["reference"]

    def chosen(cands, max_size, split, finalists=()):
        seen["candidates"] = list(cands)
        return choose(cands, max_size, split, finalists)

    monkeypatch.setattr(candidates, "reference", reference)
    monkeypatch.setattr(candidates, "choose", chosen)
    result = onnxbc.compress(model, tmp_path / "new.onnx", data=DataOptions(path=data), options=options)
    calib, cands = seen["calib"], seen["candidates"]
    holdout = calib.count_batches("holdout")
    assert seen["session"].runs == 0 < holdout  # pass 2's float outputs kept for every candidate
    assert seen["reference"].kept is None  # and let go at the end
    old = old_errors(model_io.load(model), cands, calib)
    comp = result.report.compensation
    for c in cands:
        if c.outputs is not None:
            for name, values in old[c.name].items():
                for key, value in values.items():
                    assert result.report.outputs[c.name][name][key] == pytest.approx(value, rel=1e-12, abs=1e-300)
            assert comp["candidates"][c.name] == pytest.approx(np.mean([v["rel_mse"] for v in old[c.name].values()]))
        else:
            assert c.stopped.bound <= np.mean([v["rel_mse"] for v in old[c.name].values()])
            assert comp["stopped"][c.name]["rel_mse_at_least"] == c.stopped.bound

    monkeypatch.setattr(candidates, "MARGIN", math.inf)  # nothing stops: every candidate measured to the end
    monkeypatch.setattr(candidates, "KEEP_REFERENCE_BYTES", 0)  # and the float model's outputs kept in files
    full = onnxbc.compress(model, tmp_path / "full.onnx", data=DataOptions(path=data), options=options)
    assert seen["session"].runs == holdout  # nothing of pass 2's kept: the float model ran once per batch
    digest = [hashlib.sha256(Path(r.output).read_bytes()).hexdigest() for r in (result, full)]
    assert digest[0] == digest[1]
    assert full.report.compensation["chosen"] == comp["chosen"]
    assert full.report.compensation["stopped"] == {}
    assert {k: full.report.compensation["candidates"][k] for k in comp["candidates"] if k not in comp["stopped"]} == {
        k: v for k, v in comp["candidates"].items() if k not in comp["stopped"]
    }


def _agreeing(rows: list[float], ref2: float = 100.0) -> dict:
    """Outputs whose per-row squared errors are ``rows``."""
    a = compare.OutputAgreement("y", err2=float(sum(rows)), ref2=ref2, rows=len(rows), row_err2=list(rows))
    return {"y": a}


def _measured(index: int, rows: list[float]) -> Candidate:
    weights, compensation = NAMES[index]
    return Candidate(weights, compensation, QuantPlan(), {}, outputs=_agreeing(rows))


def test_a_close_call_is_one_the_held_out_rows_cannot_settle():
    best = _measured(0, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    noisy = _measured(1, [0.1, 3.0, 0.2, 2.9, 0.1, 2.0])  # 40 % worse in all, but by chance of a few rows
    steady = _measured(2, [1.4, 1.4, 1.4, 1.4, 1.4, 1.4])  # 40 % worse on every row: told apart
    kept = SimpleNamespace(kept=True, bytes=1000)  # the float outputs on the 6 held-out samples
    calib = SimpleNamespace(n_fit=24, n_holdout=6)

    def undecided(cands, reference=kept, data=calib):
        return candidates.undecided(cands, None, reference, data)

    assert undecided([best, noisy, steady]) == [best, noisy]
    assert undecided([best, steady]) == []
    near = _measured(1, [0.9, 1.2, 0.9, 1.1, 1.0, 1.0])  # 1 % worse: either will do
    assert undecided([best, near]) == []
    assert undecided([best]) == []
    # the fit samples' float outputs would be too big to keep: no close call
    big = candidates.KEEP_REFERENCE_BYTES // 4 + 1
    assert undecided([best, noisy], SimpleNamespace(kept=True, bytes=big)) == []
    over = SimpleNamespace(kept=True, bytes=candidates.KEEP_REFERENCE_BYTES + 1)  # the held-out ones already are
    assert undecided([best, noisy], over, SimpleNamespace(n_fit=1, n_holdout=6)) == []
    assert undecided([best, noisy], kept, SimpleNamespace(n_fit=30, n_holdout=0)) == []


def test_a_close_call_is_decided_on_every_sample(calib, monkeypatch):
    monkeypatch.setattr(candidates, "MARGIN", math.inf)  # both measured to the end
    a, b = candidate(0, 0.05), candidate(1, 0.06)
    reference, _ = measure([a, b], calib)
    candidates.measure_all([a, b], reference, calib, SessionFactory(Device.CPU), Stages(enabled=False))
    for c in (a, b):
        everything = X.astype(np.float64)
        inits = c.model.graph.initializers
        errors = []
        for ref, test in ((W, inits["w"].const_value.numpy()), (V, inits["v"].const_value.numpy())):
            y, z = everything @ ref.astype(np.float64), everything @ test.astype(np.float64)
            errors.append(np.sum((y - z) ** 2) / np.sum(y**2))
        assert c.all_error == pytest.approx(float(np.mean(errors)), rel=1e-5)
        assert c.error == pytest.approx(numpy_error(c), rel=1e-5)  # the held-out error stays what it was
    winner, _ = candidates.choose([a, b], None, "holdout", [a, b])
    assert winner is min((a, b), key=lambda c: c.all_error)


def test_a_close_call_can_overturn_the_held_out_ranking(monkeypatch):
    """Feature 0 is large in the fit half, feature 1 in the held-out half: a weight error on feature 0 hardly
    shows on the held-out samples, yet dominates on all of them."""
    monkeypatch.setattr(candidates, "MARGIN", math.inf)
    x = RNG.standard_normal((64, 8)).astype(np.float32)
    x[:32, 0] *= 10
    x[32:, 1] *= 10
    data = open_data(DataOptions(source={"x": x}, batch_size=4, holdout_fraction=0.5), input_specs(two_outputs(W, V)))
    made = []
    for index, row, size in ((0, 0, 0.3), (1, 1, 0.1)):
        w = W.copy()
        w[row] += size
        made.append(Candidate(*NAMES[index], QuantPlan(), {}, model=two_outputs(w, V)))
    a, b = made
    sessions = SessionFactory(Device.CPU)
    reference = candidates.reference(lambda: sessions.create(two_outputs(W, V)), data)
    candidates.measure([a, b], reference, data, sessions, Stages(enabled=False))
    assert a.error < b.error  # held out
    candidates.measure_all([a, b], reference, data, sessions, Stages(enabled=False))
    assert b.all_error < a.all_error
    assert candidates.choose([a, b], None, "holdout")[0] is a
    assert candidates.choose([a, b], None, "holdout", [a, b])[0] is b


def test_a_compress_that_makes_a_close_call_saves_and_reports_the_best_on_every_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(candidates, "CLOSE_SE", 1e9)  # every runner-up is a finalist
    monkeypatch.setattr(candidates, "CLOSE_MIN", -1.0)
    monkeypatch.setattr(candidates, "MARGIN", math.inf)  # and measured to the end
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(app, ["compress", str(FASHION), "--data", str(FASHION_DATA), "-o", str(out)])
    assert result.exit_code == 0, result.output
    comp = json.loads((tmp_path / "q.report.json").read_text())["compensation"]
    printed = " ".join(result.output.split())
    said = printed.split("decided on all 256 samples (")[1].split(")")[0]
    assert f"{comp['chosen']} {comp['close_call'][comp['chosen']]:.3e}" in said
    assert comp["decided_on"] == "holdout"  # what its errors are measured on; the close call's are on every sample
    assert set(comp["close_call"]) == set(comp["candidates"]) and len(comp["close_call"]) > 1
    assert comp["chosen"] == min(comp["close_call"], key=comp["close_call"].get)
    data = open_data(DataOptions(path=FASHION_DATA), input_specs(model_io.load(FASHION)))
    feeds = [f for split in ("fit", "holdout") for f in data.batches(split)]
    fp32 = ort.InferenceSession(str(FASHION), providers=["CPUExecutionProvider"])
    exact = ort.SessionOptions()
    exact.add_session_config_entry("session.disable_quant_qdq", "1")
    saved = ort.InferenceSession(str(out), exact, providers=["CPUExecutionProvider"])
    stats = compare_sessions(fp32, saved, feeds)
    assert comp["close_call"][comp["chosen"]] == pytest.approx(candidates.mean_rel_mse(stats), rel=1e-5)
    shown = " ".join(CliRunner().invoke(app, ["inspect", str(tmp_path / "q.report.json")]).output.split())
    assert f"{comp['chosen']} {comp['close_call'][comp['chosen']]:.3e}" in shown


def test_a_close_call_finalist_that_cannot_win_stops_on_the_fit_samples(calib, monkeypatch):
    """A finalist whose error on every sample can no longer be the least stops being measured on the fit samples:
    the best is still measured to the end and saved, the bound lies between the best's error and the one it would
    have had, and the report and the terminal give it as a bound."""
    good, bad = candidate(1, 0.01), candidate(0, 0.2)
    margin = candidates.MARGIN
    monkeypatch.setattr(candidates, "MARGIN", math.inf)
    reference, _ = measure([good, bad], calib)  # both measured on the held-out samples
    monkeypatch.setattr(candidates, "MARGIN", margin)
    candidates.measure_all([good, bad], reference, calib, SessionFactory(Device.CPU), Stages(enabled=False))
    everything = X.astype(np.float64)

    def all_error(c):
        inits = c.model.graph.initializers
        pairs = ((W, inits["w"].const_value.numpy()), (V, inits["v"].const_value.numpy()))
        return float(np.mean([np.sum((everything @ (a - b)) ** 2) / np.sum((everything @ a) ** 2) for a, b in pairs]))

    assert good.all_error == pytest.approx(all_error(good), rel=1e-5) and good.all_stopped is None
    assert bad.all_outputs is None and bad.all_stopped.by == good.name
    assert bad.all_stopped.of == 8 and bad.all_stopped.batches < 8
    assert good.all_error < bad.all_stopped.bound <= all_error(bad) * (1 + 1e-5)
    assert candidates.choose([good, bad], None, "holdout", [good, bad])[0] is good
    section = records.compensation(good, [good, bad], "holdout")
    assert list(section["close_call"]) == [good.name]
    assert section["close_call_stopped"][bad.name]["rel_mse_at_least"] == bad.all_stopped.bound
    assert f"{bad.name} at least {bad.all_stopped.bound:.3e}" in close_call_errors(section)
