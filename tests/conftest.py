"""Tests use tiny tensors: one intra-op thread is fastest and immune to oversubscription.

Every test runs against a scratch results store: nothing a test trains or caches can land in
(or replace files of) the committed one under data/. Tests that read the committed results do
so by path, and commands a test runs in a subprocess get their store explicitly.
"""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _scratch_store(tmp_path_factory):
    previous = os.environ.get("PAPERLIB_STORE")
    os.environ["PAPERLIB_STORE"] = str(tmp_path_factory.mktemp("store"))
    yield
    if previous is None:
        os.environ.pop("PAPERLIB_STORE", None)
    else:
        os.environ["PAPERLIB_STORE"] = previous


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly on a machine without CUDA (``make test`` runs them all)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
