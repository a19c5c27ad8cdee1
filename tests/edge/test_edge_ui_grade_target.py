"""The line page shows the grade target(s) the runner applies (issue 24 point 2): the sidecar's grade rule, as
the Decider holds it, in the page's header, over real HTTP on 127.0.0.1."""

import json
import shutil
import urllib.request

from edge.ui import LineUI


def _page(runner):
    ui = LineUI(runner)
    base = ui.serve("127.0.0.1", 0).split(" ", 1)[1]
    try:
        with urllib.request.urlopen(base, timeout=30) as response:
            return response.read().decode()
    finally:
        ui.close()


def test_the_line_page_shows_the_grade_target_the_runner_applies(tiny_export, write_config, make_runner, tmp_path):
    model = tmp_path / "model_int8.tflite"
    shutil.copy(tiny_export["int8"], model)
    sidecar = json.load(open(tiny_export["int8"][: -len(".tflite")] + ".json"))
    label = sidecar["labels"][1]
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.1, "qhat": 0.5,
                         "grade_targets": {label: {"target": 0.95, "delta": 0.1, "threshold": 0.8}}}
    (tmp_path / "model_int8.json").write_text(json.dumps(sidecar))
    runner, _ = make_runner(write_config(), str(model))
    assert runner.decider.grade_targets == {label: (0.95, 0.8)}
    page = _page(runner)
    assert f"grade target <b>{label} ≥ 0.95</b> (p below 0.800 to recheck)" in page

    plain, _ = make_runner(write_config(), tiny_export["int8"])
    assert "grade target" not in _page(plain)
