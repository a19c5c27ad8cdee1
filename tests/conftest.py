"""Shared fixtures: the synthetic demo dataset, one tiny trained run, and the real MINET-7 photos when present."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """4 synthetic classes x 16 images of 48 px."""
    from mineralnet.data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("demo")), num_classes=4, images_per_class=16,
                             image_size=48)


@pytest.fixture(scope="session")
def tiny_run(demo_data, tmp_path_factory):
    """A finished eca_convnext_tiny run at 32 px (2 epochs) on the demo data: every run-directory artefact."""
    from mineralnet.training import resolve_config, train

    config = resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(tmp_path_factory.mktemp("run") / "tiny"),
                                       "image_size": 32, "epochs": 2, "batch_size": 16})
    return train(config)
