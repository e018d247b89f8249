"""Which quantized layers ONNX Runtime really runs as integer kernels: the fusion audit (rule ``ort.fusion``).

A QDQ model runs faster in ONNX Runtime only where its QDQ transformers turn ``DQ -> op -> Q`` (or ``DQ -> MatMul``)
into an integer kernel: QLinearConv, QGemm, QLinearMatMul, MatMulIntegerToFloat, MatMulNBits, QLinearAdd, ...
Where they do not, ONNX Runtime dequantizes the weights on every run and runs the float op: slower than the
float model, though the result is the same. The audit:

1. finds the quantized layers: nodes of an op that ONNX Runtime's CPU provider has a QDQ fusion for
   (``AUDITED_OPS``) with an input read from a DequantizeLinear, directly or through Transpose, Reshape and the
   like (``targets.CHAIN_OPS``);
2. renames those layers, in a copy of the model, to unique tokens. ONNX Runtime keeps the name of a node it
   leaves alone and names a node it creates after the node it replaces: the same name (QLinearConv, QGemm,
   QLinearMatMul, MatMulIntegerToFloat, MatMulNBits, QLinearAdd, FusedConv), ``NAME/MatMulAddFusion``,
   ``fused NAME`` (FusedGemm) or ``NAME_token_4``. A token survives all of these, and keeps apart layers
   without a name or with names that are prefixes of each other;
3. builds ONNX Runtime's CPU session at ORT_ENABLE_EXTENDED with ``optimized_model_filepath`` in a temporary
   folder (removed after, also on error), its weights written to an external file so that a model over 2 GB
   is written too, and reads the optimized graph back without its weights;
4. judges each layer by the nodes carrying its token (else by the node that computes its output): an integer
   kernel is *fused*; a float op is *float*, with what the optimized graph shows is missing around it (an
   input that is not dequantized, no QuantizeLinear on the output, an activation merged into it); no node is
   *unknown*.

Why EXTENDED and not ALL, the level of the default session: every QDQ fusion is a level-2 (EXTENDED)
transformer (onnxruntime/core/optimizer/graph_transformer_utils.cc). Level 3 adds layout transforms only, NCHWc
for float Conv and NHWC for QLinearConv, plus a float Conv+Add+activation fusion; they re-create nodes under
new names (a float Conv becomes ``com.microsoft.nchwc.Conv`` named after its *output*, so a token is lost)
and ONNX Runtime warns that the graph saved at that level is specific to the machine. Whether a layer runs as
an integer kernel is decided at level 2, and the tests check that ALL runs as many integer kernels.

Limits: the CPU provider's fusions (the CUDA provider handles QDQ its own way); layers inside model-local
functions are not audited (ONNX Runtime inlines them under new names); the reasons are what the optimized
graph shows, and a layer refused for its types or attributes (16-bit codes, a per-channel Gemm weight without
a zero point, ConvTranspose, which this CPU provider has no integer kernel for) is reported without one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx_ir as ir
import onnxruntime as ort

from onnxbc import model_io
from onnxbc.calibration import session
from onnxbc.errors import OnnxbcError, one_line
from onnxbc.passes.prepare import QUANTIZED_OPS
from onnxbc.targets import CHAIN_OPS

Q, DQ = "QuantizeLinear", "DequantizeLinear"
# Ops ONNX Runtime's CPU QDQ transformers turn into an integer kernel (checked with onnxruntime 1.31).
AUDITED_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "Add",
        "Mul",
        "AveragePool",
        "GlobalAveragePool",
        "Concat",
        "Sigmoid",
        "LeakyRelu",
        "Softmax",
    }
)
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# A MatMul needs no Q on its output (MatMulIntegerToFloat, MatMulNBits); the others do.
_OUTPUT_Q_OPTIONAL = frozenset({"MatMul"})
INTEGER_KERNELS = QUANTIZED_OPS - {Q, DQ, "DynamicQuantizeLinear"}
_ONNX_DOMAINS = ("", "ai.onnx")
_DQ_DOMAINS = ("", "ai.onnx", "com.microsoft")  # ONNX Runtime's contrib DequantizeLinear too
LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


class Verdict(str, enum.Enum):
    FUSED = "fused"  # ONNX Runtime runs an integer kernel
    FLOAT = "float"  # it runs the float op on dequantized inputs
    UNKNOWN = "unknown"  # no node of the optimized graph is named after it or computes its output


@dataclasses.dataclass(frozen=True)
class LayerFusion:
    """What ONNX Runtime runs for one quantized layer of the model."""

    name: str  # the layer's node name in the model ('' when it has none)
    op: str
    output: str  # the layer's first output, which names an unnamed layer
    dequantized: tuple[str, ...]  # its inputs that come from a DequantizeLinear
    verdict: Verdict
    ort_op: str | None = None  # the op ONNX Runtime runs: 'QLinearConv', 'FusedConv', ...
    ort_node: str | None = None  # that node's name in the optimized graph
    missing: tuple[str, ...] = ()  # FLOAT: what the optimized graph shows is missing for an integer kernel

    @property
    def label(self) -> str:
        return f"{self.op} '{self.name}'" if self.name else f"{self.op} (unnamed, output '{self.output}')"

    def message(self) -> str:
        """One line for a report."""
        if self.verdict is Verdict.FUSED:
            return f"{self.label} runs as {self.ort_op}{self._ort_name()}"
        if self.verdict is Verdict.UNKNOWN:
            return (
                f"{self.label} is not in ONNX Runtime's optimized graph under its name, nor is its output: "
                "cannot tell whether it runs as an integer kernel"
            )
        inputs = ", ".join(f"'{name}'" for name in self.dequantized)
        why = "; ".join(self.missing) or "the graph shows no reason (ONNX Runtime refused its types or attributes)"
        return f"{self.label} runs as float {self.ort_op}{self._ort_name()} on dequantized {inputs}: {why}"

    def _ort_name(self) -> str:
        return f" '{self.ort_node}'" if self.ort_node not in (None, self.name) else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "status": self.verdict.value,
            "ort_op": self.ort_op,
            "ort_node": self.ort_node,
            "dequantized_inputs": list(self.dequantized),
            "missing": list(self.missing),
        }


@dataclasses.dataclass(frozen=True)
class FusionAudit:
    """The verdict for every quantized layer, in graph order."""

    layers: tuple[LayerFusion, ...]
    onnxruntime: str = ort.__version__

    @property
    def unfused(self) -> list[LayerFusion]:
        """The layers ONNX Runtime does not run as integer kernels (or may not: UNKNOWN)."""
        return [layer for layer in self.layers if layer.verdict is not Verdict.FUSED]

    def count(self, verdict: Verdict) -> int:
        return sum(layer.verdict is verdict for layer in self.layers)

    def by_layer(self) -> dict[str, dict[str, Any]]:
        """Each layer's entry, keyed by its node name (its label when it has none): for per-layer reports."""
        return {layer.name or layer.label: layer.as_dict() for layer in self.layers}

    def as_dict(self) -> dict[str, Any]:
        return {
            "onnxruntime": self.onnxruntime,
            "provider": "CPUExecutionProvider",
            "optimization_level": LEVEL.name,
            "summary": {v.value: self.count(v) for v in Verdict},
            "layers": [layer.as_dict() for layer in self.layers],
        }


def quantized_layers(model: ir.Model) -> list[ir.Node]:
    """The nodes the audit judges: a Conv/ConvTranspose/Gemm/MatMul with an input from a DequantizeLinear, or
    another op of ``AUDITED_OPS`` whose every non-constant input comes from one (an Add of a dequantized and a
    float tensor was never meant to be an integer kernel)."""
    return [n for n in _nodes(model) if n.op_type in AUDITED_OPS and n.domain in _ONNX_DOMAINS and _quantized(n)]


def _quantized(node: ir.Node) -> bool:
    dequantized = _dq_inputs(node)
    if node.op_type in _WEIGHTED:
        return bool(dequantized)
    activations = [v for v in node.inputs if v is not None and not _constant(v)]
    return bool(dequantized) and len(dequantized) == len(activations)


def audit(model: ir.Model, apart_up_to: int = 0) -> FusionAudit:
    """Judge every quantized layer of ``model`` (left unchanged) by ONNX Runtime's optimized CPU graph; its weights
    handed over from memory when they take ``apart_up_to`` bytes at most (``SessionFactory.apart_up_to``).

    Raises OnnxbcError (one line) when ONNX Runtime cannot build the session."""
    layers = quantized_layers(model)
    if not layers:
        return FusionAudit(())
    tokens = _Tokens(model, layers)
    copy = model.clone()
    index = {node: i for i, node in enumerate(layers)}
    for original, node in zip(_nodes(model), _nodes(copy)):
        if original in index:
            node.name = tokens.name(index[original])
    try:
        with _optimized(copy, apart_up_to) as optimized:
            verdicts = _judge(layers, optimized, tokens)
    except OnnxbcError as e:
        raise OnnxbcError(tokens.restore(str(e))) from e
    return FusionAudit(tuple(verdicts))


def _nodes(model: ir.Model) -> Iterator[ir.Node]:
    """The main graph's nodes and those of its subgraphs (If, Loop, Scan bodies), in order."""
    return ir.traversal.RecursiveGraphIterator(model.graph)


def _dq_inputs(node: ir.Node) -> list[ir.Value]:
    return [v for v in node.inputs if _dequantized(v)]


def _dequantized(value: ir.Value | None) -> bool:
    """Produced by a DequantizeLinear, directly or through Transpose/Reshape/... of its output."""
    while value is not None and (producer := value.producer()) is not None:
        if producer.op_type == DQ and producer.domain in _DQ_DOMAINS:
            return True
        if producer.op_type not in CHAIN_OPS or not producer.inputs:
            return False
        value = producer.inputs[0]
    return False


class _Tokens:
    """Node names for the layers that no node of the model contains, and the way back from ONNX Runtime's names."""

    def __init__(self, model: ir.Model, layers: list[ir.Node]) -> None:
        prefix, names = "onnxbc-layer-", [n.name or "" for n in _nodes(model)]
        while any(prefix in name for name in names):
            prefix = "~" + prefix
        self.layers = layers
        self.pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        self.prefix = prefix

    def name(self, i: int) -> str:
        return f"{self.prefix}{i}."

    def find(self, name: str) -> list[int]:
        return [int(i) for i in self.pattern.findall(name)]

    def restore(self, text: str) -> str:
        """``text`` with every token back to its layer's name."""
        return self.pattern.sub(lambda m: self._name(self.layers[int(m[1])]), text)

    @staticmethod
    def _name(layer: ir.Node) -> str:
        return layer.name or f"unnamed {layer.op_type}"


@contextlib.contextmanager
def _optimized(model: ir.Model, apart_up_to: int) -> Iterator[ir.Model]:
    """ONNX Runtime's optimized CPU graph of ``model`` (its weights are not loaded; valid inside the block)."""
    options = ort.SessionOptions()
    with (
        tempfile.TemporaryDirectory(prefix="onnxbc-fusion-") as folder,
        session.ort_input(model, options, apart_up_to) as source,
    ):
        path = Path(folder) / "optimized.onnx"
        options.graph_optimization_level = LEVEL
        options.optimized_model_filepath = str(path)
        # Weights go to a file beside it: the optimized model of a model over 2 GB cannot be one protobuf.
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        options.intra_op_num_threads = 1  # nothing runs: no thread pool needed
        options.log_severity_level = 4  # errors come back as the exception
        try:
            ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise OnnxbcError(f"ONNX Runtime cannot build its CPU session for the fusion audit: {one_line(e)}") from e
        yield model_io.load(path, check=False)


def _judge(layers: list[ir.Node], optimized: ir.Model, tokens: _Tokens) -> list[LayerFusion]:
    named: dict[int, list[ir.Node]] = {}
    producers: dict[str, ir.Node] = {}
    for node in _nodes(optimized):
        for i in tokens.find(node.name or ""):
            named.setdefault(i, []).append(node)
        producers.update((v.name, node) for v in node.outputs if v.name)
    verdicts = []
    for i, layer in enumerate(layers):
        candidates = [n for n in named.get(i, []) if n.op_type not in (Q, DQ)]
        if not candidates:  # merged into a node named after another one: the node computing its output
            candidates = [producers[v.name] for v in layer.outputs if v.name in producers]
        node = next((n for n in candidates if _is_integer(n)), candidates[0] if candidates else None)
        verdicts.append(_verdict(layer, node, tokens, i))
    return verdicts


def _verdict(layer: ir.Node, node: ir.Node | None, tokens: _Tokens, i: int) -> LayerFusion:
    judged = functools.partial(
        LayerFusion,
        name=layer.name or "",
        op=layer.op_type,
        output=layer.outputs[0].name or "",
        dequantized=tuple(v.name or "" for v in _dq_inputs(layer)),
    )
    if node is None:
        return judged(verdict=Verdict.UNKNOWN)
    # ONNX Runtime's name for the node: the layer's own when it carries just the layer's token
    ort_name = (layer.name or "") if node.name == tokens.name(i) else tokens.restore(node.name or "")
    if _is_integer(node):
        return judged(verdict=Verdict.FUSED, ort_op=node.op_type, ort_node=ort_name)
    missing = tuple(map(tokens.restore, _missing(layer.op_type, node)))
    return judged(verdict=Verdict.FLOAT, ort_op=node.op_type, ort_node=ort_name, missing=missing)


def _is_integer(node: ir.Node) -> bool:
    return node.op_type in INTEGER_KERNELS or node.op_type.startswith("QLinear")


def _missing(op: str, node: ir.Node) -> list[str]:
    """What the optimized graph shows around a float ``node`` that an integer kernel needs."""
    found = []
    for value in node.inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer.op_type == DQ:
            continue
        if _dequantized(value):
            found.append(f"input '{value.name}' comes from a DequantizeLinear through {_label(producer)}")
        elif value is not None and not _constant(value):
            found.append(f"input '{value.name}' is not dequantized")
    if op in _OUTPUT_Q_OPTIONAL:
        return found
    output = node.outputs[0]
    readers = [reader for reader, _ in output.uses()]
    quantizers = [r for r in readers if r.op_type == Q]
    others = ", ".join(_label(r) for r in readers if r.op_type != Q)
    if output.is_graph_output():
        found.append(f"its output '{output.name}' is a graph output")
    if not quantizers and readers:
        found.append(f"its output goes to {others}, not to a QuantizeLinear")
    elif quantizers and others:
        found.append(f"its output goes to {others} besides {_label(quantizers[0])}")
    elif quantizers and node.op_type.startswith("Fused"):  # FusedConv, FusedGemm
        found.append(f"ONNX Runtime merged the activation between it and {_label(quantizers[0])} into {node.op_type}")
    return found


def _constant(value: ir.Value) -> bool:
    return value.is_initializer() or value.const_value is not None


def _label(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} (unnamed)"
