"""Mixed-precision allocation: exact budgets, pins, infeasibility, the swept curve, and brute-force optimality."""

import itertools
import math

import numpy as np
import pytest

from onnxbc.errors import UsageError
from onnxbc.solvers.allocate import Allocation, LayerChoices, Option, allocate, keep_at_8, stored_bytes


def _random_layers(rng: np.random.Generator, n_layers: int, bit_set=(2, 4, 8)) -> list[LayerChoices]:
    """Layers of random size and sensitivity; error ~ sensitivity * 4^-bits (x noise), sizes from stored_bytes."""
    layers = []
    for i in range(n_layers):
        params = int(rng.integers(50, 5000))
        channels = int(rng.integers(1, 64))
        sensitivity = float(rng.lognormal(0.0, 2.0))
        options = tuple(
            Option(b, stored_bytes(params, b, channels), sensitivity * 4.0**-b * float(rng.uniform(0.5, 2.0)))
            for b in bit_set
        )
        layers.append(LayerChoices(f"layer{i}", options, params))
    return layers


def _brute_force(layers, budget: int, cost=lambda layer, o: o.size) -> float:
    best = math.inf
    for combo in itertools.product(*(layer.options for layer in layers)):
        if sum(cost(layer, o) for layer, o in zip(layers, combo)) <= budget:
            best = min(best, sum(o.error for o in combo))
    return best


def _budget_range(layers) -> tuple[int, int]:
    return sum(min(o.size for o in layer.options) for layer in layers), sum(
        max(o.size for o in layer.options) for layer in layers
    )


def test_stored_bytes_by_hand():
    assert stored_bytes(1000, 4, 10) == 500 + 40
    assert stored_bytes(3, 3, 1, scale_bytes=2) == 2 + 2  # 9 bits round up to 2 bytes
    assert stored_bytes(1024, 8, 0) == 1024


def test_close_to_the_exact_optimum_on_small_cases():
    """5 layers x 3 options, 200 random cases: never over budget, error within 5 % of brute force."""
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(200):
        layers = _random_layers(rng, 5)
        lo, hi = _budget_range(layers)
        budget = int(rng.integers(lo, hi + 1))
        result = allocate(layers, max_bytes=budget)
        optimum = _brute_force(layers, budget)
        assert result.cost <= budget and result.size_bytes == result.cost
        assert result.error >= optimum * (1 - 1e-12)
        ratios.append(result.error / optimum)
    assert max(ratios) <= 1.05
    assert np.mean(ratios) <= 1.01


def test_every_curve_point_is_optimal_at_its_own_cost():
    """Lagrangian points solve the knapsack exactly for the budget equal to their cost."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        layers = _random_layers(rng, 5)
        result = allocate(layers, max_bytes=_budget_range(layers)[1])
        for point in result.curve:
            assert point.error == pytest.approx(_brute_force(layers, point.cost), rel=1e-9)


def test_budget_is_never_exceeded_over_many_random_cases():
    rng = np.random.default_rng(2)
    for _ in range(100):
        layers = _random_layers(
            rng, int(rng.integers(1, 40)), bit_set=tuple(sorted(rng.choice([2, 3, 4, 8], 3, False)))
        )
        lo, hi = _budget_range(layers)
        budget = int(rng.integers(lo, hi + 2))
        result = allocate(layers, max_bytes=budget)
        assert result.cost == sum(result.choice[layer.name].size for layer in layers) <= budget
        assert result.error == pytest.approx(sum(result.choice[layer.name].error for layer in layers))
        assert result.error <= result.lagrangian.error * (1 + 1e-12)  # the fix-up never makes it worse


def test_budget_at_the_extremes():
    layers = _random_layers(np.random.default_rng(3), 10)
    lo, hi = _budget_range(layers)
    top = allocate(layers, max_bytes=hi)
    assert top.error == pytest.approx(sum(min(o.error for o in layer.options) for layer in layers))
    bottom = allocate(layers, max_bytes=lo)
    assert bottom.cost == lo
    assert all(top.choice[n].bits == 8 for n in top.choice) and all(bottom.choice[n].bits == 2 for n in bottom.choice)


def test_infeasible_budget_names_the_minimum():
    layers = _random_layers(np.random.default_rng(4), 6)
    lo, _ = _budget_range(layers)
    with pytest.raises(UsageError, match=f"smallest achievable size is {lo} bytes"):
        allocate(layers, max_bytes=lo - 1)


def test_pinned_layers_keep_their_option_and_count_first():
    layers = _random_layers(np.random.default_rng(5), 8)
    lo, hi = _budget_range(layers)
    pins = {"layer0": 2, "layer3": 0}  # 8 bits and 2 bits
    result = allocate(layers, max_bytes=(lo + hi) // 2, pinned=pins)
    assert result.index["layer0"] == 2 and result.index["layer3"] == 0
    assert result.cost <= (lo + hi) // 2
    free = [layer for layer in layers if layer.name not in pins]
    pinned_cost = layers[0].options[2].size + layers[3].options[0].size
    assert result.error == pytest.approx(
        _brute_force(free, (lo + hi) // 2 - pinned_cost) + layers[0].options[2].error + layers[3].options[0].error,
        rel=0.05,
    )
    pinned_min = lo - layers[0].options[0].size + layers[0].options[2].size
    with pytest.raises(UsageError, match=f"smallest achievable size is {pinned_min} bytes"):
        allocate(layers, max_bytes=pinned_min - 1, pinned={"layer0": 2})
    with pytest.raises(ValueError, match="not among"):
        allocate(layers, max_bytes=hi, pinned={"nope": 0})
    with pytest.raises(ValueError, match="out of range"):
        allocate(layers, max_bytes=hi, pinned={"layer1": 3})


def test_curve_is_monotone_and_convex():
    layers = _random_layers(np.random.default_rng(6), 25, bit_set=(2, 3, 4, 8))
    result = allocate(layers, max_bytes=_budget_range(layers)[1])
    costs = [p.cost for p in result.curve]
    errors = [p.error for p in result.curve]
    slopes = [p.slope for p in result.curve]
    assert all(b > a for a, b in zip(costs, costs[1:]))
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert all(b <= a for a, b in zip(slopes, slopes[1:]))  # error decrease per byte falls: convex curve
    assert result.curve[0].cost == _budget_range(layers)[0]


def test_lagrangian_point_is_the_last_curve_point_within_budget():
    layers = _random_layers(np.random.default_rng(7), 12)
    lo, hi = _budget_range(layers)
    budget = lo + (hi - lo) // 3
    result = allocate(layers, max_bytes=budget)
    within = [p for p in result.curve if p.cost <= budget]
    assert result.lagrangian == within[-1]
    next_point = result.curve[result.curve.index(result.lagrangian) + 1]
    assert next_point.cost > budget
    assert result.error <= result.lagrangian.error


def test_avg_bits_budget_counts_logical_bits_over_params():
    """avg_bits 4 fits "everything at 4 bits" even though stored sizes add scales."""
    layers = _random_layers(np.random.default_rng(8), 6)
    result = allocate(layers, avg_bits=4)
    params = sum(layer.params for layer in layers)
    assert result.unit == "bits" and result.budget == 4 * params
    assert result.avg_bits(layers) <= 4
    assert result.error <= sum(layer.options[1].error for layer in layers)  # never worse than uniform 4 bits
    brute = _brute_force(layers, 4 * params, cost=lambda layer, o: o.bits * layer.params)
    assert result.error <= brute * 1.05
    with pytest.raises(UsageError, match="smallest achievable is 2 bits"):
        allocate(layers, avg_bits=1.5)


def test_exactly_one_budget():
    layers = _random_layers(np.random.default_rng(9), 2)
    with pytest.raises(ValueError):
        allocate(layers)
    with pytest.raises(ValueError):
        allocate(layers, max_bytes=10**9, avg_bits=4)


def test_ties_and_dominated_options():
    """A costlier option with no lower error is never on the curve; the fix-up can still use free improvements."""
    layer = LayerChoices("a", (Option(4, 100, 1.0), Option(8, 200, 1.0), Option(3, 80, 2.0), Option(2, 60, 5.0)))
    result: Allocation = allocate([layer], max_bytes=1000)
    assert result.choice["a"] == Option(4, 100, 1.0)
    assert [p.cost for p in result.curve] == [60, 80, 100]


def _two_widths(name: str, size: int, error: float, error_at_8: float) -> LayerChoices:
    return LayerChoices(name, (Option(4, size, error), Option(8, 2 * size, error_at_8)))


def test_keep_at_8_by_hand():
    """Model at int4: 1000 bytes, error 1.0, so 1e-3 per byte. ``dw`` saves 0.49 for 10 bytes (49x that
    rate), ``head`` 0.099 for 10 (9.9x: below 10x), ``big`` 0.4 for 600 bytes (0.67x)."""
    layers = [_two_widths("dw", 10, 0.5, 0.01), _two_widths("head", 10, 0.1, 0.001), _two_widths("big", 980, 0.4, 0.0)]
    low, high = dict.fromkeys(["dw", "head", "big"], 0), dict.fromkeys(["dw", "head", "big"], 1)
    kept = keep_at_8(layers, low, high, max_extra=0.05, min_ratio=10)
    assert kept == {"dw": pytest.approx(49.0)}
    assert keep_at_8(layers, low, high, max_extra=0.05, min_ratio=9) == pytest.approx({"dw": 49.0, "head": 9.9})
    assert keep_at_8(layers, low, high, max_extra=0.005, min_ratio=9) == {}  # 10 bytes > 0.5 % of 1000


def test_keep_at_8_passes_over_what_does_not_fit_and_keeps_uniform_models():
    # 1110 bytes, error 52.5: "a" is the densest (10.6x) but adds 100 bytes, over 5 %; "b" (4.2x), "c" (2.1x) fit
    sizes = {"a": (100, 50.0), "b": (5, 1.0), "c": (5, 0.5), "f": (1000, 1.0)}
    layers = [_two_widths(n, size, error, 0.0) for n, (size, error) in sizes.items()]
    kept = keep_at_8(layers, dict.fromkeys(sizes, 0), dict.fromkeys(sizes, 1), max_extra=0.05, min_ratio=2)
    assert kept == pytest.approx({"b": 0.2 / (52.5 / 1110), "c": 0.1 / (52.5 / 1110)})
    # every layer costs its share of the error: nothing is worth 10x its bytes
    even = [_two_widths(n, s, s * 1e-3, 0.0) for n, s in (("x", 10), ("y", 200), ("z", 4000))]
    assert keep_at_8(even, dict.fromkeys("xyz", 0), dict.fromkeys("xyz", 1), 0.05, 10) == {}
