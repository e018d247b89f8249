"""What a rewrite pass did, returned in its ``PassResult`` rather than kept on the pass object."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir


@dataclasses.dataclass
class SitesResult(ir.passes.PassResult):
    """``PassResult`` plus, per site (a layer or an activation, by name), what the pass did there.

    ``result = FoldBiasPass(biases)(model); result.sites`` -- every call builds new dicts, so a pass object
    run twice never mixes its runs. onnx_ir's ``PassResult`` is a mutable dataclass, so this one cannot be
    frozen. Inside a ``PassManager``/``Sequential`` a pass's result is replaced by the manager's plain
    ``PassResult``: call the pass itself to read its sites.

    Attributes:
        sites: site name -> where the edit went (for the report).
        skipped: site name -> why the pass left it as it was (for the report).
    """

    sites: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
