"""The install is the CPU build that the pins promise (PyPI has no CPU-only torch: it would fetch CUDA's)."""

import importlib.metadata
import os

import pytest


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI guarantees the CPU wheel source")
def test_torch_is_the_pinned_cpu_build():
    version = importlib.metadata.version("torch")
    assert version == "2.13.0+cpu", version


def test_mlflow_pin():
    assert importlib.metadata.version("mlflow") == "3.17.2"
