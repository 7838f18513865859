"""Fixtures shared by the vcap tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small synthetic dataset (train 6, val 2, test 4 clips of 64 px), one per test module."""
    from vcap.recipes.synthetic import make_dataset

    folder = tmp_path_factory.mktemp("synthetic")
    return make_dataset(folder, n_train=6, n_val=2, n_test=4, seed=1, size=64, num_frames=8, progress=False)
