"""benchmarks/paper_tables.py --smoke on the real photos: every result file, tables that parse, runs kept on a
rerun, and a refusal to mix runs of other settings."""

import os
import re

import pytest

from helpers import requires_minet, run_python

pytestmark = pytest.mark.slow

SCRIPT = os.path.join("benchmarks", "paper_tables.py")
FILES = {"table4.md", "table5.md", "curves.png", "confusion_matrix.png", "gradcam.png", "README.md"}
NUMBER = re.compile(r"^\d+(\.\d+)?$")


def table_rows(path):
    """Data rows of the Markdown table in `path`, as lists of cells (header and separator dropped)."""
    with open(path, encoding="utf-8") as handle:
        rows = [line.strip().strip("|").split("|") for line in handle if line.startswith("|")]
    assert len(rows) > 2 and set(rows[1][0].strip()) <= {"-", ":"}, rows[:2]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[2:]}


@requires_minet
def test_smoke_writes_every_file_and_keeps_finished_runs(tmp_path):
    out, runs = str(tmp_path / "results"), str(tmp_path / "runs")
    smoke = [SCRIPT, "--smoke", "--out", out, "--runs", runs]
    run_python(smoke, timeout=900)
    assert set(os.listdir(out)) == FILES
    assert all(os.path.getsize(os.path.join(out, name)) > 0 for name in FILES)

    table4 = table_rows(os.path.join(out, "table4.md"))
    assert set(table4) == {"simple_cnn", "eca_convnext_tiny"}
    for cells in table4.values():
        assert all(NUMBER.match(cell) for cell in cells[:3]), cells
    assert table4["eca_convnext_tiny"][3:] == ["本文模型", "98.58", "98.62", "98.73"]  # the paper's own row

    table5 = table_rows(os.path.join(out, "table5.md"))
    assert list(table5) == ["ConvNeXt-Tiny", "+ECA", "+transfer", "+ECA+transfer"]
    assert all(NUMBER.match(cell) for cell in table5["+ECA"]), table5["+ECA"]
    assert table5["+ECA"][5:] == ["27.82", "106.26", "97.62", "97.65", "97.61"]
    assert table5["ConvNeXt-Tiny"][0] == "not run: model not in --models"
    for row in ("+transfer", "+ECA+transfer"):
        assert table5[row][0] == "not run: no pretrained weights available"
    with open(os.path.join(out, "README.md")) as handle:
        text = handle.read()
    assert "paper_tables.py --smoke" in text and "Image size 32 px, epochs 1," in text

    report = os.path.join(runs, "simple_cnn", "eval", "report.json")
    written = os.path.getmtime(report)
    again = run_python(smoke, timeout=900)
    assert "simple_cnn: finished, kept" in again.stdout and "eca_convnext_tiny: finished, kept" in again.stdout
    assert os.path.getmtime(report) == written

    other = run_python(smoke + ["--epochs", "2"], check=False)
    assert other.returncode == 2 and "made with other epochs" in other.stderr
