"""train.py --teacher RUN: the model learns the teacher's probabilities instead of the labels, and a teacher that
could leak test photos (another split), knows other classes or sees another image size is refused before anything
is written."""

import os
import shutil

import numpy as np
import pytest

from mineralnet import rundir
from mineralnet.data import load_image
from mineralnet.training import ConfigError, resolve_config, train

SIZE = 32


def _config(demo_data, out, **overrides):
    return resolve_config(overrides={"weights": "none", "data": demo_data, "out": str(out), "model": "simple_cnn",
                                     "image_size": SIZE, "epochs": 4, "batch_size": 8, "evaluate": False,
                                     **overrides})


@pytest.fixture(scope="module")
def labelled_run(demo_data, tmp_path_factory):
    return rundir.Run(train(_config(demo_data, tmp_path_factory.mktemp("labelled") / "run")))


def _constant_teacher(source, out, favourite, image_size=SIZE):
    """A run directory of `source`'s split and classes whose model answers class `favourite` for every image."""
    import keras

    os.makedirs(out)
    for name in (rundir.LABELS, rundir.SPLIT, rundir.CONFIG):
        shutil.copy(source.file(name), os.path.join(out, name))
    if image_size != SIZE:
        run = rundir.Run(out, required=None)
        run.write_config({**run.config, "image_size": image_size})
    inputs = keras.Input((image_size, image_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    bias = np.full(len(source.labels), -8.0)
    bias[favourite] = 8.0
    head = keras.layers.Dense(len(source.labels), activation="softmax", kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(bias))
    keras.Model(inputs, head(pooled)).save(os.path.join(out, rundir.MODEL))
    return out


def _test_predictions(run):
    pixels = np.stack([load_image(row["file"], SIZE) for row in run.rows("test")]).astype(np.float32)
    return run.load_model().predict(pixels, verbose=0).argmax(1)


def test_the_student_learns_the_teachers_answers_not_the_labels(demo_data, labelled_run, tmp_path):
    # The same run trained on the labels tells the demo classes apart; taught by a teacher that always answers
    # class 2, the student answers class 2 for every test photo.
    assert len(set(_test_predictions(labelled_run))) > 1
    teacher = _constant_teacher(labelled_run, str(tmp_path / "teacher"), favourite=2)
    student = rundir.Run(train(_config(demo_data, tmp_path / "student", split=labelled_run.split_file,
                                       teacher=teacher)))
    assert set(_test_predictions(student)) == {2}
    assert student.config["teacher"] == os.path.abspath(teacher)


@pytest.mark.parametrize("case", ["other split", "other size", "other classes", "not a run"])
def test_a_teacher_that_cannot_teach_this_run_is_refused_before_anything_is_written(demo_data, labelled_run, tmp_path,
                                                                                   case):
    teacher = _constant_teacher(labelled_run, str(tmp_path / "teacher"), 0,
                                image_size=48 if case == "other size" else SIZE)
    if case == "not a run":
        os.remove(os.path.join(teacher, rundir.MODEL))
    if case == "other classes":
        run = rundir.Run(teacher)
        run.write_labels(list(reversed(run.labels)))
    split = None if case == "other split" else labelled_run.split_file
    out = tmp_path / "student"
    with pytest.raises(ConfigError, match="--teacher") as raised:
        train(_config(demo_data, out, split=split, teacher=teacher, seed=5))
    expected = {"other split": "--split", "other size": "--image-size 48", "other classes": "same class folders",
                "not a run": "model.keras missing"}[case]
    assert expected in str(raised.value)
    assert not os.path.exists(out / rundir.CONFIG)
