"""Prometheus telemetry (issue 13, point 3): /metrics scraped over real HTTP on 127.0.0.1 during and after a run."""

import os
import shutil
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from edge.telemetry import Telemetry

from helpers import HeldBackRun, scraped_run


def _scrape(address):
    with urllib.request.urlopen(address.split(" ", 1)[1], timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    return families


def _by_label(family, label):
    return {s.labels[label]: int(s.value) for s in family.samples if s.name.endswith("_total")}


def test_metrics_during_and_after_a_run_equal_the_summary(tmp_path, tiny_export, write_config, make_runner):
    folder = tmp_path / "belt"
    folder.mkdir()
    rows = tiny_export["test_rows"][:6]
    for row in rows:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    runner, _ = make_runner(write_config(), tiny_export["int8"])
    telemetry = Telemetry(runner.model)
    runner.attach_telemetry(telemetry)
    address = telemetry.serve("127.0.0.1", 0)
    assert address.startswith("metrics http://127.0.0.1:")
    sorting = HeldBackRun(runner, str(folder), len(rows) - 2, queue_size=1)  # mid-run: the last frame held back
    try:
        during = _scrape(address)
    finally:
        summary = sorting.finish()
    try:
        after = _scrape(address)
    finally:
        telemetry.close()
    assert sum(_by_label(during["mineralnet_runner_items_by_bin"], "bin").values()) < summary["items"]
    assert _by_label(after["mineralnet_runner_items_by_class"], "class") == summary["per_class"]
    assert _by_label(after["mineralnet_runner_items_by_bin"], "bin") == summary["per_bin"]
    per_reason = {r: n for r, n in summary["per_reason"].items() if n}
    assert _by_label(after["mineralnet_runner_items_by_reason"], "reason") == per_reason
    for stage in ("preprocess", "inference", "capture_to_decision"):
        counts = [s.value for s in after[f"mineralnet_runner_{stage}_seconds"].samples if s.name.endswith("_count")]
        assert counts == [summary["items"]]
    info = after["mineralnet_runner_model_info"].samples[0].labels
    assert info["sha256"] == runner.model.sha256 and info["labels"].split(",") == tiny_export["labels"]
    for gauge in ("queue_depth", "recheck_share", "source_up", "actuator_up"):
        assert len(after[f"mineralnet_runner_{gauge}"].samples) == 1
    assert after["mineralnet_runner_actuator_up"].samples[0].value == 1.0
    share = summary["recheck"] / summary["items"]  # alarm window (200) larger than the run: the share of all items
    assert abs(after["mineralnet_runner_recheck_share"].samples[0].value - share) < 1e-9 or summary["items"] > 200


def test_every_counter_of_the_summary_and_the_process_memory_are_metrics(tmp_path, tiny_export, write_config,
                                                                          make_runner):
    """No blind spot: frames dropped, source and actuator errors, alarms, lost events... are scraped equal to
    summary.json after the run, with the process's resident memory (issue 27 point 4)."""
    from edge.telemetry import SUMMARY_COUNTERS

    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"][:3]:
        shutil.copy(row["file"], folder / os.path.basename(row["file"]))
    (folder / "zz_broken.jpg").write_bytes(b"not a picture")
    runner, _ = make_runner(write_config(), tiny_export["int8"])
    summary, after = scraped_run(runner, folder, _scrape)
    present = [(key, name) for key, name, _ in SUMMARY_COUNTERS if "." not in key and key in summary]
    assert len(present) >= 8
    for key, name in present:
        assert after[f"mineralnet_runner_{name}"].samples[0].value == summary[key], name
    skipped = after["mineralnet_runner_frames_skipped_by_reason"].samples
    assert [(s.labels["reason"], s.value) for s in skipped if s.name.endswith("_total")] == [("undecodable", 1.0)]
    assert after["process_resident_memory_bytes"].samples[0].value > 10e6
