"""ONNX Runtime sessions on the device the user asked for, and a record of the device that really ran.

ONNX Runtime falls back to the CPU silently when the CUDA execution provider cannot start (missing
CUDA/cuDNN libraries, no GPU, the CPU-only wheel). So the factory checks ``session.get_providers()``
after creating each session: ``--device cuda`` without a working CUDA provider is an error, and with
``--device auto`` the provider that really ran is logged and reported.

Sessions are *exact* by default: they compute what the graph says. ONNX Runtime's default session
rewrites QDQ patterns into its own integer kernels, which compute something else:

- ``DequantizeLinear -> MatMul`` becomes ``MatMulNBits`` with int8 activations (accuracy level 4);
- ``DQ -> Conv -> Q`` becomes ``QLinearConv``, whose u8s8 kernel on x86 CPUs without VNNI sums pairs of
  products in saturating int16 (measured here: 185x the graph's error on the bundled CNN).

Statistics, compensation and decisions use exact sessions; ``exact=False`` gives the session a user
would run, so the report can also say what ONNX Runtime's default kernels do with the output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir
import onnxruntime as ort

from onnxbc import model_io
from onnxbc.calibration import memory
from onnxbc.errors import OnnxbcError, one_line
from onnxbc.options import Device

logger = logging.getLogger(__name__)
# ONNX Runtime logs provider start-up failures to stderr itself; the factory reports them in one line.
ort.set_default_logger_severity(4)

# ONNX Runtime keeps two copies of weights it reads from bytes and one of weights it reads from a file (measured
# on SmolLM2's 542 MB: a session 1.35 GB from bytes, 0.54 GB from a temporary file with external data, made faster)
FILE_FROM_BYTES = 32 * 2**20
# Weights up to this share of the memory budget are handed to ONNX Runtime from memory (``create``): no copy of
# them is serialized or written, and the session holds one copy more while it is made (``model_io.weights_apart``)
APART_SHARE = 0.025

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class SessionFactory:
    """Creates sessions for ``device`` and remembers which provider really ran (``self.provider``);
    ``threads`` sets ONNX Runtime's intra-op threads (0: its default); ``segments``: how many consecutive
    segments the collector may cut a calibration graph into, each run in a session of its own (1: whole; 0: as
    many as ``max_memory`` asks for, ``calibration.memory``); ``max_memory``: the bytes a run may use (None:
    ``memory.default_budget()``); ``ray``: calibration sharded across the workers of a Ray cluster ("auto" or its
    address, ``calibration.shards``), ``workers`` of them (None: the cluster's CPUs); ``cache_dir``: a folder
    keeping collected statistics for a later run (``calibration.cache``). A budget given
    (``--max-memory``) also turns ONNX Runtime's CPU memory arena off, so that a session's freed tensors go back
    to the system instead of waiting for reuse (SmolLM2 under 3 GB: 3208 -> 2975 MB peak, the same output), and
    its weights are not repacked (``create_from``)."""

    def __init__(
        self,
        device: Device = Device.AUTO,
        *,
        threads: int = 0,
        segments: int = 1,
        max_memory: int | None = None,
        ray: str | None = None,
        workers: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.device = device
        self.threads = threads
        self.segments = segments
        self.max_memory = max_memory or memory.default_budget()
        self.budget_given = max_memory is not None
        self.ray = ray
        self.workers = workers
        self.cache_dir = cache_dir
        self.provider: str | None = None
        if device is Device.CUDA and CUDA not in ort.get_available_providers():
            raise OnnxbcError(
                "--device cuda: this onnxruntime build has no CUDA execution provider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
            )

    @property
    def device_name(self) -> str:
        return {CUDA: "cuda", CPU: "cpu"}.get(self.provider or "", self.provider or "none")

    def create(
        self, model: ir.Model, *, exact: bool = True, prepack: bool = True, fold: bool = True
    ) -> ort.InferenceSession:
        """A session of ``model`` (``create_from`` says what the flags do); its weights handed over from memory
        when they take at most ``APART_SHARE`` of the memory budget and none was given (``ort_input``)."""
        options = self._options(exact, prepack, fold)
        with ort_input(model, options, self.apart_up_to) as source:
            return self._start(source, options)

    @property
    def apart_up_to(self) -> int:
        """The most weight bytes ``create`` hands over from memory (``ort_input``)."""
        return 0 if self.budget_given else int(APART_SHARE * self.max_memory)

    def create_from(
        self, source: bytes | str, *, exact: bool = True, prepack: bool = True, fold: bool = True
    ) -> ort.InferenceSession:
        """A session of ``source`` (a serialized model or its file). ``prepack=False``: the weights are not
        repacked for the CPU's matrix kernels, which holds a second
        copy of them, and more while the session is made (a W4 Llama-shaped model of 0.44 GB, its weights
        folded to float, on a quiet machine: 768 MB peak and 640 MB after, 1.1 s to make; without: 620 MB,
        0.5 s), for a run a little slower (3 runs of 2 samples: 1.46 s instead of 1.30 s; benchmarks/README.md).
        ``fold=False``: ONNX Runtime does not fold what is computed from constants alone into weights of its own
        (a DequantizeLinear of a weight, a Transpose of one), but computes it on every run, the same numbers: an
        int4 weight is held as it is stored, and one float copy at a time exists while a run uses it (an int4
        4096 x 8192 weight, then transposed: 425 MB peak and 169 MB held when folded, 178 MB peak and 24 MB held
        when not, a run of 128 tokens 0.16 -> 0.31 s on a busy 2-core machine; ``benchmarks/fold_memory.py``)."""
        return self._start(source, self._options(exact, prepack, fold))

    def _options(self, exact: bool, prepack: bool, fold: bool) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads
        options.enable_cpu_mem_arena = not self.budget_given
        if not prepack or self.budget_given:
            options.add_session_config_entry("session.disable_prepacking", "1")
        if not fold:
            options.add_session_config_entry("optimization.disable_specified_optimizers", "ConstantFolding")
        if exact:
            # Follow the node order, in which probes sit right after the layers they read, so that tensors
            # are freed early (measured on PP-OCR, batch 16: 1.8 GB instead of 4.7 GB).
            options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
        return options

    def _start(self, source: bytes | str, options: ort.SessionOptions) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(source, options, providers=self._providers())
        except Exception as e:  # onnxruntime raises its own exception types
            raise OnnxbcError(f"ONNX Runtime cannot load the model: {one_line(e)}") from e
        used = session.get_providers()[0]
        if self.device is Device.CUDA and used != CUDA:
            raise OnnxbcError(
                "--device cuda: the CUDA execution provider did not start (ONNX Runtime fell back to "
                f"{used}); check the CUDA and cuDNN libraries, or use --device auto/cpu"
            )
        self.ran(used)
        return session

    def ran(self, used: str) -> None:
        """Record the provider a session ran (here or in a Ray worker, ``calibration.shards``); the first time,
        warn when ``--device auto`` fell back from CUDA."""
        if self.provider is None and self.device is Device.AUTO and CUDA in ort.get_available_providers():
            if used != CUDA:
                logger.warning(
                    "the CUDA execution provider did not start (no GPU or CUDA/cuDNN libraries); running on the CPU"
                )
        self.provider = used

    def _providers(self) -> list[str]:
        if self.device is Device.CPU:
            return [CPU]
        if self.provider == CPU and self.device is Device.AUTO:
            return [CPU]  # CUDA already failed once: do not pay its start-up cost again
        if CUDA in ort.get_available_providers():
            return [CUDA, CPU]
        return [CPU]


@contextlib.contextmanager
def ort_input(model: ir.Model, options: ort.SessionOptions, apart_up_to: int) -> Iterator[bytes | str]:
    """``model`` as ONNX Runtime's session with ``options`` takes it: when its weights are held in memory and take
    ``apart_up_to`` bytes at most, the graph with the weights handed over from memory (``model_io.weights_apart``,
    added to ``options``: copied into the session while it is made), else bytes or a temporary file
    (``model_io.ort_source``)."""
    if model_io.initializer_bytes(model) <= apart_up_to and not model_io.has_external_tensors(model):
        graph, apart = model_io.weights_apart(model)
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in apart.values()]  # alive until the session is made
        options.add_external_initializers(list(apart), values)
        yield graph
        return
    with model_io.ort_source(model, file_from=FILE_FROM_BYTES) as source:
        yield source


def cuda_works() -> bool:
    """True when a CUDA session really starts here (used to skip GPU tests)."""
    if CUDA not in ort.get_available_providers():
        return False
    x = ir.val("x", ir.DataType.FLOAT, ir.Shape([1]))
    node = ir.node("Identity", [x], name="probe")
    node.outputs[0].name = "y"
    node.outputs[0].dtype, node.outputs[0].shape = ir.DataType.FLOAT, ir.Shape([1])
    model = ir.Model(ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 13}), ir_version=7)
    try:
        with model_io.ort_source(model) as source:
            session = ort.InferenceSession(source, providers=[CUDA, CPU])
    except Exception:
        return False
    return session.get_providers()[0] == CUDA
