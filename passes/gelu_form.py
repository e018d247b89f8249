"""Write each exact (erf) GELU in the op order ONNX Runtime's GeluFusion turns into one ``Gelu`` kernel.

ONNX Runtime 1.31 fuses ``x / sqrt(2) -> Erf -> + 1`` followed by ``(x * 0.5) * a`` or ``(x * a) * 0.5`` (either
input order), but not the other ways exporters write the same function: torch's exporter writes
``x * (0.5 * a)``, some write ``x * 0.70710677`` for the division. Unfused, the five element-wise ops cost about
8 % of a small GPT's time on one CPU core (the quantized model's and the float model's alike). And smoothing
(``onnxbc.smoothing.fold_divisions``) folds its per-channel division into the ``0.5``, which no fusion accepts.

Rewrite, for ``x -> Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add(., 1) = a`` and a constant ``k`` (scalar
or any shape that broadcasts; ``0.5``, or ``0.5 / s`` after smoothing) multiplied with ``x`` and ``a`` in any
order and grouping: ``Mul(Mul(x, a), 0.5)``, then ``Mul(., 2 k)`` unless ``k`` is 0.5 everywhere, with the
division written as ``Div(x, sqrt 2)``. Multiplying by 0.5 and by 2 is exact in binary floating point, so for
``k = 0.5`` the result is bit for bit the same; a per-channel ``k`` rounds the product once in another order
(within one unit in the last place). A GELU already in a fused form is left as it is, and so is anything whose
intermediate values have other readers or are graph outputs.

The result's ``sites`` names each rewritten GELU by its Erf node.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import onnx_ir as ir

from onnxbc.passes.graph_utils import Namer, const, constant_tensor, drop_if_unused
from onnxbc.passes.results import SitesResult

logger = logging.getLogger(__name__)

_SQRT2 = math.sqrt(2.0)


@dataclasses.dataclass(frozen=True)
class _Gelu:
    x: ir.Value
    scaled: ir.Node  # Div(x, sqrt 2) or Mul(x, 1/sqrt 2)
    erf: ir.Node
    plus_one: ir.Node  # Add(erf, 1)
    inner: ir.Node  # the first Mul of the product (removed by the rewrite)
    final: ir.Node  # the Mul computing the GELU (kept: its output keeps its readers)
    k: np.ndarray
    fused: bool  # already in a form ONNX Runtime fuses


class GeluFormPass(ir.passes.InPlacePass):
    """Rewrite erf GELUs into the op order ONNX Runtime fuses (rules in the module docstring)."""

    def call(self, model: ir.Model) -> SitesResult:
        namer = Namer(model)
        sites: dict[str, str] = {}
        for erf in [n for n in model.graph if n.op_type == "Erf" and n.domain in ("", "ai.onnx")]:
            gelu = _match(erf)
            if gelu is None or gelu.fused:
                continue
            _rewrite(gelu, namer)
            scaled = "" if np.all(gelu.k == 0.5) else ", then its per-channel scale"
            sites[erf.name] = f"written as (x * (1 + erf(x / sqrt 2))) * 0.5{scaled} for ONNX Runtime's Gelu fusion"
        logger.debug("rewrote %d GELUs into ONNX Runtime's fused form", len(sites))
        return SitesResult(model, modified=bool(sites), sites=sites)


def _only_reader(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The other input of a two-input node that reads ``value`` once."""
    inputs = list(node.inputs)
    if len(inputs) != 2 or inputs.count(value) != 1:
        return None
    return inputs[1 - inputs.index(value)]


def _scalar(value: ir.Value | None, target: float, rtol: float = 1e-6) -> bool:
    tensor = constant_tensor(value)
    if tensor is None or tensor.size != 1:
        return False
    return bool(np.isclose(float(tensor.numpy().reshape(())), target, rtol=rtol, atol=0.0))


def _mul(node: ir.Node | None) -> bool:
    return node is not None and node.op_type == "Mul" and node.domain in ("", "ai.onnx")


def _match(erf: ir.Node) -> _Gelu | None:
    scaled = erf.inputs[0].producer() if erf.inputs and erf.inputs[0] is not None else None
    if scaled is None or scaled.domain not in ("", "ai.onnx") or _only_reader(erf.inputs[0]) is not erf:
        return None
    if scaled.op_type == "Div" and _scalar(scaled.inputs[1], _SQRT2):
        x = scaled.inputs[0]
    elif scaled.op_type == "Mul":
        x = next((v for v in scaled.inputs if not _scalar(v, 1 / _SQRT2)), None)
        if x is None or not _scalar(_other(scaled, x), 1 / _SQRT2):
            return None
    else:
        return None
    plus_one = _only_reader(erf.outputs[0])
    if plus_one is None or plus_one.op_type != "Add" or not _scalar(_other(plus_one, erf.outputs[0]), 1.0, 0.0):
        return None
    a = plus_one.outputs[0]
    first = _only_reader(a)
    if not _mul(first) or _other(first, a) is None:
        return None
    o = _other(first, a)
    k = constant_tensor(o)
    if k is not None or o is x:  # (k * a) * x or (x * a) * k
        final = _only_reader(first.outputs[0])
        if not _mul(final):
            return None
        rest = _other(final, first.outputs[0])
        if k is None:
            k = constant_tensor(rest)
        elif rest is not x:
            return None
        inner, fusable_order = first, o is x
    else:  # (x * k) * a
        inner = o.producer() if o is not None else None
        if not _mul(inner) or _only_reader(o) is not first or _other(inner, x) is None:
            return None
        k = constant_tensor(_other(inner, x))
        final, fusable_order = first, True
    if k is None:
        return None
    k_array = k.numpy()
    fused = scaled.op_type == "Div" and k_array.size == 1 and fusable_order and bool(np.all(k_array == 0.5))
    return _Gelu(x, scaled, erf, plus_one, inner, final, k_array, fused)


def _rewrite(gelu: _Gelu, namer: Namer) -> None:
    graph = gelu.final.graph
    dtype = gelu.k.dtype
    if gelu.scaled.op_type != "Div":
        root2 = const(namer, f"{gelu.erf.name}_sqrt2", np.array(_SQRT2, dtype))
        graph.register_initializer(root2)
        div = ir.node("Div", [gelu.x, root2], name=namer(f"{gelu.erf.name}_Div"))
        div.outputs[0].name = namer(f"{gelu.erf.name}_input")
        div.outputs[0].dtype, div.outputs[0].shape = gelu.x.dtype, gelu.x.shape
        graph.insert_before(gelu.erf, [div])
        gelu.erf.replace_input_with(0, div.outputs[0])
        scaled_inputs = list(gelu.scaled.inputs)
        graph.remove(gelu.scaled, safe=True)
        for value in scaled_inputs:
            drop_if_unused(value)
    name = gelu.final.name
    product = ir.node("Mul", [gelu.x, gelu.plus_one.outputs[0]], name=namer(f"{name}_x_times"))
    product.outputs[0].name = namer(f"{name}_x_times")
    half = const(namer, f"{name}_half", np.array(0.5, dtype))
    graph.register_initializer(half)
    new = [product]
    last_inputs = [product.outputs[0], half]
    if not np.all(gelu.k == 0.5):
        halved = ir.node("Mul", last_inputs, name=namer(f"{name}_half"))
        halved.outputs[0].name = namer(f"{name}_gelu")
        scale = const(namer, f"{name}_scale", (2 * gelu.k).astype(dtype))
        graph.register_initializer(scale)
        new.append(halved)
        last_inputs = [halved.outputs[0], scale]
    for out in (n.outputs[0] for n in new):
        out.dtype = gelu.final.outputs[0].dtype
    graph.insert_before(gelu.final, new)
    replaced = [*gelu.inner.inputs, *gelu.final.inputs]
    for i, value in enumerate(last_inputs):
        gelu.final.replace_input_with(i, value)
    graph.remove(gelu.inner, safe=True)
    for value in replaced:
        drop_if_unused(value)
