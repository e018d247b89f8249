"""Mixed-precision allocation under a size budget (numpy; AutoQNN's QPL without training).

Each layer ``l`` has candidate options ``k`` (bits, scheme) with an integer cost ``c_lk`` (stored bytes, or
logical bits for an ``avg_bits`` budget) and a priced error ``e_lk`` (e.g. the output error after bias
compensation, ``tr(dW^T Cov(x) dW)``). Choose one option per layer:

    minimize  sum_l e_(l,k_l)   subject to  sum_l c_(l,k_l) <= B.

1. **Lagrangian sweep.** For a multiplier ``lam >= 0`` each layer independently takes
   ``argmin_k e_lk + lam c_lk``; the solutions for all ``lam`` are the points of each layer's lower convex
   hull of ``(cost, error)``. Instead of bisecting on ``lam``, the sweep visits every breakpoint exactly:
   starting with every layer at its cheapest option (``lam = inf``), it applies the hull segments of all
   layers in order of decreasing error decrease per unit cost (``lam``). The visited points form the convex
   error-vs-size curve (``Allocation.curve``); the last point within the budget is the Lagrangian solution
   (what bisection on ``lam`` converges to).
2. **Greedy fix-up.** The budget left over (the next hull segment did not fit) is spent on single-layer
   changes to any option, hull or not: repeatedly the change with the largest error decrease per unit of
   extra cost that still fits (changes that lower the error without costing more go first), until none is left.
3. **Knapsack check.** Lagrangian points are exact knapsack optima at their own cost, but between them (few
   layers, one dominant layer) sweep + greedy can be off by 2x (seen in the brute-force tests). So a dynamic
   program over costs rounded *up* to ``budget / G`` units runs too (``G`` = the budget itself when
   ``n_free * budget <= 2^22`` cells, which makes it exact, else ``2^22 / n_free``; rounding up keeps it
   feasible and loses at most ``n_free`` units of budget), followed by the same greedy fix-up; the better of
   the two is kept (``Allocation.method`` says which).

Costs are integers, so "never over budget" is checked exactly. Layers pinned by a policy keep their option
and their cost is taken from the budget first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from onnxbc.errors import UsageError

DP_CELLS = 1 << 22  # knapsack table size (layers x budget units), one byte each for the back-pointers


def stored_bytes(params: int, bits: int, n_scales: int, scale_bytes: int = 4) -> int:
    """Bytes a quantized weight takes: ``ceil(bits * params / 8) + n_scales * scale_bytes``.

    ``bits`` is what the file holds per weight: the logical bits when packed (int4 holds 4 bits; int2 from
    opset 25), the container width otherwise (3-bit codes in an int4 container take 4).
    """
    return -(-bits * params // 8) + n_scales * scale_bytes


@dataclasses.dataclass(frozen=True)
class Option:
    """One way to quantize a layer.

    Attributes:
        bits: logical bits per weight (what an ``avg_bits`` budget counts).
        size: stored bytes, scales included (``stored_bytes``).
        error: the priced error of this option (any additive measure: lower is better).
        scheme: the quantizing scheme name (``schemes.Scheme`` value), for the report.
    """

    bits: int
    size: int
    error: float
    scheme: str = "uniform"


@dataclasses.dataclass(frozen=True)
class LayerChoices:
    """A layer's candidate options; ``params`` (quantizable weights) is needed for ``avg_bits`` budgets."""

    name: str
    options: tuple[Option, ...]
    params: int = 0

    def __post_init__(self) -> None:
        if not self.options:
            raise ValueError(f"layer {self.name!r} has no candidate option")


@dataclasses.dataclass(frozen=True)
class CurvePoint:
    """A point of the swept error-vs-cost curve; ``slope`` is the error decrease per unit cost (``lam``)
    of the step that reached it (``inf`` for the starting, cheapest point)."""

    cost: int
    error: float
    slope: float


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The chosen option per layer.

    Attributes:
        choice: layer name -> chosen option.
        index: layer name -> index of the chosen option in the layer's ``options``.
        cost: total cost in ``unit`` (``<= budget``).
        budget: the budget in ``unit``.
        unit: ``"bytes"`` (stored size) or ``"bits"`` (logical weight bits, for ``avg_bits``).
        error: summed error of the choice.
        size_bytes: stored bytes of the choice, whatever the unit.
        curve: the Lagrangian sweep's points, cheapest first (cost increasing, error decreasing).
        lagrangian: the last curve point within the budget (before the greedy fix-up).
        method: ``"lagrangian+greedy"`` or ``"knapsack+greedy"``, whichever gave the lower error.
    """

    choice: dict[str, Option]
    index: dict[str, int]
    cost: int
    budget: int
    unit: str
    error: float
    size_bytes: int
    curve: tuple[CurvePoint, ...]
    lagrangian: CurvePoint
    method: str

    def avg_bits(self, layers: Sequence[LayerChoices]) -> float:
        """Logical bits per quantizable parameter of the choice."""
        params = sum(layer.params for layer in layers)
        return sum(self.choice[layer.name].bits * layer.params for layer in layers) / params if params else 0.0


def allocate(
    layers: Sequence[LayerChoices],
    max_bytes: int | None = None,
    avg_bits: float | None = None,
    pinned: Mapping[str, int] | None = None,
) -> Allocation:
    """Choose one option per layer, minimizing summed error with total cost within the budget.

    Give exactly one budget: ``max_bytes`` (stored bytes, scales included) or ``avg_bits`` (logical bits
    per quantizable parameter: cost ``bits * params`` against ``floor(avg_bits * sum(params))``).
    ``pinned`` maps layer names to the option index a policy fixed. Raises ``UsageError`` naming the
    smallest achievable size when even the cheapest options do not fit.
    """
    if (max_bytes is None) == (avg_bits is None):
        raise ValueError("give exactly one of max_bytes and avg_bits")
    pinned = dict(pinned or {})
    _check_pins(layers, pinned)
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError("layer names must be unique")
    if avg_bits is not None:
        unit = "bits"
        costs = [[o.bits * layer.params for o in layer.options] for layer in layers]
        budget = math.floor(avg_bits * sum(layer.params for layer in layers))
    else:
        unit, costs, budget = "bytes", [[o.size for o in layer.options] for layer in layers], int(max_bytes)
    errors = [[o.error for o in layer.options] for layer in layers]
    free = [i for i, layer in enumerate(layers) if layer.name not in pinned]

    start = [pinned.get(layer.name, _cheapest(costs[i], errors[i])) for i, layer in enumerate(layers)]
    minimum = sum(costs[i][k] for i, k in enumerate(start))
    if minimum > budget:
        raise UsageError(_infeasible_message(budget, minimum, unit, layers, avg_bits))

    curve, swept = _sweep(start, costs, errors, free, budget)
    lagrangian = curve[_last_within(curve, budget)]
    candidates = {"lagrangian+greedy": _greedy_fill(swept, costs, errors, free, budget)}
    packed = _knapsack(start, costs, errors, free, budget)
    if packed is not None:
        candidates["knapsack+greedy"] = _greedy_fill(packed, costs, errors, free, budget)
    method, chosen = min(candidates.items(), key=lambda kv: math.fsum(errors[i][k] for i, k in enumerate(kv[1])))
    cost = sum(costs[i][k] for i, k in enumerate(chosen))
    assert cost <= budget
    return Allocation(
        choice={layer.name: layer.options[k] for layer, k in zip(layers, chosen)},
        index={layer.name: k for layer, k in zip(layers, chosen)},
        cost=cost,
        budget=budget,
        unit=unit,
        error=math.fsum(errors[i][k] for i, k in enumerate(chosen)),
        size_bytes=sum(layer.options[k].size for layer, k in zip(layers, chosen)),
        curve=tuple(curve),
        lagrangian=lagrangian,
        method=method,
    )


def _check_pins(layers: Sequence[LayerChoices], pinned: Mapping[str, int]) -> None:
    by_name = {layer.name: layer for layer in layers}
    for name, k in pinned.items():
        if name not in by_name:
            raise ValueError(f"pinned layer {name!r} is not among the layers to allocate")
        if not 0 <= k < len(by_name[name].options):
            raise ValueError(f"pinned option {k} of layer {name!r} is out of range")


def _infeasible_message(
    budget: int, minimum: int, unit: str, layers: Sequence[LayerChoices], avg_bits: float | None
) -> str:
    if unit == "bits":
        params = sum(layer.params for layer in layers)
        return (
            f"avg_bits {avg_bits:g} is infeasible: the smallest achievable is {minimum / params:.4g} bits per weight "
            f"(every free layer at its fewest bits, pinned layers as fixed); raise avg_bits or unpin layers"
        )
    return (
        f"size budget {budget} bytes is infeasible: the smallest achievable size is {minimum} bytes "
        f"(every free layer at its smallest option, pinned layers as fixed); raise the budget or unpin layers"
    )


def _cheapest(costs: Sequence[int], errors: Sequence[float]) -> int:
    return min(range(len(costs)), key=lambda k: (costs[k], errors[k]))


def _hull(costs: Sequence[int], errors: Sequence[float]) -> list[int]:
    """Option indices on the lower convex hull of ``(cost, error)``, cheapest first, error strictly falling."""
    order = sorted(range(len(costs)), key=lambda k: (costs[k], errors[k]))
    frontier: list[int] = []
    for k in order:  # Pareto front: strictly lower error than everything cheaper
        if not frontier or errors[k] < errors[frontier[-1]] and costs[k] > costs[frontier[-1]]:
            frontier.append(k)
    hull: list[int] = []
    for k in frontier:  # drop points above the segment joining their neighbours
        while len(hull) >= 2 and _slope(hull[-2], hull[-1], costs, errors) <= _slope(hull[-1], k, costs, errors):
            hull.pop()
        hull.append(k)
    return hull


def _slope(a: int, b: int, costs: Sequence[int], errors: Sequence[float]) -> float:
    """Error decrease per unit of extra cost from option ``a`` to option ``b``."""
    return (errors[a] - errors[b]) / (costs[b] - costs[a])


def _sweep(
    start: list[int], costs: list[list[int]], errors: list[list[float]], free: list[int], budget: int
) -> tuple[list[CurvePoint], list[int]]:
    """All breakpoints of the Lagrangian solution path, and the choice at the last one within ``budget``."""
    segments = []
    for i in free:
        hull = _hull(costs[i], errors[i])
        for a, b in zip(hull, hull[1:]):
            segments.append((_slope(a, b, costs[i], errors[i]), i, b))
    segments.sort(key=lambda s: -s[0])  # stable: a layer's own segments stay in hull order
    current = list(start)
    cost = sum(costs[i][k] for i, k in enumerate(current))
    error = math.fsum(errors[i][k] for i, k in enumerate(current))
    curve = [CurvePoint(cost, error, math.inf)]
    within, over = list(current), False
    for slope, i, b in segments:
        cost += costs[i][b] - costs[i][current[i]]
        error += errors[i][b] - errors[i][current[i]]
        current[i] = b
        curve.append(CurvePoint(cost, error, slope))
        over = over or cost > budget
        if not over:
            within = list(current)
    return curve, within


def _last_within(curve: Sequence[CurvePoint], budget: int) -> int:
    """Index of the last point of the (cost-increasing) curve within the budget, before the first one over."""
    index = 0
    for j, point in enumerate(curve):
        if point.cost > budget:
            break
        index = j
    return index


def _greedy_fill(
    chosen: list[int], costs: list[list[int]], errors: list[list[float]], free: list[int], budget: int
) -> list[int]:
    """Spend the leftover budget on single-layer changes, best error decrease per extra unit of cost first."""
    chosen = list(chosen)
    total = sum(costs[i][k] for i, k in enumerate(chosen))
    while True:
        best = None  # (free change?, rate, i, k)
        for i in free:
            here_cost, here_err = costs[i][chosen[i]], errors[i][chosen[i]]
            for k in range(len(costs[i])):
                extra, gain = costs[i][k] - here_cost, here_err - errors[i][k]
                if gain <= 0 or total + extra > budget:
                    continue
                key = (True, gain, i, k) if extra <= 0 else (False, gain / extra, i, k)
                if best is None or key[:2] > best[:2]:
                    best = key
        if best is None:
            return chosen
        _, _, i, k = best
        total += costs[i][k] - costs[i][chosen[i]]
        chosen[i] = k


def _knapsack(
    start: list[int], costs: list[list[int]], errors: list[list[float]], free: list[int], budget: int
) -> list[int] | None:
    """Exact multiple-choice knapsack over the free layers with costs rounded up to ``budget / G`` units.

    ``best[g]`` is the least error of the layers so far with rounded cost at most ``g``; each layer maps it to
    ``min_k best[g - c_k] + e_k``. Back-pointers (one byte per layer and unit) recover the choice. Returns
    ``None`` when there is nothing to decide or the result would not fit in exact integer costs.
    """
    room = budget - sum(costs[i][k] for i, k in enumerate(start) if i not in set(free))
    if not free or room <= 0 or max(len(costs[i]) for i in free) > 127:
        return None
    grid = min(room, max(DP_CELLS // len(free), 1024))
    unit = room / grid  # 1 when the budget fits the table: exact
    best = np.zeros(grid + 1)
    back = np.empty((len(free), grid + 1), dtype=np.int8)
    for row, i in enumerate(free):
        scaled = [math.ceil(c / unit) for c in costs[i]]
        options = np.full((len(scaled), grid + 1), np.inf)
        for k, (c, e) in enumerate(zip(scaled, errors[i])):
            if c <= grid:
                options[k, c:] = best[: grid + 1 - c] + e
        back[row] = options.argmin(axis=0)
        best = options.min(axis=0)
    if not np.isfinite(best[grid]):
        return None
    chosen, g = list(start), grid
    for row in range(len(free) - 1, -1, -1):
        i = free[row]
        k = int(back[row, g])
        chosen[i] = k
        g -= math.ceil(costs[i][k] / unit)
    return chosen if sum(costs[i][k] for i, k in enumerate(chosen)) <= budget else None


def upgrade_ratios(layers: Sequence[LayerChoices], low: Mapping[str, int], high: Mapping[str, int]) -> dict[str, float]:
    """Per layer whose ``high`` option costs more and errs less than its ``low`` one: the error it saves per unit
    of extra cost, over the whole model's error per unit of cost at ``low`` (``keep_at_8``)."""
    total_cost = sum(layer.options[low[layer.name]].size for layer in layers)
    total_error = math.fsum(layer.options[low[layer.name]].error for layer in layers)
    if total_cost <= 0 or total_error <= 0:
        return {}
    ratios = {}
    for layer in layers:
        a, b = layer.options[low[layer.name]], layer.options[high[layer.name]]
        if b.size > a.size and a.error > b.error:
            ratios[layer.name] = (a.error - b.error) / (b.size - a.size) / (total_error / total_cost)
    return ratios


def keep_at_8(
    layers: Sequence[LayerChoices],
    low: Mapping[str, int],
    high: Mapping[str, int],
    max_extra: float,
    min_ratio: float,
) -> dict[str, float]:
    """The layers worth moving from their ``low`` option to their ``high`` one (8 bits), with their ratios.

    With ``e`` the error and ``c`` the cost of an option, layer ``l`` saves ``e_low - e_high`` for
    ``c_high - c_low`` more; its ratio is that error per unit of cost over the whole model's at ``low``,
    ``sum e_low / sum c_low``. Layers move in decreasing ratio while it is at least ``min_ratio``, each one
    whose extra cost keeps the total extra within ``max_extra`` times ``sum c_low`` (a larger one is passed
    over). A model whose layers all cost about their share of the error keeps every layer at ``low``.
    """
    total_cost = sum(layer.options[low[layer.name]].size for layer in layers)
    ratios = upgrade_ratios(layers, low, high)
    kept, extra = {}, 0
    by_name = {layer.name: layer for layer in layers}
    for name in sorted(ratios, key=ratios.get, reverse=True):
        cost = by_name[name].options[high[name]].size - by_name[name].options[low[name]].size
        if ratios[name] < min_ratio:
            break
        if extra + cost > max_extra * total_cost:
            continue
        kept[name] = ratios[name]
        extra += cost
    return kept
