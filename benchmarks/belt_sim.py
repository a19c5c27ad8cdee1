"""Belt simulator (issue 29, point 7): what lands in each bin when the real runner sorts a moving belt.

    PYTHONPATH=. python benchmarks/belt_sim.py --model runs/sim_cnn/export/model_int8.tflite \
        --split runs/sim_cnn/split.csv [--counts 10,30,60] [--feed-frames 150] [--conflict skip|fire] [--json out.json]

Results and the commands that made them: benchmarks/RESULTS.md, "Belt simulator (issue 29)".

A sorter is judged by grade and recovery at a throughput, not by a photo classifier's accuracy, and only an end to
end run shows the losses between the two: segmentation, tracking across frames, valve timing and the air jet.

The belt: MINET-7 specimens cut out of their white photos (tests/edge/test_edge_particles.py load_specimens; with
--split only the photos the run, or every run named, did not train on: test, val and calib), `--product-share` of
them of the product classes, are scaled to a longer side in `--sizes` mm and laid out on a long belt at `--counts`
particles per 1280x720 frame (0.5 mm/px), `--touching` of them in touching pairs (partners of independent sizes,
moved together until their outlines meet). Frames are composed with the tests' belt texture, sensor noise and
`paste`; the belt advances `--step-mm` per frame, so each particle is whole in 2 or 3 frames. Ground truth per
particle: its class, its area (mm^2, the mass proxy) and its place on the belt.

The runner: edge/runner.py build_runner from a config with [particles], [valves], [belt] position = "modbus" and
[encoder] pointing at a real Modbus server on 127.0.0.1 (tests/edge/test_edge_encoder.py EncoderPLC) whose count
the simulator sets to each frame's belt position; each frame is stamped with a count read from it, as the capture
thread does, and the valve commands go through ValveJsonlActuator(encoder=True) to a file (open/close counts). The
clock is driven (a frame period per frame), so a run is deterministic and not bound to real time; the belt stands
still while a frame is processed, so no decision is late here, and whether the measured frame time keeps up with
the belt is reported instead (frame time against the frame period). Processing time is the wall time of
Sorter.process() alone (time.perf_counter), rendering and scoring excluded.

The air jet: a particle is ejected when the lanes open while its centre crosses the valve line cover at least
`--share` of its width across the belt (lanes open from open_count to close_count; overlapping commands keep a
lane open). Everything else lands in the pass-through bin (the runner's recheck and other bins: one chute).

The figures per density: grade (purity), recovery and mass pull of the valve bar's bin by area; misfires (commands
that reach no particle, commands that miss the particle they were for, particles hit that should stay); particles
decided once / twice / never (particle events matched to the truth on their masks); particles/s and frame time;
the sorting loss (recovery lost beyond what the classifier alone loses: the same model and decision rule on the
ground-truth crops, cut as edge/particles.py cuts them, from each particle's most central whole view); and the
compressed air per tonne of feed. The air and mass figures rest on assumptions stated in ASSUMPTIONS.
"""

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "tests", "edge")]  # the tests' own imports

import test_edge_particles as scenes  # noqa: E402  (load_specimens reads scenes.MINET)
from benchmarks.machine import commit, cpu_name  # noqa: E402
from edge.classify import CropClassifier  # noqa: E402
from edge.config import parse_config  # noqa: E402
from edge.drivers.jsonl import ValveJsonlActuator  # noqa: E402
from edge.model import Model  # noqa: E402
from edge.preprocess import crop_square, from_bgr  # noqa: E402
from edge.records import EventSink, LineWriter, percentile  # noqa: E402
from edge.runner import build_runner  # noqa: E402
from edge.sources import Frame  # noqa: E402
from test_edge_encoder import ADDRESS, EncoderPLC  # noqa: E402
from test_edge_modbus import free_port  # noqa: E402

WIDTH, HEIGHT, MM_PER_PX = scenes.WIDTH, scenes.HEIGHT, scenes.MM_PER_PX
COUNTS_PER_MM = 4.0
START_COUNT = 100_000  # the encoder's count at belt position 0 (32-bit counter: no wrap in a run)
COPPER = ("bornite", "chrysocolla", "malachite")  # the product: the copper minerals of MINET-7

# Assumptions of the air and mass figures (reported with the figures).
ASSUMPTIONS = {
    # A fast-switching sorting valve passes of the order of 100-200 NL/min at 6 bar (catalogue "standard nominal
    # flow" of solenoid valves of that class); not measured here: scale the result by your valve's figure.
    "nozzle_nl_per_min": 150.0,
    # Particles lie on their largest face: thickness = this share of the equal-area circle's diameter.
    "thickness_share": 0.5,
    # Specific gravity (t/m^3) of each MINET-7 class, handbook mid values; 2.7 for any other label.
    "density_t_m3": {"biotite": 3.0, "bornite": 5.1, "chrysocolla": 2.2, "malachite": 3.9, "muscovite": 2.8,
                     "pyrite": 5.0, "quartz": 2.65},
    # Compressor specific energy at 6-7 bar, for kWh/t (typical figure for industrial screw compressors).
    "kwh_per_nm3": 0.11,
}

CONFIG = """
[bins]
default = "rest"
recheck = "recheck"
classes = {classes}
[decision]
confidence_threshold = {confidence}
[belt]
speed_mm_s = {speed}
camera_to_ejector_mm = {ejector_mm}
valve_lead_ms = 0
position = "modbus"
[encoder]
host = "127.0.0.1"
port = {port}
address = {address}
registers = 2
counts_per_mm = {counts_per_mm}
timeout_s = 1.0
[actuator]
type = "jsonl"
path = "{commands}"
[records]
summary = "{summary}"
[particles]
mm_per_px = {mm_per_px}
min_mm = 8
max_mm = 80
threshold = {threshold}
background_frames = {background}
contact_model = {contact_model}
[valves]
count = {lanes}
lane_mm = {lane_mm}
bin = "product"
conflict = "{conflict}"
hit_share = {hit_share}
"""


class DrivenClock:
    """The runner's clock, moved by the simulator: a frame period per frame (edge/timing.py Clock's interface)."""

    def __init__(self, start=1000.0):
        self.t = start

    def now(self):
        return self.t

    def wall(self):
        return 1_700_000_000.0 + self.t

    def advance(self, seconds):
        self.t += seconds

    def wait(self, event, seconds):
        if not event.is_set():
            self.advance(max(0.0, seconds))
        return event.is_set()


def _footprint(specimen, size_px):
    """(height, width, area px, first and last column) of `specimen` pasted at `size_px`, by pasting it."""
    side = int(size_px) + 8
    canvas, truth = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.int32)
    scenes.paste(canvas, truth, specimen, side / 2, side / 2, size_px, 1)
    rows, cols = np.nonzero(truth)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1, len(rows), cols.min() - side / 2, \
        cols.max() + 1 - side / 2, truth[rows.min():rows.max() + 1, cols.min():cols.max() + 1] > 0


def _touching_offset(mask_a, mask_b, angle):
    """Distance (px) between the centres of two masks along `angle` at which their outlines meet, less 2 px: a
    solid contact, as touching rocks show."""
    ha, wa = mask_a.shape
    hb, wb = mask_b.shape
    rows, cols = np.nonzero(mask_b)
    rows, cols = rows - hb / 2, cols - wb / 2
    pad = int(math.ceil(math.hypot(ha, wa) / 2 + math.hypot(hb, wb))) + 2  # room for B at the farthest start
    canvas = np.zeros((ha + 2 * pad, wa + 2 * pad), bool)
    canvas[pad:pad + ha, pad:pad + wa] = mask_a
    for distance in np.arange((math.hypot(ha, wa) + math.hypot(hb, wb)) / 2, 0, -1.0):
        y = np.round(rows + pad + ha / 2 + distance * math.sin(angle)).astype(int)
        x = np.round(cols + pad + wa / 2 + distance * math.cos(angle)).astype(int)
        if canvas[y, x].any():
            return distance - 2.0
    return 0.0


def lay_out(specimens, rng, per_frame, feed_frames, step_px, touching, sizes_mm, product, product_share,
            gap_mm=4.0):
    """The particles of the feed: a belt of feed_frames x step_px px carrying `per_frame` particles per frame area,
    `touching` of them in touching pairs, `product_share` of them drawn from the product classes' specimens (an ore
    feed, not the photo collection's mix). Each: its specimen, size, centre (x px across, u px along the belt),
    extent, area and the partner it touches."""
    pools = [[i for i, s in enumerate(specimens) if (s[2] in product) == wanted] for wanted in (True, False)]
    if not all(pools):
        raise SystemExit("belt_sim: the specimens hold no product or no other class: use more photos")

    def draw():
        pool = pools[0] if rng.random() < product_share else pools[1]
        return pool[rng.integers(len(pool))]

    length = feed_frames * step_px
    wanted = int(round(per_frame * length / HEIGHT))
    pairs = int(round(wanted * touching / 2))
    kinds = ["pair"] * pairs + ["single"] * (wanted - 2 * pairs)
    placed = np.zeros((0, 3))  # x, u, radius of every footprint
    gap = gap_mm / MM_PER_PX
    particles = []

    def particle(specimen_index, size, x, u, partner=None):
        specimen = specimens[specimen_index]
        h, w, area, x0, x1, mask = _footprint(specimen, size)
        return {"id": len(particles) + 1, "specimen": int(specimen_index), "label": specimen[2], "size_px": size,
                "x": x, "u": u, "h": int(h), "w": int(w), "x0_mm": (x + x0) * MM_PER_PX, "x1_mm": (x + x1) * MM_PER_PX,
                "area_mm2": area * MM_PER_PX ** 2, "size_mm": 2 * math.sqrt(area / math.pi) * MM_PER_PX,
                "partner": partner, "mask": mask}

    for kind in rng.permutation(kinds):
        sizes = rng.uniform(*sizes_mm, size=2) / MM_PER_PX
        chosen = [draw(), draw()]
        if kind == "pair":
            first = particle(chosen[0], sizes[0], 0, 0)
            second = particle(chosen[1], sizes[1], 0, 0)
            angle = rng.uniform(0, 2 * math.pi)
            distance = _touching_offset(first["mask"], second["mask"], angle)
            offsets = [(0.0, 0.0), (distance * math.cos(angle), distance * math.sin(angle))]
            radius = distance / 2 + max(sizes) * 0.71
        else:
            offsets, radius = [(0.0, 0.0)], sizes[0] * 0.71
        for _ in range(400):
            x = rng.uniform(radius + 8, WIDTH - radius - 8)
            u = rng.uniform(0, length)
            if not len(placed) or np.all(np.hypot(placed[:, 0] - x, placed[:, 1] - u) > placed[:, 2] + radius + gap):
                break
        else:
            continue  # the belt is full here: the achieved density is reported
        placed = np.vstack([placed, [x, u, radius]])
        middle = np.mean(offsets, axis=0)
        members = []
        for index, (dx, dy) in enumerate(offsets):
            # (dx, dy) are frame offsets (x, row); rows grow as u falls (edge/valves.py: the belt moves down)
            members.append(particle(chosen[index], sizes[index], x + dx - middle[0], u - (dy - middle[1])))
            particles.append(members[-1])
        if len(members) == 2:
            members[0]["partner"], members[1]["partner"] = members[1]["id"], members[0]["id"]
    return particles


def frame_positions(particles, feed_frames, step_px):
    """Belt positions (px) of the frames: the feed enters at the top of the first and has left the last."""
    tail = HEIGHT + max((p["h"] for p in particles), default=0)
    return [k * step_px for k in range(int(math.ceil((feed_frames * step_px + tail) / step_px)) + 1)]


def _row(particle, position):
    """Centre row of `particle` in the frame at belt `position` (px): the belt moves down the picture."""
    return position - particle["u"]


def best_views(particles, positions):
    """Per particle, the frame index of its most central whole view and how many whole views it has."""
    for particle in particles:
        whole = [k for k, position in enumerate(positions)
                 if 1 <= _row(particle, position) - particle["h"] / 2 and _row(particle, position) + particle["h"] / 2
                 <= HEIGHT - 2]
        particle["views"], particle["whole"] = len(whole), whole
        particle["best"] = min(whole, key=lambda k: abs(_row(particle, positions[k]) - HEIGHT / 2)) if whole else None


def render(specimens, belt, rng, particles, position):
    """(BGR frame, truth: particle id per pixel) of the belt at `position`. Particles cut by the frame's edge are
    pasted on a taller canvas and cropped, so `paste` never reaches beyond its array."""
    margin = int(max((max(p["h"], p["w"]) for p in particles), default=0)) + 8
    canvas = np.zeros((HEIGHT + 2 * margin, WIDTH, 3), np.uint8)
    truth = np.zeros(canvas.shape[:2], np.int32)
    for p in particles:
        row = _row(p, position)
        if -margin / 2 < row < HEIGHT + margin / 2:
            scenes.paste(canvas, truth, specimens[p["specimen"]], p["x"], row + margin, p["size_px"], p["id"])
    frame, truth = scenes.belt_frame(belt, rng), truth[margin:margin + HEIGHT]
    frame[truth > 0] = canvas[margin:margin + HEIGHT][truth > 0]
    return frame, truth


def truth_crop(rgb, truth, belt_rgb, number, pad):
    """The crop edge/particles.py would cut for particle `number` had it been segmented exactly: a square of the
    box's longer side x (1 + 2 pad) centred on it, other particles and pixels beyond the frame replaced by belt."""
    rows, cols = np.nonzero(truth == number)
    bbox = (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    x0, y0, side = crop_square(bbox, pad)
    crop = np.empty((side, side, 3), np.uint8)
    crop[:] = belt_rgb.reshape(-1, 3).mean(axis=0)
    fx0, fy0, fx1, fy1 = max(x0, 0), max(y0, 0), min(x0 + side, WIDTH), min(y0 + side, HEIGHT)
    inside = rgb[fy0:fy1, fx0:fx1].copy()
    others = (truth[fy0:fy1, fx0:fx1] != 0) & (truth[fy0:fy1, fx0:fx1] != number)
    inside[others] = belt_rgb[fy0:fy1, fx0:fx1][others]
    crop[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = inside
    return crop


def make_config(model, product, port, folder, confidence, speed, ejector_mm, background, conflict, hit_share=0.0,
                threshold="auto", contact_model=""):
    classes = {label: "product" for label in model.labels if label in product}
    if not classes:
        raise SystemExit(f"belt_sim: none of the product classes {sorted(product)} is a label of the model "
                         f"({', '.join(model.labels)})")
    lanes = int(math.ceil(WIDTH * MM_PER_PX / 12.5))
    text = CONFIG.format(
        classes="{ " + ", ".join(f'"{c}" = "{b}"' for c, b in classes.items()) + " }", confidence=confidence,
        speed=speed, ejector_mm=ejector_mm, port=port, address=ADDRESS, counts_per_mm=COUNTS_PER_MM,
        commands=os.path.join(folder, "valves.jsonl"), summary=os.path.join(folder, "summary.json"),
        mm_per_px=MM_PER_PX, background=background, lanes=lanes, lane_mm=12.5, conflict=conflict,
        hit_share=hit_share, threshold=json.dumps(threshold), contact_model=json.dumps(contact_model),
    )
    config = parse_config(text, "belt_sim")
    config.check_labels(model.labels)
    return config


def _count(position_px):
    return START_COUNT + int(round(position_px * MM_PER_PX * COUNTS_PER_MM))


def simulate(model_path, specimens, per_frame, feed_frames=60, touching=0.2, sizes_mm=(15.0, 45.0),
             step_mm=130.0, speed_mm_s=1000.0, ejector_mm=300.0, share=0.5, product=COPPER, product_share=0.3,
             confidence=0.6, threads=2, seed=0, background=5, conflict="trim", hit_share=0.0,
             threshold="auto", contact_model="", assumptions=ASSUMPTIONS, details=False):
    """One run: lay out the feed, drive the runner frame by frame, score the bins. Returns the report (a dict);
    with `details`, also its "particles" (truth and outcome), "records" (particle events) and "commands"."""
    rng = np.random.default_rng(seed)
    step_px = step_mm / MM_PER_PX
    particles = lay_out(specimens, rng, per_frame, feed_frames, step_px, touching, sizes_mm, set(product),
                        product_share)
    positions = frame_positions(particles, feed_frames, step_px)
    best_views(particles, positions)
    by_id = {p["id"]: p for p in particles}
    belt = scenes.make_belt()
    belt_rgb = np.clip(belt, 0, 255).astype(np.uint8)[..., ::-1]
    model = Model(model_path, threads=threads)
    plc = EncoderPLC(free_port()).start()
    folder = tempfile.mkdtemp(prefix="belt_sim_")
    try:
        config = make_config(model, set(product), plc.port, folder, confidence, speed_mm_s, ejector_mm, background,
                             conflict, hit_share, threshold, contact_model)
        clock = DrivenClock()
        events_path = os.path.join(folder, "events.jsonl")
        events = EventSink(LineWriter(events_path), clock)
        commands_path = config.actuator.path
        runner = build_runner(config, model, clock, events,
                              driver_factory=lambda: ValveJsonlActuator(commands_path, clock, encoder=True))
        runner.belt.open()
        owners, published = {}, []

        def match(truth):
            """Each particle the runner published in this frame against the truth: the most frequent true id
            under its mask owns it; others with half their pixels under it were merged into it."""
            for frame_id, particle in published:
                x, y, w, h = particle.bbox
                under = truth[y:y + h, x:x + w][particle.mask if particle.mask is not None else slice(None)]
                ids, pixels = np.unique(under[under > 0], return_counts=True)
                owner = int(ids[np.argmax(pixels)]) if len(ids) else 0
                covered = [int(i) for i, n in zip(ids, pixels)
                           if i != owner and n >= 0.5 * by_id[int(i)]["area_mm2"] / MM_PER_PX ** 2]
                owners[(frame_id, tuple(int(v) for v in particle.bbox))] = (owner, covered)
            published.clear()

        # The runner's truth hook (Sorter.truth) hands over each published particle; it is matched after the
        # frame's timing, so the match's cost stays out of the frame time.
        runner.truth = lambda frame_id, particle: published.append((frame_id, particle))
        period = step_mm / speed_mm_s
        for index in range(background):  # the empty belt is learned first
            frame = Frame(f"empty{index}", clock.now(), from_bgr(scenes.belt_frame(belt, rng)))  # as a camera gives it
            runner.process(frame)
            clock.advance(period)
        views, frame_s, match_s = {}, [], []  # views: (particle id, frame index) -> its truth crop there
        warm = np.zeros((model.input_size, model.input_size, 3), np.uint8)
        runner.classifier.classify([warm])  # the interpreter's set-up stays out of the timings
        for index, position in enumerate(positions):
            bgr, truth = render(specimens, belt, rng, particles, position)
            rgb = bgr[..., ::-1].copy()
            for p in particles:
                if index in p["whole"]:
                    views[p["id"], index] = truth_crop(rgb, truth, belt_rgb, p["id"], config.particles.pad)
            plc.count = _count(position)
            frame = Frame(str(index), clock.now(), from_bgr(bgr))
            frame.position = runner.belt.read()  # stamped at capture, as edge/sources.py Capture does
            start = time.perf_counter()
            runner.process(frame)
            frame_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            match(truth)
            match_s.append(time.perf_counter() - start)
            clock.advance(period)
        runner.actuator.close()
        runner.belt.close()
        with open(events_path) as handle:
            records = [e for e in map(json.loads, handle) if e["type"] == "particle"]
        with open(commands_path) if os.path.exists(commands_path) else open(os.devnull) as handle:
            commands = [json.loads(line) for line in handle]
        counts = dict(runner.particles.counts)
        alone = CropClassifier(model)
        keys = sorted(views)
        view_p = dict(zip(keys, np.concatenate([alone.classify([views[k] for k in keys[j:j + 64]])
                                                for j in range(0, len(keys), 64)]))) if keys else {}
        ids = sorted(p["id"] for p in particles if p["best"] is not None)
        probabilities = np.array([view_p[i, by_id[i]["best"]] for i in ids]).reshape(len(ids), -1)
        alone_bins = {i: runner.decider.decide(row).bin for i, row in zip(ids, probabilities)}
        view_rules = view_rule_figures([by_id[i] for i in ids], view_p, model.labels, runner.decider, set(product))
    finally:
        plc.stop()
    report = score(particles, records, commands, owners, alone_bins, set(product), share, config, assumptions)
    report.update(
        particles_per_frame=per_frame, placed_per_frame=round(len(particles) * HEIGHT / (feed_frames * step_px), 2),
        touching_share=round(sum(p["partner"] is not None for p in particles) / max(len(particles), 1), 3),
        whole_views={str(n): sum(p["views"] == n for p in particles) for n in sorted({p["views"] for p in particles})},
        frames=len(positions), runner_counts=counts,
        contact_asked=None if runner.segmenter.contact is None else runner.segmenter.contact.asked,
        speed={**speed_figures(frame_s, len(particles), len(records), period),
               "truth_match_ms_mean": round(1000.0 * sum(match_s) / max(len(match_s), 1), 3)},
        view_rules=view_rules,
        alone_accuracy=round(float(np.mean([by_id[i]["label"] == model.labels[int(np.argmax(row))]
                                            for i, row in zip(ids, probabilities)])), 4) if ids else None,
    )
    if details:
        report["details"] = {"particles": [{k: v for k, v in p.items() if k != "mask"} for p in particles],
                             "records": records, "commands": commands}
    return report


def view_rule_figures(particles, view_p, labels, decider, product):
    """Which of a particle's whole views to decide it from (issue 29 point 1), on the classifier alone: the first
    whole view (what the runner decides from: the earliest, leaving the valves the most time), the most central one,
    or the mean of all their probabilities. 7-class accuracy, and grade/recovery of the product bin by area."""
    rules = {"first": lambda p: view_p[p["id"], p["whole"][0]], "central": lambda p: view_p[p["id"], p["best"]],
             "mean": lambda p: np.mean([view_p[p["id"], k] for k in p["whole"]], axis=0)}
    figures = {}
    for name, rule in rules.items():
        rows = [rule(p) for p in particles]
        ejected = {p["id"]: decider.decide(row).bin == "product" for p, row in zip(particles, rows)}
        figures[name] = {"accuracy": round(float(np.mean([p["label"] == labels[int(np.argmax(row))]
                                                          for p, row in zip(particles, rows)])), 4),
                         **grade_recovery(particles, lambda p: ejected[p["id"]], product)}
    figures["several_views"] = sum(len(p["whole"]) > 1 for p in particles)
    return figures


def speed_figures(frame_s, particles, decisions, period):
    busy = sum(frame_s)
    return {
        "frame_ms_p50": percentile(frame_s, 50), "frame_ms_p95": percentile(frame_s, 95),
        "frame_period_ms": round(period * 1000.0, 1),
        "particles_per_s": round(particles / busy, 1) if busy else None,  # feed the pipeline keeps up with
        "decisions_per_s": round(decisions / busy, 1) if busy else None,
    }


def _open_lanes(commands, count, lane_mm, first_mm=0.0):
    """[(x0 mm, x1 mm)] of the lanes open at encoder `count`."""
    lanes = {lane for c in commands if c["open_count"] <= count <= c["close_count"] for lane in c["lanes"]}
    return [(first_mm + lane * lane_mm, first_mm + (lane + 1) * lane_mm) for lane in sorted(lanes)]


def _covered(intervals, x0, x1):
    return sum(max(0.0, min(b, x1) - max(a, x0)) for a, b in intervals) / max(x1 - x0, 1e-9)


def crossing(particle, config):
    """The encoder count at which `particle`'s centre crosses the valve line: camera_to_ejector_mm past the frame's
    centre row (edge/valves.py geometry; valve lead 0, as the valves here open without delay)."""
    return _count(particle["u"] + HEIGHT / 2 + config.belt.camera_to_ejector_mm / MM_PER_PX)


def score(particles, records, commands, owners, alone_bins, product, share, config, assumptions):
    """Bins, misfires, decisions and air from the runner's records and commands against the truth."""
    lane_mm = config.valves.lane_mm
    by_seq = {r["seq"]: r for r in records}
    decided = {p["id"]: [] for p in particles}
    merged = set()
    for record in records:
        owner, covered = owners.get((record["frame"], tuple(record["bbox"])), (0, []))
        record["owner"] = owner
        if owner:
            decided[owner].append(record)
        merged.update(covered)
    ejected, partial, collateral = {}, 0, 0
    for p in particles:
        p["crossing"] = crossing(p, config)
        covered = _covered(_open_lanes(commands, p["crossing"], lane_mm), p["x0_mm"], p["x1_mm"])
        ejected[p["id"]] = bool(covered >= share)
        partial += int(0 < covered < share)
    misfired, missed_own = 0, 0
    for command in commands:
        lanes = (command["lanes"][0] * lane_mm, (command["lanes"][-1] + 1) * lane_mm)
        reached = {p["id"] for p in particles if command["open_count"] <= p["crossing"] <= command["close_count"]
                   and p["x0_mm"] < lanes[1] and p["x1_mm"] > lanes[0]}
        misfired += not reached
        own = {by_seq[s]["owner"] for s in command["particles"] if s in by_seq}
        missed_own += not (own & reached)
    wrong_kept = [p for p in particles if ejected[p["id"]] and p["label"] not in product]
    for p in wrong_kept:
        collateral += not any(r["decided"] == "product" for r in decided[p["id"]])
    outcome = {"decided_once": 0, "decided_twice_or_more": 0, "never_merged": 0, "never_missed": 0}
    fragmented = 0
    for p in particles:
        n = len(decided[p["id"]])
        key = "decided_once" if n == 1 else "decided_twice_or_more" if n > 1 else \
            "never_merged" if p["id"] in merged else "never_missed"
        outcome[key] += 1
        p["outcome"] = key
        frames = [r["frame"] for r in decided[p["id"]]]
        fragmented += len(set(frames)) < len(frames)  # cut in pieces within a frame, not a tracking slip
    bins = {"end_to_end": grade_recovery(particles, lambda p: ejected[p["id"]], product),
            "classifier_alone": grade_recovery(particles, lambda p: alone_bins.get(p["id"]) == "product", product)}
    loss = None
    if bins["end_to_end"]["recovery"] is not None and bins["classifier_alone"]["recovery"] is not None:
        loss = round((bins["classifier_alone"]["recovery"] - bins["end_to_end"]["recovery"]) * 100, 2)
    causes = loss_causes(particles, decided, ejected, alone_bins, product)
    return {
        "true_particles": len(particles), "particle_events": len(records),
        "unmatched_events": sum(1 for r in records if not r["owner"]), "outcome": outcome,
        "decided_twice_in_one_frame": fragmented,
        "ejected": sum(ejected.values()), "pass_through": len(particles) - sum(ejected.values()),
        "bins": bins, "sorting_loss_points": loss, "sorting_loss_causes": causes,
        "misfires": {"commands": len(commands), "reach_no_particle": misfired, "miss_their_particle": missed_own,
                     "rest_ejected": len(wrong_kept), "rest_ejected_by_neighbours_air": collateral,
                     "particles_partly_blown": partial},
        "air": air(particles, commands, config, assumptions),
    }


def loss_causes(particles, decided, ejected, alone_bins, product):
    """The sorting loss split by cause, in recovery points: product particles the classifier alone ejects and the
    belt does not, by the first cause that applies (never decided; conflict; decided for the bar but the air missed
    it; its belt crop classified otherwise), less those the belt ejects and the classifier alone does not."""
    wanted = sum(p["area_mm2"] for p in particles if p["label"] in product)
    points = dict.fromkeys(("never_decided", "conflict", "air_missed", "classified_otherwise", "gained"), 0.0)
    for p in particles:
        if p["label"] not in product or ejected[p["id"]] == (alone_bins.get(p["id"]) == "product"):
            continue
        records = decided[p["id"]]
        if ejected[p["id"]]:
            cause = "gained"
        elif not records:
            cause = "never_decided"
        elif any(r["reason"] == "conflict" for r in records):
            cause = "conflict"
        elif any(r["bin"] == "product" for r in records):
            cause = "air_missed"
        else:
            cause = "classified_otherwise"
        points[cause] += (-1 if cause == "gained" else 1) * p["area_mm2"] / wanted * 100 if wanted else 0.0
    return {cause: round(value, 2) for cause, value in points.items()}


def grade_recovery(particles, ejected, product):
    """Grade (purity), recovery and mass pull of the ejected bin, and the pass-through's purity, by area."""
    feed = sum(p["area_mm2"] for p in particles)
    wanted = sum(p["area_mm2"] for p in particles if p["label"] in product)
    out = [p for p in particles if ejected(p)]
    out_area = sum(p["area_mm2"] for p in out)
    right = sum(p["area_mm2"] for p in out if p["label"] in product)
    rest_area = feed - out_area
    return {
        "grade": round(right / out_area, 4) if out_area else None,
        "recovery": round(right / wanted, 4) if wanted else None,
        "mass_pull": round(out_area / feed, 4) if feed else None,
        "pass_through_purity": round((rest_area - (wanted - right)) / rest_area, 4) if rest_area else None,
        "feed_grade": round(wanted / feed, 4) if feed else None,
    }


def air(particles, commands, config, assumptions):
    """Lane-milliseconds open (overlapping pulses on a lane counted once) x nozzle flow, per tonne of feed."""
    per_lane = {}
    for command in commands:
        for lane in command["lanes"]:
            per_lane.setdefault(lane, []).append((command["open_count"], command["close_count"]))
    counts_open = 0
    for spans in per_lane.values():
        end = None
        for start, stop in sorted(spans):
            if end is None or start > end:
                counts_open += stop - start
                end = stop
            elif stop > end:
                counts_open += stop - end
                end = stop
    lane_ms = counts_open / COUNTS_PER_MM / config.belt.speed_mm_s * 1000.0
    litres = lane_ms / 60_000.0 * assumptions["nozzle_nl_per_min"]
    density = assumptions["density_t_m3"]
    tonnes = sum(p["area_mm2"] * assumptions["thickness_share"] * p["size_mm"] * density.get(p["label"], 2.7)
                 for p in particles) * 1e-9  # mm^3 x t/m^3 = 1e-9 t
    nm3_t = litres / 1000.0 / tonnes if tonnes else None
    return {"lane_ms": round(lane_ms, 1), "air_nl": round(litres, 2), "feed_kg": round(tonnes * 1000.0, 3),
            "nm3_per_t": round(nm3_t, 2) if nm3_t is not None else None,
            "kwh_per_t": round(nm3_t * assumptions["kwh_per_nm3"], 3) if nm3_t is not None else None}


def unseen_specimens(split_csvs, limit, subsets=("test", "val", "calib")):
    """Specimens of the photos none of the runs (their split.csv files) was trained on, so models compared on a
    belt see the same feed: load_specimens reads a folder of links to them. A run on belt crops
    (mineralnet.data.belt) names its files .png: a row stands for the photo of the same class and stem."""
    import csv

    unseen = None
    for split_csv in split_csvs:
        with open(split_csv) as handle:
            stems = {os.path.splitext(row["path"])[0] for row in csv.DictReader(handle) if row["subset"] in subsets}
        unseen = stems if unseen is None else unseen & stems
    folder = tempfile.mkdtemp(prefix="belt_sim_photos_")
    for stem in sorted(unseen):
        photo = next(iter(glob.glob(os.path.join(scenes.MINET, glob.escape(stem) + ".*"))))
        os.makedirs(os.path.join(folder, os.path.dirname(stem)), exist_ok=True)
        os.symlink(photo, os.path.join(folder, os.path.dirname(stem), os.path.basename(photo)))
    scenes.MINET = folder
    return scenes.load_specimens(limit=limit)


def _plain(value):
    """numpy scalars as Python numbers, for json."""
    return value.item()


def table(rows):
    lines = ["| particles/frame (placed) | true particles | decided once / twice+ (in one frame) / never (merged, "
             "missed) | grade | recovery | mass pull | classifier alone: grade / recovery | sorting loss (points) | "
             "commands: reach none / miss own | rest ejected (neighbour's air) | particles/s | frame ms p50 / p95 | "
             "air Nm3/t |", "|" + "---|" * 13]
    for r in rows:
        e, a, o, m = r["bins"]["end_to_end"], r["bins"]["classifier_alone"], r["outcome"], r["misfires"]
        lines.append(
            f"| {r['particles_per_frame']} ({r['placed_per_frame']}) | {r['true_particles']} | {o['decided_once']} / "
            f"{o['decided_twice_or_more']} ({r['decided_twice_in_one_frame']}) / "
            f"{o['never_merged'] + o['never_missed']} ({o['never_merged']}, {o['never_missed']}) | {e['grade']} | "
            f"{e['recovery']} | {e['mass_pull']} | {a['grade']} / "
            f"{a['recovery']} | {r['sorting_loss_points']} | {m['commands']}: {m['reach_no_particle']} / "
            f"{m['miss_their_particle']} | {m['rest_ejected']} ({m['rest_ejected_by_neighbours_air']}) | "
            f"{r['speed']['particles_per_s']} | {r['speed']['frame_ms_p50']} / {r['speed']['frame_ms_p95']} | "
            f"{r['air']['nm3_per_t']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an exported .tflite (a --batch dynamic one: one call/frame)")
    parser.add_argument("--split", help="the run's split.csv (or several, comma-separated): use only the photos "
                        "not trained on (test, val, calib of every one; default: every photo)")
    parser.add_argument("--specimens", type=int, default=200, help="photos to cut specimens from")
    parser.add_argument("--counts", default="10,30,60", help="particles per frame, one run each")
    parser.add_argument("--feed-frames", type=int, default=60, help="frames of belt carrying the feed, per run")
    parser.add_argument("--touching", type=float, default=0.2, help="share of particles in touching pairs")
    parser.add_argument("--sizes", default="15,45", help="longer side range, mm")
    parser.add_argument("--step-mm", type=float, default=130.0, help="belt travel per frame (360 mm high frames)")
    parser.add_argument("--speed", type=float, default=1000.0, help="belt speed, mm/s")
    parser.add_argument("--ejector-mm", type=float, default=300.0, help="frame centre row to valve line, mm")
    parser.add_argument("--share", type=float, default=0.5, help="share of a particle's width the open lanes must "
                        "cover while its centre crosses the valve line for it to be ejected")
    parser.add_argument("--product", default=",".join(COPPER), help="classes the valve bar ejects")
    parser.add_argument("--product-share", type=float, default=0.3, help="share of particles of product classes")
    parser.add_argument("--confidence", type=float, default=0.6, help="[decision] confidence_threshold")
    parser.add_argument("--conflict", choices=("trim", "skip", "fire"), default="trim",
                        help="[valves] conflict: a pulse that would hit a particle to keep is trimmed, skipped or fired")
    parser.add_argument("--hit-share", type=float, default=0.0, help="[valves] hit_share: fire an untrimmable pulse "
                        "when the particles to keep it hits are at most this share of the area it ejects")
    parser.add_argument("--threshold", default="auto", help='[particles] threshold: a number, or "auto" (5 sigma of '
                        "the belt's noise)")
    parser.add_argument("--contact-model", default="", help="[particles] contact_model: a contact-line network "
                        "(benchmarks/contact_net.py writes one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the reports here")
    args = parser.parse_args(argv)
    measured = commit()  # the code the runs import now: others may commit while they run
    if args.split:
        specimens = unseen_specimens(args.split.split(","), args.specimens)
    else:
        specimens = scenes.load_specimens(limit=args.specimens)
    print(f"belt_sim: {len(specimens)} specimens, classes "
          f"{ {c: sum(s[2] == c for s in specimens) for c in sorted({s[2] for s in specimens})} }", file=sys.stderr)
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        started = time.perf_counter()
        row = simulate(args.model, specimens, count, args.feed_frames, args.touching,
                       tuple(float(s) for s in args.sizes.split(",")), args.step_mm, args.speed, args.ejector_mm,
                       args.share, tuple(args.product.split(",")), args.product_share, args.confidence, args.threads,
                       args.seed + count, conflict=args.conflict, hit_share=args.hit_share,
                       threshold=int(args.threshold) if args.threshold.isdigit() else args.threshold,
                       contact_model=args.contact_model)
        row["wall_s"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row, default=_plain), flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv, "model": args.model, "cpu": cpu_name(), "cores": os.cpu_count(),
                       "commit": measured, "load": os.getloadavg(), "assumptions": ASSUMPTIONS, "rows": rows}, handle,
                      indent=1, default=_plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
