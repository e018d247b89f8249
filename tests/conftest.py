import tempfile

import numpy as np
import pytest

from models import test_graphs
from onnxbc.calibration.session import cuda_works


def pytest_collection_modifyitems(config, items):
    if cuda_works():
        return
    skip = pytest.mark.skip(reason="no working CUDA execution provider here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def zoo(tmp_path):
    """Save a zoo graph and its calibration data; returns (model path, data path, TestGraph)."""

    def make(name: str, samples: int = 24):
        graph = test_graphs.build(name)
        path = test_graphs.save(graph, tmp_path / f"{name}.onnx")
        if graph.batched:
            data = tmp_path / f"{name}.npz"
            np.savez(data, **graph.feeds(samples, 0))
        else:  # whole feeds, one per sample, under a leading axis
            feeds = [graph.feeds(1, seed) for seed in range(samples)]
            data = tmp_path / f"{name}_feeds.npz"
            np.savez(data, **{k: np.stack([f[k] for f in feeds]) for k in feeds[0]})
        return path, data, graph

    return make


@pytest.fixture
def system_tmp(tmp_path, monkeypatch):
    """tempfile's folder, moved here and watched: to see what a run leaves in the system temp folder."""
    folder = tmp_path / "system_tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
