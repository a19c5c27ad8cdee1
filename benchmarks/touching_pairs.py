"""Touching pairs on the belt simulator's feed: how many the segmenter splits, how many single particles it cuts.

    PYTHONPATH=. python benchmarks/touching_pairs.py --split runs/sim_cnn/split.csv,runs/sim_cnn_belt/split.csv \
        [--seeds 5,6,7,8,9,10] [--config "split_solidity = 0.9"]

Segmentation alone (edge/particles.py Segmenter, no classifier, no tracking): the simulator's layout
(benchmarks/belt_sim.py lay_out: 20 particles per frame, half of them in touching pairs pushed together until their
outlines meet) rendered frame by frame, `threshold = "auto"`. Only whole views count: a pair is split when both
partners' pixels hold the centre of a particle found, a single particle is fragmented when its pixels hold two or
more. Faster than an end-to-end run (seconds per feed) and blind to what tracking and deciding add; belt_sim.py
gives those. Results: benchmarks/RESULTS.md, "Touching pairs without a neck".
"""

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import belt_sim  # noqa: E402  (its imports set the repository's paths)
from belt_sim import HEIGHT, MM_PER_PX, WIDTH, scenes  # noqa: E402
from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.particles import BackgroundModel, Segmenter  # noqa: E402


def feed(specimens, seed, frames=12):
    """(particles by id, [(frame, truth)], empty-belt frames) of one simulated feed."""
    rng = np.random.default_rng(seed)
    step = 130.0 / MM_PER_PX  # belt_sim.simulate's default step: each particle whole in 2-3 frames
    parts = belt_sim.lay_out(specimens, rng, 20, frames, step, 0.5, (15.0, 45.0), set(belt_sim.COPPER), 0.3)
    belt = scenes.make_belt()
    empty = [scenes.belt_frame(belt, rng) for _ in range(5)]
    views = [belt_sim.render(specimens, belt, rng, parts, position)
             for position in belt_sim.frame_positions(parts, frames, step)]
    return {p["id"]: p for p in parts}, views, empty


def whole(truth, number):
    rows = np.flatnonzero((truth == number).any(axis=1))
    return rows.min() > 0 and rows.max() < HEIGHT - 1


def make_segmenter(empty, extra="", kind=Segmenter):
    """The segmenter (`kind`: Segmenter or a subclass) of the simulator's belt (0.5 mm/px, 8-80 mm, threshold
    "auto") with `extra` [particles] lines, its belt learned from the `empty` frames."""
    config = parse_config(scenes.BASE_CONFIG + "[particles]\nmm_per_px = 0.5\nmin_mm = 8\nmax_mm = 80\n"
                          "threshold = \"auto\"\n" + extra + "\n" + scenes.VALVES)
    return kind(config.particles, BackgroundModel(empty, config.particles.background_rate), config.valves)


def measure(by_id, views, empty, extra, per_particle=None, kind=Segmenter):
    """(pairs split, pairs, singles fragmented, singles, blobs shown to the contact network) over the feed's whole
    views, segmented by `kind` (make_segmenter's); `per_particle`, a dict, gets
    each single's and pair's ("single" or "pair", id) its list of those outcomes, view by view."""
    segmenter = make_segmenter(empty, extra, kind)
    split = pairs = fragmented = singles = 0
    for frame, truth in views:
        found = collections.Counter()
        for particle in segmenter.segment(frame, learn=False).particles:
            x, y = (int(round(v)) for v in particle.centroid)
            found[int(truth[min(y, HEIGHT - 1), min(x, WIDTH - 1)])] += 1
        present = set(np.unique(truth).tolist()) - {0}
        for number in present:
            partner = by_id[number]["partner"]
            if not whole(truth, number):
                continue
            if partner is None:
                outcome, kind = found[number] > 1, "single"
                singles += 1
                fragmented += outcome
            elif number < partner and partner in present and whole(truth, partner):
                outcome, kind = found[number] >= 1 and found[partner] >= 1, "pair"
                pairs += 1
                split += outcome
            else:
                continue
            if per_particle is not None:
                per_particle.setdefault((kind, number), []).append(outcome)
    return split, pairs, fragmented, singles, 0 if segmenter.contact is None else segmenter.contact.asked


def split_by_view_rule(per_particle):
    """(rows (rule, pairs split, singles fragmented), pairs, singles) over the particles seen whole at least twice
    (`per_particle`: measure's, keyed (kind, ...)), had each been decided from its first whole view, split only where
    its first two views split, or split where either of them does."""
    seen = {key: views for key, views in per_particle.items() if len(views) >= 2}
    rows = []
    for rule, test in (("first whole view", lambda v: v[0]), ("split only if the first two views split", all),
                       ("split if either of the first two splits", any)):
        counts = {kind: sum(test(v[:2]) for k, v in seen.items() if k[0] == kind) for kind in ("pair", "single")}
        rows.append((rule, counts["pair"], counts["single"]))
    return rows, sum(k[0] == "pair" for k in seen), sum(k[0] == "single" for k in seen)


def main(argv=None, kind=Segmenter):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", required=True, help="comma-separated split.csv files (the unseen photos)")
    parser.add_argument("--seeds", default="5,6,7,8,9,10")
    parser.add_argument("--config", default="", help="extra [particles] lines, ';'-separated")
    parser.add_argument("--views", action="store_true", help="also per particle: what deciding from its first whole "
                        "view, or from its first two, would give (split_by_view_rule)")
    args = parser.parse_args(argv)
    specimens = belt_sim.unseen_specimens(args.split.split(","), None)
    print(f"Commit {commit()}; {cpu_name()}; [particles] extra: {args.config or 'none'}\n")
    print("| seed | pairs split | single particles fragmented |\n|---|---:|---:|")
    totals, per_particle = np.zeros(5, int), {}
    for seed in (int(s) for s in args.seeds.split(",")):
        seen = {}
        row = measure(*feed(specimens, seed), args.config.replace(";", "\n"), seen, kind)
        per_particle.update({(kind, seed, number): views for (kind, number), views in seen.items()})
        totals += row
        print(f"| {seed} | {row[0]} / {row[1]} | {row[2]} / {row[3]} |", flush=True)
    print(f"| all | **{totals[0]} / {totals[1]} ({totals[0] / max(totals[1], 1):.1%})** | "
          f"{totals[2]} / {totals[3]} ({totals[2] / max(totals[3], 1):.2%}) |")
    if args.views:
        rows, pairs, singles = split_by_view_rule(per_particle)
        print(f"\n| per particle seen whole twice or more | pairs split (of {pairs}) | singles fragmented (of "
              f"{singles}) |\n|---|---:|---:|")
        for rule, split, fragmented in rows:
            print(f"| {rule} | {split} ({split / max(pairs, 1):.1%}) | "
                  f"{fragmented} ({fragmented / max(singles, 1):.2%}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
