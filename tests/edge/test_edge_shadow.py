"""A candidate model beside the live one (edge/shadow.py) and swapping the live model without a restart
(edge/promotion.py, Sorter.promote / rollback), with the real tiny exported models: the int8 file decides, the
float32 file of the same run is the candidate (same labels, other probabilities)."""

import json
import shutil

import numpy as np
import pytest

from edge.model import Model, ModelError
from edge.preprocess import open_rgb
from edge.sources import Frame

from conftest import read_events


def _frames(tiny_export, count, clock):
    rows = tiny_export["test_rows"][:count]
    return [Frame(f"{n:03d}_{row['path']}", clock.now(), open_rgb(row["file"])) for n, row in enumerate(rows)]


def _top3(model, image):
    """The top-3 a model gives one whole picture, as an item record spells it (the item's crop is the picture)."""
    probabilities = model.classify(model.input_tensor(image))
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [{"label": model.labels[i], "p": round(float(probabilities[i]), 6)} for i in order]


def _other_classes(tmp_path, tiny_export):
    """The float32 model with a sidecar that renames its last class: a valid model of other classes."""
    path = tmp_path / "renamed.tflite"
    shutil.copy(tiny_export["float32"], path)
    with open(tiny_export["float32"][: -len(".tflite")] + ".json") as handle:
        sidecar = json.load(handle)
    sidecar["labels"] = sidecar["labels"][:-1] + ["pyrite_new"]
    (tmp_path / "renamed.json").write_text(json.dumps(sidecar))
    return str(path)


def test_promote_then_rollback_switch_the_deciding_model_between_frames(
        tmp_path, tiny_export, write_config, make_runner, fake_clock, capsys):
    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    frames = _frames(tiny_export, 9, fake_clock)
    live, candidate = Model(tiny_export["int8"]), Model(tiny_export["float32"])
    expected = [_top3(model, frame.image) for model, frame in zip([live] * 3 + [candidate] * 3 + [live] * 3, frames)]
    assert expected[3:6] != [_top3(live, frame.image) for frame in frames[3:6]]  # the two models tell apart
    for frame in frames[:3]:
        runner.process(frame)
    promoted = runner.promote(tiny_export["float32"])
    assert promoted.path == tiny_export["float32"] and runner.model is promoted
    for frame in frames[3:6]:
        runner.process(frame)
    assert runner.rollback().path == tiny_export["int8"]
    for frame in frames[6:]:
        runner.process(frame)
    with pytest.raises(ModelError, match="nothing to roll back to"):
        runner.rollback()
    runner.actuator.close()

    events = read_events(events_path)
    kinds = [e["type"] for e in events if e["type"] != "item"]
    assert kinds == ["model_promoted", "model_rolled_back", "model_refused"]
    items = [e for e in events if e["type"] == "item"]
    assert [e["frame"] for e in items] == [f.frame_id for f in frames]  # no frame lost, none twice
    assert [e["seq"] for e in items] == list(range(1, 10))
    assert [e["top3"] for e in items] == expected  # int8, then float32, then int8 again decided
    order = [e["type"] if e["type"] != "item" else e["frame"][:3] for e in events]
    assert order[:4] == ["000", "001", "002", "model_promoted"] and order[7] == "model_rolled_back"
    swap = next(e for e in events if e["type"] == "model_promoted")
    assert swap["model_sha256"] == candidate.sha256 and swap["replaced_sha256"] == live.sha256
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" model ")[0] for line in err[:2]] == ["runner: promoted", "runner: rolled back to"]
    summary = runner.summary(runner.capture or type("C", (), {"dropped": 0, "source_errors": 0})(), "test")
    assert (summary["promotions"], summary["rollbacks"], summary["model"]) == (1, 1, tiny_export["int8"])


def test_a_candidate_with_other_classes_is_refused_and_live_sorts_on(
        tmp_path, tiny_export, write_config, make_runner, fake_clock, capsys):
    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    frames = _frames(tiny_export, 2, fake_clock)
    runner.process(frames[0])
    renamed = _other_classes(tmp_path, tiny_export)
    with pytest.raises(ModelError) as refused:
        runner.promote(renamed)
    message = str(refused.value)
    assert "\n" not in message and renamed in message and "pyrite_new" in message and "restart" in message
    assert runner.model.path == tiny_export["int8"]
    runner.process(frames[1])
    runner.actuator.close()
    events = read_events(events_path)
    assert [e["type"] for e in events] == ["item", "model_refused", "item"]
    assert capsys.readouterr().err.strip() == f"runner: promote refused: {message}"
