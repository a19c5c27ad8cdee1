"""Many particles per frame: segmentation of synthetic belt frames composed from real MINET-7 specimens.

The frames are built here: specimens cut out of their white photo backgrounds, scaled to known sizes and pasted at
known positions and lanes on a textured belt (fixed texture + fresh sensor noise per frame), some pairs touching.
"""

import glob
import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from edge.config import ConfigError, parse_config
from edge.cut import deepest_notch, solidity
from edge.particles import BackgroundModel, Segmenter, lanes_of
from helpers import MINET, REPO, requires_minet, runner_modules

MM_PER_PX = 0.5
WIDTH, HEIGHT = 1280, 720
BASE_CONFIG = (
    "[bins]\ndefault = \"mixed\"\nrecheck = \"recheck\"\n[belt]\nspeed_mm_s = 1000\ncamera_to_ejector_mm = 300\n"
)
PARTICLES = "[particles]\nmm_per_px = 0.5\nmin_mm = 6\nmax_mm = 80\nthreshold = 15\n"
VALVES = "[valves]\ncount = 32\nlane_mm = 20\nbin = \"mixed\"\n"
SIZES_MM = (16.0, 50.0)  # the documented size range the recall/precision figures hold for


def load_specimens(limit=40, seed=0):
    """(BGR pixels, mask, label) of MINET-7 photos shot on white: the specimen cut out by a simple threshold."""
    files = sorted(glob.glob(os.path.join(MINET, "*", "*.jpg")))
    rng = np.random.default_rng(seed)
    specimens = []
    for path in rng.permutation(files):
        image = cv2.imread(str(path))
        if image is None or min(image[:4, :4].mean(), image[-4:, -4:].mean(), image[:4, -4:].mean()) < 245:
            continue  # not shot on white
        mask = (image.min(axis=2) < 215).astype(np.uint8) * 255
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        largest = max(contours, key=cv2.contourArea)
        x, y, w, h = cv2.boundingRect(largest)
        filled = np.zeros(image.shape[:2], np.uint8)
        cv2.drawContours(filled, [largest], -1, 255, cv2.FILLED)
        filled, pixels = filled[y:y + h, x:x + w], image[y:y + h, x:x + w]
        fill = cv2.countNonZero(filled) / float(w * h)
        if w < 60 or h < 60 or not 0.45 < fill < 0.95 or max(w, h) > 2.5 * min(w, h):
            continue  # a fragment, a frame-filling photo or a needle: not a clean specimen
        specimens.append((pixels, filled, os.path.basename(os.path.dirname(str(path)))))
        if len(specimens) == limit:
            break
    return specimens


def make_belt(seed=1):
    """A textured dark belt: a slow brightness variation across it plus a fixed fine grain."""
    rng = np.random.default_rng(seed)
    slow = cv2.resize(rng.normal(0, 6, (9, 16)).astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 4, (HEIGHT, WIDTH)).astype(np.float32)
    base = np.array([58, 62, 66], np.float32)  # BGR
    return base + (slow + grain)[..., None]


def belt_frame(belt, rng):
    """One camera frame of the empty belt: the belt plus fresh sensor noise."""
    return np.clip(belt + rng.normal(0, 2.0, belt.shape), 0, 255).astype(np.uint8)


def paste(frame, truth, specimen, cx, cy, size_px, number):
    """Paste `specimen` scaled to a longer side of `size_px`, centred at (cx, cy); mark its pixels `number`."""
    pixels, mask, _ = specimen
    scale = size_px / max(mask.shape)
    w, h = max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale))
    pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST) > 127
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    frame[y0:y0 + h, x0:x0 + w][mask] = pixels[mask]
    truth[y0:y0 + h, x0:x0 + w][mask] = number


def compose_scene(specimens, belt, rng, count, pairs=0, sizes_mm=SIZES_MM):
    """A frame with `count` isolated particles and `pairs` touching pairs: (frame, truth labels, info per number)."""
    frame, truth = belt_frame(belt, rng), np.zeros((HEIGHT, WIDTH), np.int32)
    placed, info = [], {}  # placed: (cx, cy, radius px) of every footprint

    def free(cx, cy, radius):
        return all(np.hypot(cx - x, cy - y) > radius + r + 12 for x, y, r in placed)

    number = 0
    for kind in ["single"] * count + ["pair"] * pairs:
        for _ in range(500):
            size = rng.uniform(*sizes_mm) / MM_PER_PX
            reach = size * (1.1 if kind == "single" else 2.1)
            cx = rng.uniform(reach / 2 + 4, WIDTH - reach / 2 - 4)
            cy = rng.uniform(reach / 2 + 4, HEIGHT - reach / 2 - 4)
            if free(cx, cy, reach / 2):
                break
        else:
            continue  # no room left
        placed.append((cx, cy, reach / 2))
        if kind == "single":
            number += 1
            specimen = specimens[rng.integers(len(specimens))]
            paste(frame, truth, specimen, cx, cy, size, number)
            info[number] = {"pair": None, "label": specimen[2]}
            continue
        # Two particles side by side (random direction) whose footprints overlap by a few pixels: they touch.
        angle = rng.uniform(0, np.pi)
        offset = size * 0.5 - 3
        for sign in (-1, 1):
            number += 1
            specimen = specimens[rng.integers(len(specimens))]
            paste(frame, truth, specimen, cx + sign * offset * np.cos(angle), cy + sign * offset * np.sin(angle), size,
                  number)
            info[number] = {"pair": number - (sign > 0), "label": specimen[2]}
    return frame, truth, info


def segmenter(particles_config=PARTICLES, frames=()):
    config = parse_config(BASE_CONFIG + particles_config + VALVES)
    return Segmenter(config.particles, BackgroundModel(frames, config.particles.background_rate), config.valves), config


def match(particles, truth, info):
    """Detections matched to true particles: a detection is a particle's when its centroid lies on that particle."""
    found, false = {}, 0
    for particle in particles:
        x, y = (int(round(v)) for v in particle.centroid)
        number = int(truth[min(y, HEIGHT - 1), min(x, WIDTH - 1)])
        if number and number not in found:
            found[number] = particle
        else:
            false += 1
    return found, false


@pytest.fixture(scope="module")
def specimens():
    if not os.path.isdir(MINET):
        pytest.skip(f"real photos absent: {MINET}")
    found = load_specimens()
    assert len(found) >= 20, f"only {len(found)} MINET-7 photos on white could be cut out"
    return found


@requires_minet
def test_isolated_particles_found_with_their_lanes(specimens):
    rng = np.random.default_rng(7)
    belt = make_belt()
    seg, config = segmenter(frames=[belt_frame(belt, rng) for _ in range(5)])
    truths = detections = hits = false = lane_errors = 0
    for _ in range(6):
        frame, truth, info = compose_scene(specimens, belt, rng, count=20)
        result = seg.segment(frame)
        found, wrong = match(result.particles, truth, info)
        truths += len(info)
        detections += len(result.particles)
        hits += len(found)
        false += wrong
        for number, particle in found.items():
            xs = np.nonzero((truth == number).any(axis=0))[0]
            margin = config.valves.lane_margin_mm
            expected = lanes_of(xs[0] * MM_PER_PX - margin, (xs[-1] + 1) * MM_PER_PX + margin, config.valves)
            # An over-split specimen (already a false detection above) has the lanes of its fragment only.
            lane_errors += not particle.split and particle.lanes != expected
    recall, precision = hits / truths, (detections - false) / detections
    print(f"isolated: {truths} particles, recall {recall:.3f}, precision {precision:.3f}, lane errors {lane_errors}")
    # Measured: recall 1.000, precision 0.945. The 7 extra detections are photos of several rocks (MINET-7 shoots
    # some specimens in twos and threes: a bornite pair in 5 views, a malachite trio, a chrysocolla group) cut at a
    # contact, rightly; the chrysocolla group was kept whole while the flat-contact cut was tried only on blobs of
    # solidity under 0.9 (precision 0.952).
    assert recall >= 0.95 and precision >= 0.94
    assert lane_errors == 0


@requires_minet
def test_touching_pairs_are_mostly_separated(specimens):
    rng = np.random.default_rng(11)
    belt = make_belt()
    seg, _ = segmenter(frames=[belt_frame(belt, rng) for _ in range(5)])
    pairs = separated = 0
    for _ in range(6):
        frame, truth, info = compose_scene(specimens, belt, rng, count=4, pairs=8)
        found, _ = match(seg.segment(frame).particles, truth, info)
        firsts = {n for n, i in info.items() if i["pair"] == n}
        pairs += len(firsts)
        separated += sum(n in found and n + 1 in found for n in firsts)
    rate = separated / pairs
    print(f"touching pairs: {pairs}, both particles found separately in {rate:.3f}")
    # Measured 0.979 on 48 pairs with the flat-contact cut (edge/cut.py), 0.958 without it (seeds from the blob
    # before its closing of min_mm / 2); 0.833 with seeds from the closed blob, 0.75 with the old global marker
    # threshold and a 5 px closing.
    assert rate >= 0.9


def test_a_pair_pressed_along_a_flat_face_is_cut_where_the_colour_changes():
    """Two particles pressed together along a flat face leave no neck (the watershed finds one seed): the blob is
    cut between the two concavities where the contact meets the outline, because the colour changes along the cut.
    The same outline in one colour (a single notched specimen) stays whole, and so does the pair with
    `split_colour = 0` (the cut off, for a banded ore)."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    green, same = (60, 150, 60), (200, 180, 160)
    cases = ((green, [3500, 1200], ""), (same, [4700], ""), (green, [4700], "split_colour = 0\n"))
    for second, expected, extra in cases:
        seg, _ = segmenter(PARTICLES + extra, frames=[belt])
        frame = belt.copy()
        cv2.rectangle(frame, (400, 300), (469, 349), (200, 180, 160), -1)  # 70 x 50 px
        cv2.rectangle(frame, (470, 313), (519, 336), second, -1)  # 50 x 24 px, against its right face
        particles = seg.segment(frame, learn=False).particles
        areas = sorted((p.area_px for p in particles), reverse=True)
        # The closing rounds the concave corners, so the cut lands a few px off the face: within 10 % of the areas.
        assert len(areas) == len(expected) and np.allclose(areas, expected, rtol=0.1), (second, areas)


def test_a_pair_too_convex_for_the_watershed_is_cut_where_the_colour_changes():
    """A partner nearly as tall as the face it is pressed against leaves a blob more convex than split_solidity
    (0.93 here), which the watershed is not tried on: the cut between concavities still splits it by colour, and the
    same outline in one colour stays whole."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    seg, _ = segmenter(frames=[belt])
    for second, expected in (((60, 150, 60), [3500, 1700]), ((200, 180, 160), [5200])):
        frame = belt.copy()
        cv2.rectangle(frame, (400, 300), (469, 349), (200, 180, 160), -1)  # 70 x 50 px
        cv2.rectangle(frame, (470, 308), (519, 341), second, -1)  # 50 x 34 px, against its right face
        blob = cv2.findContours((frame != 60).any(axis=2).astype(np.uint8), cv2.RETR_EXTERNAL,
                                cv2.CHAIN_APPROX_SIMPLE)[0][0]
        assert solidity(blob) > seg.cfg.split_solidity
        areas = sorted((p.area_px for p in seg.segment(frame, learn=False).particles), reverse=True)
        assert len(areas) == len(expected) and np.allclose(areas, expected, rtol=0.1), (second, areas)


@pytest.fixture(scope="module")
def seam_network(tmp_path_factory):
    """A contact-line network with set weights (edge/contact.py's contract: 96 x 96 x 4 in, one map out) that marks
    the blob's pixels darker than 0.6 x 255: a dark seam. A belt-trained one is benchmarks/contact_net.py's."""
    import keras

    from mineralnet.export.convert import convert_network

    layer = keras.layers.Conv2D(1, 1, activation="sigmoid")
    inputs = keras.Input((96, 96, 4))
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.array([-50 / 3] * 3 + [30.0], np.float32).reshape(1, 1, 4, 1), np.zeros(1, np.float32)])
    path = tmp_path_factory.mktemp("contact") / "seam.tflite"
    path.write_bytes(convert_network(model, (1, 96, 96, 4)))
    return str(path)


def test_a_seam_without_neck_or_colour_step_is_split_by_the_contact_network(seam_network):
    """Two particles of one colour pressed along their whole face make a rectangle: no concavity, no colour step.
    The outline and colours keep it one particle; `contact_model` splits it at the dark seam the network marks, and
    leaves the same rectangle without a seam whole."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame = belt.copy()
    cv2.rectangle(frame, (400, 300), (543, 349), (200, 200, 200), -1)  # 144 x 50 px
    seamless = frame.copy()
    cv2.rectangle(frame, (470, 300), (473, 349), (110, 110, 110), -1)  # a 4 px seam: two 70 x 50 px particles
    contact = f'contact_model = "{seam_network}"\ncontact_notch = 0\n'  # a rectangle has no notch: show it all the same
    for extra, image, expected in (("", frame, [7200]), (contact, frame, [3600, 3600]), (contact, seamless, [7200])):
        seg, _ = segmenter(PARTICLES + extra, frames=[belt])
        areas = sorted((p.area_px for p in seg.segment(image, learn=False).particles), reverse=True)
        assert len(areas) == len(expected) and np.allclose(areas, expected, rtol=0.05), (extra, areas)
    assert seg.contact.asked == 1


def test_only_a_blob_whose_outline_has_a_notch_is_shown_to_the_contact_network(seam_network):
    """Where two particles touch, their outline turns in at both ends of the contact; on the simulator no pair was
    split by the network without such a notch, 0.098 x the blob's equal-area side at least, while half the singles
    it was asked about had none (benchmarks/RESULTS.md, "Asked only where the outline has a notch"). So by default
    (`contact_notch = 0.08`) the seam pair pressed into a rectangle is one particle and the network is not asked; the
    same pair with a step where the contact meets the outline is asked and split (fails on 5e38593: every whole blob
    was asked)."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    flat = belt.copy()
    cv2.rectangle(flat, (400, 300), (543, 349), (200, 200, 200), -1)
    cv2.rectangle(flat, (470, 300), (473, 349), (110, 110, 110), -1)  # the seam of the test above
    stepped = flat.copy()
    cv2.rectangle(stepped, (474, 330), (543, 349), (60, 60, 60), -1)  # the right particle 30 px high, not 50
    seg, _ = segmenter(PARTICLES + f'contact_model = "{seam_network}"\n', frames=[belt])
    for image, expected, asked in ((flat, [7200], 0), (stepped, [3600, 2100], 1)):
        outline = max(cv2.findContours((image != 60).any(axis=2).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)[0], key=cv2.contourArea)
        assert (deepest_notch(outline) >= 0.08 * math.sqrt(cv2.contourArea(outline))) == bool(asked)
        areas = sorted((p.area_px for p in seg.segment(image, learn=False).particles), reverse=True)
        assert np.allclose(areas, expected, rtol=0.05) and seg.contact.asked == asked, (areas, seg.contact.asked)


def test_only_new_material_whole_in_the_frame_is_split_or_shown_to_the_contact_network(seam_network):
    """Splitting is paid for only where a particle will be decided from the frame: a blob that is all material
    decided in an earlier frame (tracking's `decided` test, asked with the blob's centre and box) is one particle,
    unsplit; one cut by the frame's edge is split by its outline alone (fails on bc1a4e3: every blob was split and
    shown to the network, in each of its views)."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame = belt.copy()
    cv2.rectangle(frame, (400, 300), (543, 349), (200, 200, 200), -1)
    cv2.rectangle(frame, (470, 300), (473, 349), (110, 110, 110), -1)  # the seam of the test above
    edge = np.roll(frame, -300, axis=0)  # the same two particles on the frame's upstream edge (rows 0-49)
    seg, _ = segmenter(PARTICLES + f'contact_model = "{seam_network}"\ncontact_notch = 0\n', frames=[belt])
    asked_about = []

    def decided(centre, box):
        asked_about.append((*centre, *box))
        return True

    assert len(seg.segment(frame, learn=False, decided=decided).particles) == 1
    assert seg.contact.asked == 0 and np.allclose(asked_about, [(471.5, 324.5, 400, 300, 144, 50)])
    assert [p.cut for p in seg.segment(edge, learn=False, decided=lambda *blob: False).particles] == ["upstream"]
    assert seg.contact.asked == 0
    assert len(seg.segment(frame, learn=False, decided=lambda *blob: False).particles) == 2
    assert seg.contact.asked == 1
    pair = belt.copy()  # two discs joined by a neck: the watershed splits them, unless they are known
    cv2.circle(pair, (300, 500), 30, (200, 200, 200), -1)
    cv2.circle(pair, (357, 500), 30, (200, 200, 200), -1)
    assert len(seg.segment(pair, learn=False, decided=lambda *blob: False).particles) == 2
    assert len(seg.segment(pair, learn=False, decided=lambda *blob: True).particles) == 1


def test_a_blob_on_decided_material_is_counted_tracked_without_a_crop():
    """A blob the segmenter found on decided material (tracking's `decided` test) is `tracked` whatever tracking
    would test again, so it is never cropped: its crop was thrown away (fails on 1fc31dc: every particle was
    cropped, and tracked only by testing it again)."""
    from edge.track import BeltTracker

    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame = belt.copy()
    cv2.circle(frame, (300, 500), 30, (200, 200, 200), -1)
    cv2.circle(frame, (600, 300), 30, (200, 200, 200), -1)
    seg, _ = segmenter(frames=[belt])
    particles = seg.segment(frame, learn=False, decided=lambda centre, box: centre[0] < 450).particles
    assert [(p.known, p.crop is None) for p in sorted(particles, key=lambda p: p.centroid[0])] == [(True, True),
                                                                                                 (False, False)]
    fresh, _, outcomes = BeltTracker(_bar(), HEIGHT, 10.0).fresh(particles, 10.0)
    assert [p.centroid[0] > 450 for p in fresh] == [True] and outcomes["tracked"] == 1


def test_the_runner_asks_the_contact_network_once_per_pair_on_a_moving_belt(seam_network, tiny_export, write_config,
                                                                            make_runner, fake_clock):
    """The seam pair of the test above in two frames, the belt 20 mm (40 px) on in the second: split and decided in
    the first, and in the second one blob on decided particles, `tracked` without asking the network again (fails
    on bc1a4e3: asked in both frames, two particles `tracked`)."""
    from edge.sources import Frame

    belt = np.full((360, 640, 3), 60, np.uint8)
    path = write_config(particles={"mm_per_px": 0.5, "min_mm": 6.0, "threshold": 15, "background_frames": 1,
                                   "contact_model": seam_network, "contact_notch": 0.0},
                        valves={"count": 16, "lane_mm": 20.0, "bin": "mixed"})
    runner, events_path = make_runner(path, tiny_export["float32"], clock=fake_clock)
    runner.process(Frame("empty", fake_clock.now(), Image.fromarray(belt)))
    for frame_id, top in (("A", 100), ("B", 140)):  # the belt: 10 mm/s, 2 s a frame
        frame = belt.copy()
        cv2.rectangle(frame, (200, top), (343, top + 49), (200, 200, 200), -1)
        cv2.rectangle(frame, (270, top), (273, top + 49), (110, 110, 110), -1)
        runner.process(Frame(frame_id, fake_clock.now(), Image.fromarray(frame)))
        fake_clock.advance(2.0)
    assert [e["frame"] for e in map(json.loads, open(events_path)) if e["type"] == "particle"] == ["A", "A"]
    assert runner.segmenter.contact.asked == 1 and runner.particles.counts["tracked"] == 1


def test_tracking_tells_which_points_of_a_frame_lie_on_decided_particles():
    from edge.track import BeltTracker

    tracker = BeltTracker(_bar(), HEIGHT, 10.0)
    tracker.fresh([_particle((400, 200, 30, 40), (10, 11))], 10.0)
    later = tracker.decided(10.1)  # 100 mm = 200 px further down the frame: the particle spans rows 400-440
    assert later((416.5, 421.5), (400, 400, 30, 40)) and later((430.0, 400.0), (398, 398, 34, 44))
    assert not later((416.5, 221.5), (400, 200, 30, 40)) and not later((470.0, 421.5), (460, 400, 20, 40))
    assert not later((416.5, 421.5), (400, 400, 60, 40))  # a new particle beside it, merged into its blob
    assert not tracker.decided(None)((416.5, 421.5), (400, 400, 30, 40))  # no belt position: nothing is known


def test_a_network_that_is_not_a_contact_line_is_refused_in_one_line(tiny_export, tmp_path):
    from edge.contact import ContactLine
    from edge.model import ModelError

    with pytest.raises(ModelError, match=r"takes \(1, 32, 32, 3\) .* not \(1, S, S, 4\)"):
        ContactLine(tiny_export["float32"])
    with pytest.raises(ModelError, match="not found: set \\[particles\\] contact_model"):
        ContactLine(str(tmp_path / "none.tflite"))


def test_size_range_drops_and_counts_noise_and_clumps():
    """Blobs of known discs: below min_mm and above max_mm are counted, not returned; sizes and areas in mm."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    seg, _ = segmenter(frames=[belt])
    frame = belt.copy()
    for x, diameter_mm in ((100, 4), (310, 20), (600, 60), (1000, 100)):
        cv2.circle(frame, (x, 300), int(diameter_mm / MM_PER_PX / 2), (200, 180, 160), -1)
    result = seg.segment(frame, learn=False)
    assert [round(p.size_mm) for p in result.particles] == [20, 60]
    assert (result.too_small, result.too_large) == (1, 1)
    twenty = result.particles[0]
    assert abs(twenty.area_mm2 - np.pi * 100) / (np.pi * 100) < 0.05
    assert twenty.lanes == (7, 8)  # x 290..330 px = 145..165.5 mm: lanes of 20 mm, lane 8 from 160 mm
    assert twenty.crop.shape[0] == twenty.crop.shape[1] and twenty.crop.shape[2] == 3


def test_crop_is_one_specimen_centred_on_belt():
    """The preprocessing contract: square, specimen centred, margin `pad` of belt, a neighbour painted over by belt."""
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    seg, _ = segmenter(frames=[belt])
    frame = belt.copy()
    cv2.rectangle(frame, (400, 300), (459, 359), (0, 0, 250), -1)  # 60 px red square (BGR)
    cv2.circle(frame, (490, 330), 15, (250, 0, 0), -1)  # a blue neighbour inside the red one's crop
    cv2.rectangle(frame, (0, 600), (39, 639), (0, 250, 0), -1)  # a green one on the frame's edge
    result = seg.segment(frame, learn=False)
    red = next(p for p in result.particles if p.bbox == (400, 300, 60, 60))
    side = int(np.ceil(60 * 1.3))
    assert red.crop.shape == (side, side, 3)
    centre = red.crop[side // 2 - 20:side // 2 + 20, side // 2 - 20:side // 2 + 20]
    assert (centre == [0, 0, 250]).all()  # the frame's channel order
    border = np.concatenate([part.reshape(-1, 3) for part in (red.crop[:8], red.crop[-8:], red.crop[:, -8:])])
    assert (border == 60).all()  # belt all round: the blue neighbour is gone
    green = next(p for p in result.particles if p.bbox[0] == 0)
    assert (green.crop[:, :4] == 60).all()  # beyond the frame: belt colour


def test_background_learns_slowly_only_where_no_particle_is():
    belt = np.full((120, 160, 3), 60, np.uint8)
    seg, _ = segmenter(frames=[belt])
    frame = np.full_like(belt, 70)  # the whole belt got lighter by 10 levels
    cv2.circle(frame, (40, 60), 20, (220, 220, 220), -1)
    seg.segment(frame)
    mean = seg.background.mean
    assert np.allclose(mean[60, 140], 60 + 0.02 * 10)  # learnt at background_rate
    assert np.allclose(mean[60, 40], 60)  # under the particle: not learnt


def test_auto_threshold_follows_the_belts_noise_and_finds_a_dark_particle():
    """`threshold = "auto"`: 5 sigma of the noise measured between the empty-belt frames. The tests' belt (sensor
    noise sigma 2) gets 10, which finds a particle 12 grey levels darker than the belt that 15 misses; a noisier
    camera gets a higher one (fails on 9070975: "auto" refused)."""
    rng = np.random.default_rng(0)
    belt = make_belt()
    empty = [belt_frame(belt, rng) for _ in range(5)]
    auto = PARTICLES.replace("threshold = 15", 'threshold = "auto"')
    seg, _ = segmenter(auto, empty)
    assert seg.background.noise == pytest.approx(2.0, rel=0.1) and seg.threshold == 10
    frame = belt_frame(belt, rng)
    disc = np.zeros(frame.shape[:2], np.uint8)
    cv2.circle(disc, (400, 300), 30, 255, -1)  # 30 mm across
    frame[disc > 0] = np.clip(belt[disc > 0] - 12, 0, 255).astype(np.uint8)
    assert len(seg.segment(frame, learn=False).particles) == 1
    assert segmenter(frames=empty)[0].segment(frame, learn=False).particles == []  # threshold 15
    noisy = [np.clip(belt + rng.normal(0, 6.0, belt.shape), 0, 255).astype(np.uint8) for _ in range(3)]
    assert segmenter(auto, noisy)[0].threshold == 30  # 5 x 6
    with pytest.raises(ConfigError, match="background_frames to 2 or more"):
        parse_config(BASE_CONFIG + auto + "background_frames = 1\n" + VALVES)


def test_config_sections():
    assert parse_config(BASE_CONFIG).particles is None  # absent: one item per frame, as before
    config = parse_config(BASE_CONFIG + PARTICLES + VALVES)
    assert (config.particles.mm_per_px, config.valves.count, config.valves.lane_mm) == (0.5, 32, 20.0)
    with pytest.raises(ConfigError, match="particles.mm_per_px' is missing"):
        parse_config(BASE_CONFIG + "[particles]\nmin_mm = 5\n" + VALVES)
    with pytest.raises(ConfigError, match="particles.max_mm' is not above"):
        parse_config(BASE_CONFIG + "[particles]\nmm_per_px = 1\nmin_mm = 50\nmax_mm = 20\n" + VALVES)
    with pytest.raises(ConfigError, match=r"no \[valves\] section"):
        parse_config(BASE_CONFIG + PARTICLES)
    serial = parse_config(BASE_CONFIG + PARTICLES + VALVES + '[actuator]\ntype = "serial"\nport = "/dev/ttyUSB0"\n')
    assert serial.actuator.type == "serial"  # one VALVES line per command; modbus: the valve block
    with pytest.raises(ConfigError, match="actuator.type' is 'gpio', which cannot drive a valve bar"):
        parse_config(BASE_CONFIG + PARTICLES + VALVES + '[actuator]\ntype = "gpio"\npins = { mixed = 17 }\n')
    with pytest.raises(ConfigError, match=r"no \[particles\] section"):
        parse_config(BASE_CONFIG + VALVES)
    with pytest.raises(ConfigError, match="valves.bin' names no bin"):
        parse_config(BASE_CONFIG + PARTICLES + VALVES.replace("mixed", "recheck"))


@pytest.mark.parametrize("encoder", [False, True])
def test_serial_valve_lines(encoder, fake_clock):
    """`type = "serial"` with [particles]: one VALVES line per command, lanes as first and count, timed by delay
    (clock belt) or by encoder counts (written through pyserial's loop:// port, read back)."""
    from edge.drivers.serial_port import ValveSerialActuator
    from edge.valves import Command

    actuator = ValveSerialActuator("loop://", 115200, fake_clock, encoder=encoder)
    actuator.open()
    try:
        now = fake_clock.now()
        opening, closing = (65_530, 70) if encoder else (now + 0.25, now + 0.31)
        actuator.send(Command((4, 5, 6), opening, closing, (9,)), opening, "A")
        line = actuator._serial.readline().decode("ascii")
    finally:
        actuator.close()
    assert line == ("VALVES 4 3 @65530 @70\n" if encoder else "VALVES 4 3 250 60\n")


def test_lanes_of_edges():
    valves = parse_config(BASE_CONFIG + PARTICLES + VALVES).valves  # 32 lanes of 20 mm from 0
    assert lanes_of(0, 20, valves) == (0,)
    assert lanes_of(19.9, 20.1, valves) == (0, 1)
    assert lanes_of(-30, 10, valves) == (0,)
    assert lanes_of(630, 700, valves) == (31,)
    assert lanes_of(700, 720, valves) == ()
    assert lanes_of(10, 50, None) == ()


def test_no_tensorflow_imported():
    script = (
        "import sys, numpy as np\n"
        "from edge.particles import BackgroundModel, Segmenter\n"
        "from edge.config import parse_config\n"
        f"c = parse_config({BASE_CONFIG + PARTICLES + VALVES!r})\n"
        "belt = np.full((100, 100, 3), 60, np.uint8)\n"
        "s = Segmenter(c.particles, BackgroundModel([belt]), c.valves)\n"
        "f = belt.copy(); f[30:70, 30:70] = 200\n"
        "assert len(s.segment(f).particles) == 1\n"
        "import json; print(json.dumps(sorted(sys.modules)))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, timeout=60)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    assert "cv2" in modules
    assert [m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "mineralnet")] == []


def _random_crops(seed, count=5):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (int(s), int(s), 3), dtype=np.uint8) for s in rng.integers(20, 90, count)]


def _single_calls(path, crops):
    """Each crop through its own Model.classify, as a single picture is prepared (edge/preprocess.py prepare)."""
    from edge.model import Model
    from edge.preprocess import prepare

    single = Model(path)
    return np.stack([single.classify(prepare(Image.fromarray(c), None, single.input_size, single.input_dtype,
                                             single.input_scale, single.input_zero_point)) for c in crops])


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_crops_of_a_batch_1_export_are_classified_one_call_each(tiny_export, kind):
    """A batch-1 export is never resized (its reshapes hard-code the batch): one call per crop, each crop getting
    the probabilities a single picture gets."""
    from edge.model import Model
    from edge.classify import CropClassifier

    crops = _random_crops(5)
    classifier = CropClassifier(Model(tiny_export[kind]))
    assert not classifier.batched
    got = classifier.classify(crops)
    assert classifier.model.invocations == len(crops)
    np.testing.assert_allclose(got, _single_calls(tiny_export[kind], crops), atol=1e-5)
    assert classifier.classify([]).shape == (0, len(classifier.model.labels))


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_a_free_batch_export_classifies_all_crops_in_one_call(tiny_export_dynamic, kind):
    """`--batch dynamic` files: all crops of a frame in one invoke(), each row what a single call gives (float32 up
    to rounding, int8 exactly), through batch sizes that change and repeat, and single calls still right after."""
    from edge.model import Model
    from edge.classify import CropClassifier
    from edge.preprocess import prepare

    path = tiny_export_dynamic[kind]
    crops = _random_crops(6, count=7)
    expected = _single_calls(path, crops)
    classifier = CropClassifier(Model(path))
    assert classifier.batched
    for size in (7, 3, 3, 7, 1):
        before = classifier.model.invocations
        got = classifier.classify(crops[:size])
        assert classifier.model.invocations == before + 1
        if kind == "int8":
            np.testing.assert_array_equal(got, expected[:size])
        else:
            np.testing.assert_allclose(got, expected[:size], atol=1e-5)
    assert classifier.classify([]).shape == (0, len(classifier.model.labels))
    model = classifier.model  # allocated for 1 by the last batch; a plain classify after a batch of 3 is right too
    classifier.classify(crops[:3])
    tensor = prepare(Image.fromarray(crops[4]), None, model.input_size, model.input_dtype, model.input_scale,
                     model.input_zero_point)
    np.testing.assert_allclose(model.classify(tensor), expected[4], atol=1e-5)


def test_runner_classifies_a_frame_of_particles_in_one_call(tiny_export_dynamic, write_config, make_runner,
                                                            fake_clock, tmp_path):
    """[particles] with a `--batch dynamic` model: one interpreter call per frame, however many particles, each
    particle recorded."""
    from edge.sources import Frame
    from edge.drivers.jsonl import ValveJsonlActuator

    commands_path = tmp_path / "valves.jsonl"
    path = write_config(particles={"mm_per_px": MM_PER_PX, "background_frames": 1},
                        valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"})
    runner, events_path = make_runner(path, tiny_export_dynamic["float32"], clock=fake_clock,
                                      actuator_factory=lambda: ValveJsonlActuator(str(commands_path), fake_clock))
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    runner.process(Frame("empty", fake_clock.now(), Image.fromarray(belt)))
    for frame_id, xs in (("A", (200, 600, 1000)), ("B", (150, 350, 550, 750, 950))):
        frame = belt.copy()
        for x in xs:
            cv2.circle(frame, (x, 360), 30, (200, 180, 160), -1)
        before = runner.model.invocations
        runner.process(Frame(frame_id, fake_clock.now(), Image.fromarray(frame)))
        assert runner.model.invocations == before + 1, frame_id
        fake_clock.advance(100.0)  # the next frame shows a fresh stretch of belt
    particles = [e for e in map(json.loads, open(events_path)) if e["type"] == "particle"]
    assert [p["frame"] for p in particles] == ["A"] * 3 + ["B"] * 5


def _particle(bbox, lanes, centroid=None):
    from edge.particles import Particle

    x, y, w, h = bbox
    centroid = centroid or (x + w / 2, y + h / 2)
    return Particle(0, centroid, bbox, w * h, w * h * MM_PER_PX ** 2, 0.0, lanes, False, None)


def _bar(config_text=BASE_CONFIG + PARTICLES + VALVES, encoder=None):
    from edge.valves import ValveBar

    config = parse_config(config_text)
    if encoder is None:
        return ValveBar(config.belt, config.particles, config.valves, HEIGHT, 1.0 / config.belt.speed_mm_s)
    return ValveBar(config.belt, config.particles, config.valves, HEIGHT, encoder, modulus=1 << 16)


def test_valve_positions_on_clock_and_encoder_belts():
    """Belt 1000 mm/s, camera to valves 300 mm, 0.5 mm/px, 720 rows: a particle's leading edge at row 600 is 120 mm
    past the centre row, so its valves open 300 - 120 - 2 (margin) = 178 mm later, for 20 mm + 2 x 2 mm."""
    particle = _particle((400, 560, 30, 40), (10, 11))
    plan = _bar().plan(particle, 50.0)
    assert plan.lanes == (10, 11)
    assert plan.open_at == pytest.approx(50.178) and plan.close_at == pytest.approx(50.202)
    # Encoder: 4 counts per mm from capture count 65530 on a 16-bit counter: the due count wraps.
    plan = _bar(encoder=4.0).plan(particle, 65530)
    assert plan.open_at == pytest.approx((65530 + 178 * 4) % 65536) and plan.close_at == pytest.approx(
        (65530 + 202 * 4) % 65536)
    # The valve lead comes off the distance: 20 ms at 1000 mm/s = 20 mm earlier.
    lead = _bar(BASE_CONFIG.replace("camera_to_ejector_mm = 300", "camera_to_ejector_mm = 300\nvalve_lead_ms = 20")
                + PARTICLES + VALVES).plan(particle, 50.0)
    assert lead.open_at == pytest.approx(50.158)


def test_a_particle_in_two_overlapping_frames_is_decided_once():
    from edge.track import BeltTracker

    tracker = BeltTracker(_bar(), HEIGHT, 10.0)
    assert len(tracker.fresh([_particle((400, 200, 30, 40), (10, 11))], 10.0)[0]) == 1
    # 0.1 s later the belt has moved 100 mm = 200 px down the frame; a centroid 1.5 px off (segmentation noise).
    again = _particle((400, 400, 30, 40), (10, 11), centroid=(416.5, 421.5))
    other = _particle((600, 400, 30, 40), (15, 16))
    fresh, _, outcomes = tracker.fresh([again, other], 10.1)
    assert fresh == [other] and outcomes == {"tracked": 1}
    assert len(tracker.fresh([_particle((400, 200, 30, 40), (10, 11))], 11.0)[0]) == 1  # a new one, later


def test_arbitration_of_a_shared_lane():
    bar = _bar(BASE_CONFIG + PARTICLES + VALVES + 'conflict = "skip"\n')
    eject = bar.plan(_particle((400, 560, 30, 40), (10, 11)), 0.0)
    beside = bar.plan(_particle((430, 570, 30, 40), (11, 12)), 0.0)  # lane 11, overlapping time
    behind = bar.plan(_particle((430, 100, 30, 40), (11, 12)), 0.0)  # lane 11, long after
    commands, conflicts, hits = bar.arbitrate({1: eject}, {2: beside, 3: behind})
    assert (commands, conflicts, hits) == ([], [1], [])  # "skip": purity first, particle 1 rides on
    commands, conflicts, hits = bar.arbitrate({1: eject}, {3: behind})
    assert [c.particles for c in commands] == [(1,)] and commands[0].lanes == (10, 11) and conflicts == []
    fire = _bar(BASE_CONFIG + PARTICLES + VALVES + 'conflict = "fire"\n')
    commands, conflicts, hits = fire.arbitrate({1: eject}, {2: beside})
    assert [c.particles for c in commands] == [(1,)] and hits == [2]
    commands, conflicts, _ = bar.arbitrate({4: bar.plan(_particle((1270, 100, 10, 10), ()), 0.0)}, {})
    assert conflicts == [4]  # off the valve bar


def test_trimmed_pulses_miss_the_particles_kept():
    """The default `conflict = "trim"`: a neighbour beside loses the pulse its shared lanes, a neighbour behind on the
    same lanes shortens it; a pulse left without the particle's core is not fired (fails on a778763: skipped)."""
    bar = _bar()  # lane_mm 20 at 0.5 mm/px: lane 10 spans x 200-220 mm, the particle below 200-215 mm
    eject = bar.plan(_particle((400, 560, 30, 40), (10, 11)), 0.0)  # 20 mm long + 2 x 2 mm margin: 24 mm of pulse
    beside = bar.plan(_particle((430, 570, 30, 40), (11, 12)), 0.0)
    commands, conflicts, hits = bar.arbitrate({1: eject}, {2: beside})
    assert commands[0].lanes == (10,) and (commands[0].open_at, commands[0].close_at) == (eject.open_at,
                                                                                            eject.close_at)
    assert conflicts == [] and hits == [] and not bar.overlap(commands[0], beside)
    behind = bar.plan(_particle((400, 530, 30, 30), (10, 11)), 0.0)  # touching it upstream: its pulse opens 20 mm on
    commands, conflicts, _ = bar.arbitrate({1: eject}, {3: behind})
    assert commands[0].lanes == (10, 11) and commands[0].open_at == eject.open_at
    assert commands[0].close_at == pytest.approx(behind.open_at) == pytest.approx(eject.open_at + 0.020)
    assert not bar.overlap(commands[0], behind)  # the core, 6-18 mm of the pulse, is still covered
    closer = bar.plan(_particle((400, 525, 30, 40), (10, 11)), 0.0)  # opens 17.5 mm on: inside the core
    assert bar.arbitrate({1: eject}, {4: closer})[:2] == ([], [1])
    narrow = bar.plan(_particle((410, 560, 30, 40), (10, 11)), 0.0)  # x 205-220 mm: lane 10 spans all of it
    wide = bar.plan(_particle((380, 560, 60, 40), (9, 10, 11)), 0.0)  # x 190-220 mm: lane 10 spans 2/3 of it
    left = bar.plan(_particle((360, 560, 20, 40), (9,)), 0.0)
    assert bar.arbitrate({5: narrow}, {6: left, 2: beside})[0][0].lanes == (10,)
    half = _bar(BASE_CONFIG + PARTICLES + VALVES + "cover = 0.7\n")
    assert half.arbitrate({7: wide}, {6: left, 2: beside})[:2] == ([], [7])  # 2/3 of its width < 0.7
    assert bar.arbitrate({7: wide}, {6: left, 2: beside})[0][0].lanes == (10,)


def test_hit_share_fires_an_untrimmable_pulse_when_the_neighbour_is_small():
    """`[valves] hit_share`: a pulse that cannot be trimmed is fired when the particles to keep it hits are at most
    that share of the area it ejects, and they are counted `hit`; a larger neighbour still vetoes it (fails on 9070975:
    no hit_share, every untrimmable pulse skipped)."""
    def plan(bar, box, lanes):
        return bar.plan(_particle(box, lanes), 0.0)

    share = _bar(BASE_CONFIG + PARTICLES + VALVES + "hit_share = 0.3\n")
    eject = plan(share, (400, 540, 40, 60), (10, 11))  # 20 x 30 mm: 600 mm2
    small = plan(share, (410, 560, 20, 20), (10, 11))  # inside its lanes and passage: no trim leaves it out
    large = plan(share, (400, 550, 40, 50), (10, 11))
    assert small.area_mm2 == 100.0 and eject.area_mm2 == 600.0
    assert share.trim(eject, [small]) is None
    commands, conflicts, hits = share.arbitrate({1: eject}, {2: small})  # 100 / 700 = 0.14 <= 0.3
    assert [c.particles for c in commands] == [(1,)] and commands[0].lanes == (10, 11) and hits == [2]
    assert share.arbitrate({1: eject}, {3: large})[1:] == ([1], [])  # 500 / 1100 = 0.45 > 0.3: skipped
    assert _bar().arbitrate({1: eject}, {2: small})[1:] == ([1], [])  # default 0: purity first


@requires_minet
def test_runner_sorts_every_particle_once(specimens, tiny_export, write_config, make_runner, fake_clock, tmp_path):
    """End to end with the real tiny model: belt learned, particles decided once across two overlapping frames,
    one valve command per ejected particle at its lanes and due time, records, summary with recovery and purity."""
    from types import SimpleNamespace

    from edge.sources import Frame
    from edge.drivers.jsonl import ValveJsonlActuator

    commands_path = tmp_path / "valves.jsonl"
    path = write_config(
        particles={"mm_per_px": MM_PER_PX, "min_mm": 6.0, "max_mm": 80.0, "threshold": 15, "background_frames": 3},
        valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"},
        actuator={"path": str(commands_path)},
        belt={"speed_mm_s": 10.0, "camera_to_ejector_mm": 1000.0, "valve_lead_ms": 0.0},
        # The tiny model never saw minerals: a low cutoff and three classes to the bar's bin give some ejections.
        decision={"confidence_threshold": 0.3},
        bins={"classes": {label: "bin_c" if i == 2 else "bin_a" for i, label in enumerate(tiny_export["labels"])}},
    )
    runner, events_path = make_runner(
        path, tiny_export["float32"], clock=fake_clock,
        actuator_factory=lambda: ValveJsonlActuator(str(commands_path), fake_clock),
    )
    rng = np.random.default_rng(3)
    belt = make_belt()
    first, truth, info = compose_scene(specimens, belt, rng, count=12)
    # 5 s later the belt has moved 50 mm = 100 px down the frame: the same particles, shifted, on fresh belt noise.
    second, shifted = belt_frame(belt, rng), np.zeros_like(truth)
    shifted[100:], moved = truth[:-100], truth[:-100] > 0
    second[100:][moved] = first[:-100][moved]
    minerals = sorted({i["label"] for i in info.values()})
    truths = {}  # bbox -> the true class, as one of the tiny model's labels (0 goes to bin_a, 2 to bin_c)

    def truth_of(frame_id, particle):
        x, y = (int(round(v)) for v in particle.centroid)
        number = int((truth if frame_id == "A" else shifted)[y, x])
        label = tiny_export["labels"][minerals.index(info[number]["label"]) % 2 * 2] if number else None
        truths[tuple(particle.bbox)] = label
        return label

    runner.truth = truth_of
    for frame_id, pixels in [("e1", belt_frame(belt, rng)), ("e2", belt_frame(belt, rng)),
                             ("e3", belt_frame(belt, rng)), ("A", first), ("B", second)]:
        runner.process(Frame(frame_id, fake_clock.now(), Image.fromarray(pixels[..., ::-1].copy())))
        fake_clock.advance(5.0)
    summary = runner.summary(SimpleNamespace(dropped=0, source_errors=0), "end of source")
    runner.actuator.close()
    events = [json.loads(line) for line in open(events_path)]
    assert [e["frames"] for e in events if e["type"] == "belt_learned"] == [3]
    particles = [e for e in events if e["type"] == "particle"]
    assert {p["frame"] for p in particles} == {"A"}  # frame B shows the same particles again: none decided twice
    assert len(particles) == len(info)
    counts = summary["particles"]
    whole_in_b = sum(1 for n in info if (shifted == n).any() and not (shifted[-1] == n).any())
    assert counts["leaving"] == len(info) - whole_in_b
    assert counts["tracked"] >= whole_in_b  # more when a particle came out in two pieces in frame B
    commands = [json.loads(line) for line in open(commands_path)]
    ejected = [p for p in particles if p["bin"] == "bin_a"]
    assert ejected and len(ejected) < len(particles)
    assert sorted(c["particles"][0] for c in commands) == sorted(p["seq"] for p in ejected)
    for command in commands:
        particle = next(p for p in particles if p["seq"] == command["particles"][0])
        assert command["lanes"] == particle["lanes"] and particle["decided"] == "bin_a"
        x, y, w, h = particle["bbox"]
        travel_mm = 1000.0 - (y + h - HEIGHT / 2) * MM_PER_PX - 2.0  # pulse margin 2 mm
        assert abs(command["due_in_ms"] - travel_mm / 10.0 * 1000.0) <= 1  # sent at the capture time (driven clock)
        assert command["pulse_ms"] == pytest.approx((h * MM_PER_PX + 4.0) / 10.0 * 1000.0)
    for particle in particles:
        assert particle["bin"] in ("bin_a", "recheck") and particle["area_mm2"] > 0 and particle["lanes"]
        assert particle["reason"] in ("confident", "uncertain", "conflict")
    assert summary["items"] == len(info) and counts["per_frame"]["max"] == len(info)
    uncertain = [p for p in particles if p["reason"] == "uncertain"]
    assert uncertain and len(list((tmp_path / "review").glob("*.jpg"))) == len(uncertain)  # each crop, none overwritten
    assert sum(counts["area_mm2_per_bin"].values()) == pytest.approx(sum(p["area_mm2"] for p in particles), abs=1)
    # Recovery and purity of bin_a by area, recomputed from the records and the truth given to the runner.
    in_a = [(truths[tuple(p["bbox"])] == tiny_export["labels"][0], p["bin"] == "bin_a", p["area_mm2"])
            for p in particles]
    wanted, landed = sum(a for t, _, a in in_a if t), sum(a for _, b, a in in_a if b)
    right = sum(a for t, b, a in in_a if t and b)
    bin_a = counts["truth"]["per_bin"]["bin_a"]
    assert bin_a["recovery"] == pytest.approx(right / wanted, abs=1e-3)
    assert bin_a["purity"] == (pytest.approx(right / landed, abs=1e-3) if landed else None)


@requires_minet
def test_runner_times_the_valve_bar_by_encoder_counts(specimens, tiny_export, write_config, make_runner, fake_clock,
                                                      tmp_path):
    """With `position = "modbus"` (a real Modbus server plays the PLC, 16-bit counter about to wrap) each command
    carries the counts at which its lanes open and close: capture count + distance x counts_per_mm, wrapped."""
    from edge.encoder import EncoderBelt
    from edge.sources import Frame
    from edge.drivers.jsonl import ValveJsonlActuator
    from test_edge_encoder import ADDRESS, EncoderPLC, free_port

    encoder = EncoderPLC(free_port(), registers=1).start()
    try:
        commands_path = tmp_path / "valves.jsonl"
        path = write_config(
            particles={"mm_per_px": MM_PER_PX, "min_mm": 6.0, "threshold": 15, "background_frames": 2},
            valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"},
            actuator={"path": str(commands_path)},
            belt={"speed_mm_s": 1000.0, "camera_to_ejector_mm": 300.0, "valve_lead_ms": 0.0, "position": "modbus"},
            encoder={"port": encoder.port, "address": ADDRESS, "registers": 1, "counts_per_mm": 4.0, "timeout_s": 0.5},
            decision={"confidence_threshold": 0.3},
            bins={"classes": {label: "bin_a" for label in tiny_export["labels"]}},
        )
        runner, events_path = make_runner(
            path, tiny_export["float32"], clock=fake_clock,
            actuator_factory=lambda: ValveJsonlActuator(str(commands_path), fake_clock, encoder=True),
            belt=lambda config, clock, events: EncoderBelt(config.encoder, config.belt, clock, events,
                                                           background=False),
        )
        rng = np.random.default_rng(4)
        belt = make_belt()
        scene, _, info = compose_scene(specimens, belt, rng, count=10)
        encoder.count = 65_000  # the belt stands still while the frame is decided: nothing is late
        for frame_id, pixels in [("e1", belt_frame(belt, rng)), ("e2", belt_frame(belt, rng)), ("A", scene)]:
            frame = Frame(frame_id, fake_clock.now(), Image.fromarray(pixels[..., ::-1].copy()))
            frame.position = runner.belt.read()
            runner.process(frame)
        runner.actuator.close()
        runner.belt.close()
    finally:
        encoder.stop()
    particles = [e for e in map(json.loads, open(events_path)) if e["type"] == "particle"]
    assert len(info) <= len(particles) <= len(info) + 2  # a photo of two touching rocks is rightly split in two
    assert all(p["position"] == 65_000 for p in particles)
    commands = [json.loads(line) for line in open(commands_path)]
    assert commands and len(commands) == sum(p["bin"] == "bin_a" for p in particles)
    for command in commands:
        particle = next(p for p in particles if p["seq"] == command["particles"][0])
        x, y, w, h = particle["bbox"]
        open_mm = 300.0 - (y + h - HEIGHT / 2) * MM_PER_PX - 2.0
        assert command["lanes"] == particle["lanes"]
        assert command["open_count"] == round(65_000 + open_mm * 4) % 65_536
        assert command["close_count"] == round(65_000 + (open_mm + h * MM_PER_PX + 4.0) * 4) % 65_536
    assert any(c["open_count"] < 65_000 for c in commands)  # the counter wrapped for some


@requires_minet
def test_cli_sorts_a_belt_folder_without_tensorflow(specimens, tiny_export, write_config, tmp_path):
    """The runner script on a folder of belt frames ([particles] set): belt learned, particles recorded, valve lines
    written, summary.json with its particles block; TensorFlow, Keras and mineralnet never imported."""
    rng = np.random.default_rng(8)
    belt = make_belt()
    folder = tmp_path / "belt"
    folder.mkdir()
    scene, _, info = compose_scene(specimens, belt, rng, count=8)
    for name, pixels in [("a1.png", belt_frame(belt, rng)), ("a2.png", belt_frame(belt, rng)), ("b.png", scene)]:
        cv2.imwrite(str(folder / name), pixels)
    config = write_config(
        particles={"mm_per_px": MM_PER_PX, "min_mm": 6.0, "threshold": 15, "background_frames": 2},
        valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"},
        decision={"confidence_threshold": 0.3},
        bins={"classes": {label: "bin_a" for label in tiny_export["labels"]}},
    )
    argv = [os.path.join(REPO, "edge", "runner.py"), "--model", tiny_export["float32"], "--source",
            f"folder:{folder}", "--config", config,
            "--events", str(tmp_path / "events.jsonl")]
    modules = runner_modules(argv, tmp_path)
    assert "cv2" in modules and "ai_edge_litert.interpreter" in modules
    assert [m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "mineralnet")] == []
    events = [json.loads(line) for line in open(tmp_path / "events.jsonl")]
    particles = [e for e in events if e["type"] == "particle"]
    # Every specimen decided once (a specimen photo may hold two touching rocks, rightly split in two).
    assert len(info) <= len(particles) <= len(info) + 2 and not [e for e in events if e["type"] == "item"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["items"] == len(particles) and summary["particles"]["frames"] == 1
    commands = [json.loads(line) for line in open(tmp_path / "commands.jsonl")]
    assert {c["type"] for c in commands} == {"valves"} and len(commands) == summary["per_bin"].get("bin_a", 0)


def test_a_decision_after_the_valve_opening_is_late(tiny_export, write_config, make_runner, fake_clock, tmp_path):
    """A frame whose particles have passed the valve bar by the time they are decided: nothing fires, all ride on."""
    from edge.sources import Frame
    from edge.drivers.jsonl import ValveJsonlActuator

    commands_path = tmp_path / "valves.jsonl"
    path = write_config(
        particles={"mm_per_px": MM_PER_PX, "background_frames": 1},
        valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"},
        bins={"classes": {label: "bin_a" for label in tiny_export["labels"]}},
    )
    runner, events_path = make_runner(path, tiny_export["float32"], clock=fake_clock,
                                      actuator_factory=lambda: ValveJsonlActuator(str(commands_path), fake_clock))
    belt = np.full((HEIGHT, WIDTH, 3), 60, np.uint8)
    frame = belt.copy()
    for x in (200, 600, 1000):
        cv2.circle(frame, (x, 360), 30, (200, 180, 160), -1)
    runner.process(Frame("empty", fake_clock.now(), Image.fromarray(belt)))
    # The tiny model never saw discs: a cutoff between its two best probabilities makes the discs confident.
    from edge.decision import Decider

    probabilities = runner.classifier.classify([p.crop for p in runner.segmenter.segmenter.segment(frame, learn=False).particles])
    best, second = np.sort(probabilities[0])[::-1][:2]
    runner.decider = Decider(runner.model.labels, runner.config.bins, None, (best + second) / 2)
    # Captured 200 s ago: at 10 mm/s the particles needed 100 s to reach the valves 1000 mm away.
    runner.process(Frame("old", fake_clock.now() - 200.0, Image.fromarray(frame)))
    particles = [e for e in map(json.loads, open(events_path)) if e["type"] == "particle"]
    assert len(particles) == 3
    assert {(p["decided"], p["bin"], p["reason"]) for p in particles} == {("bin_a", "recheck", "late")}
    assert not commands_path.exists() or commands_path.read_text() == ""
