"""benchmarks/belt_sim.py (issue 29, point 7) at tiny settings: the real runner on a few frames of a moving belt of
MINET-7 specimens, with the tiny exported model. Its full runs are benchmarks (benchmarks/RESULTS.md); this checks
that a report comes out and that its accounting adds up."""

import importlib.util
import os

from helpers import REPO, requires_minet


def _belt_sim():
    spec = importlib.util.spec_from_file_location("belt_sim", os.path.join(REPO, "benchmarks", "belt_sim.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_minet
def test_the_simulator_accounts_for_every_particle(tiny_export_dynamic, tiny_export):
    sim = _belt_sim()
    specimens = sim.scenes.load_specimens(limit=12)
    # The tiny model knows no minerals: its first label joins the product classes so the bar has a bin to eject.
    product = sim.COPPER + (tiny_export["labels"][0],)
    report = sim.simulate(tiny_export_dynamic["float32"], specimens, per_frame=6, feed_frames=3, product=product,
                          confidence=0.3, threads=1, background=2)
    total = report["true_particles"]
    assert total > 0 and report["frames"] >= 3 + 720 // 260
    assert sum(report["outcome"].values()) == total  # every true particle in exactly one outcome
    assert report["ejected"] + report["pass_through"] == total
    assert report["particle_events"] >= report["outcome"]["decided_once"] + 2 * report["outcome"][
        "decided_twice_or_more"]
    for name in ("end_to_end", "classifier_alone"):
        figures = report["bins"][name]
        for key in ("grade", "recovery", "mass_pull", "pass_through_purity", "feed_grade"):
            assert figures[key] is None or 0.0 <= figures[key] <= 1.0, (name, key, figures[key])
    misfires = report["misfires"]
    assert 0 <= misfires["reach_no_particle"] <= misfires["commands"]
    assert 0 <= misfires["rest_ejected_by_neighbours_air"] <= misfires["rest_ejected"] <= report["ejected"]
    assert report["speed"]["frame_ms_p50"] > 0 and report["speed"]["particles_per_s"] > 0
    assert report["air"]["lane_ms"] >= 0 and report["air"]["feed_kg"] > 0
    assert set(report["sorting_loss_causes"]) == {"never_decided", "conflict", "air_missed", "classified_otherwise",
                                                  "gained"}
    views = report["view_rules"]  # the decision's view rule measured three ways; "central" is the alone column's
    assert views["central"]["accuracy"] == report["alone_accuracy"]
    assert views["central"]["recovery"] == report["bins"]["classifier_alone"]["recovery"]
    assert 0 < views["several_views"] <= total and all(0.0 <= views[r]["accuracy"] <= 1.0 for r in ("first", "mean"))
