"""No blind spots in Prometheus (issue 27 point 4): a belt run with the PLC's encoder over Modbus (a real pymodbus
server on 127.0.0.1 whose count stands still, so the ejections are missed) and an undecodable frame, scraped over
HTTP after the run: every counter of summary.json is a metric with its value, the particles per frame and the
process's memory included."""

import json
import os
import shutil
import urllib.request

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.tally import OUTCOMES
from edge.telemetry import SUMMARY_COUNTERS
from test_edge_encoder import ADDRESS, EncoderPLC
from helpers import scraped_run
from test_edge_modbus import free_port

# Leaves of summary.json that are not counters, each carried otherwise: durations and latencies (the histograms),
# the reject rule and drift status (model_info, drift_statistic), names.
NOT_COUNTERS = ("uptime_s", "latency_ms.", "reject.", "drift.", "model", "started", "exit")


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path[:-1], value


def _samples(address):
    with urllib.request.urlopen(address.split(" ", 1)[1], timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def _metric_for(path, samples):
    """The sample that carries summary leaf `path`, or None."""
    prefix = "mineralnet_runner_"
    counters = {key: name for key, name, _ in SUMMARY_COUNTERS}
    by_label = {"per_class": ("items_by_class", "class"), "per_bin": ("items_by_bin", "bin"),
                "per_reason": ("items_by_reason", "reason"),
                "frames_skipped_by_reason": ("frames_skipped_by_reason", "reason"),
                "particles.area_mm2_per_bin": ("particle_area_mm2_by_bin", "bin")}
    head, _, label = path.rpartition(".")
    if path in counters:
        return samples.get((f"{prefix}{counters[path]}_total", ()))
    if head in by_label:
        name, key = by_label[head]
        return samples.get((f"{prefix}{name}_total", ((key, label),)), 0.0)
    if head == "particles" and label in OUTCOMES:
        return samples.get((f"{prefix}particles_by_outcome_total", (("outcome", label),)), 0.0)
    totals = {"items": ("items_by_bin", None), "recheck": ("items_by_bin", ("bin", "recheck")),
              "late": ("items_by_reason", ("reason", "late")), "failed": ("items_by_reason", ("reason", "error")),
              "frames_skipped": ("frames_skipped_by_reason", None)}
    if path in totals:  # sums of a labelled counter
        name, match = totals[path]
        return sum(v for (n, labels), v in samples.items() if n == f"{prefix}{name}_total"
                   and (match is None or match in labels))
    gauges = {"particles.per_frame.mean": "particles_per_frame", "particles.per_frame.max": "particles_per_frame_max"}
    return samples.get((prefix + gauges[path], ())) if path in gauges else None


def _belt_folder(folder):
    belt = np.full((480, 640, 3), 60, np.uint8)
    scene = belt.copy()
    for x, y, radius in ((150, 200, 30), (400, 260, 24), (540, 330, 36)):
        cv2.circle(scene, (x, y), radius, (200, 180, 160), -1)
    for name, picture in (("a1.png", belt), ("a2.png", belt), ("b.png", scene)):
        cv2.imwrite(str(folder / name), picture)
    return {"particles": {"mm_per_px": 0.5, "background_frames": 2},
            "valves": {"count": 32, "lane_mm": 20.0, "bin": "bin_a"}}


def _item_folder(folder, tiny_export):
    for row in tiny_export["test_rows"][:4]:
        shutil.copy(row["file"], folder / f"b_{row['label']}_{os.path.basename(row['file'])}")
    return {}


@pytest.mark.parametrize("kind", ["belt", "items"])
def test_every_counter_of_a_run_with_an_encoder_is_scraped(tmp_path, tiny_export, write_config, make_runner, kind):
    """A belt of particles (valve commands in encoder counts) and single items (ejections waiting for the count,
    which creeps a count a read: still waiting at the end, missed), each with an undecodable frame."""
    folder = tmp_path / "belt"
    folder.mkdir()
    sections = _belt_folder(folder) if kind == "belt" else _item_folder(folder, tiny_export)
    (folder / "c_broken.png").write_bytes(b"not a picture")
    model = tmp_path / "model.tflite"  # no reject rule: the threshold decides, so most are ejected
    shutil.copy(tiny_export["float32"], model)
    sidecar = json.load(open(tiny_export["float32"][: -len(".tflite")] + ".json"))
    sidecar.pop("reject", None)
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    plc = EncoderPLC(free_port(), registers=2).start()
    plc.step = 0 if kind == "belt" else 1  # items: a count a read, moved (still_mm 0.1) but never at the ejector
    try:
        config = write_config(
            belt={"speed_mm_s": 1000.0, "camera_to_ejector_mm": 300.0, "valve_lead_ms": 0.0, "position": "modbus",
                  "still_mm": 0.1},
            encoder={"port": plc.port, "address": ADDRESS, "counts_per_mm": 4.0, "timeout_s": 0.5},
            decision={"confidence_threshold": 0.3},  # a cutoff: the top class alone is plausible
            **({"bins": {"classes": {label: "bin_a" for label in tiny_export["labels"]}}} if kind == "belt" else {}),
            **sections,
        )
        runner, _ = make_runner(config, str(model))
        summary, samples = scraped_run(runner, folder, _samples)
    finally:
        plc.stop()
    if kind == "belt":
        assert summary["particles"]["frames"] == 1 and summary["particles"]["per_frame"]["max"] == 3
    else:
        assert summary["encoder"]["missed"] >= 1 and summary["items"] == 4
    assert summary["frames_skipped_by_reason"] == {"undecodable": 1}
    blind = []
    for path, value in _leaves(summary):
        if path.startswith(NOT_COUNTERS):
            continue
        metric = _metric_for(path, samples)
        if metric is None:
            blind.append(path)
        else:
            assert metric == value, path
    assert blind == []  # a summary counter with no metric: add it to edge/telemetry.py
    assert samples[("process_resident_memory_bytes", ())] > 10e6
