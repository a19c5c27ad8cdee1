"""Touching particles without a neck: a straight cut between two concavities of the blob's outline.

The watershed (edge/particles.py) splits touching particles at a neck of the distance map. Two particles pressed
together along a flat face leave no neck, but their outline still turns inwards where the contact line meets it:
two convexity defects. A cut between two such points is kept only when it makes both parts at least as convex as
the blob, each at least `PART_SOLIDITY` and at least the smallest particle's area, and when the image says there
are two specimens: the mean colours within `NEAR_PX` of the cut on its two sides differ by at least `colour_step`
(`[particles] split_colour`: Euclidean distance of the mean RGB, 0-255 levels, the same in any channel order) and
the cut runs along an edge (mean gradient on it at least `EDGE_RATIO` x the blob's median gradient). The colour and
edge tests are what keep single notched specimens whole (without them a third of the cuts fell on single
particles). The default step, 50, is high because at 35 a banded malachite of the tests' scenes was cut along a
band.

Measured on the simulator's touching pairs (benchmarks/RESULTS.md, "Touching pairs without a neck" and "The cut
tried on every blob"): pairs split 72.3 % -> 80.2 % over 6 feeds (328 pairs), single particles fragmented 2 of 669
before and after; tried also on blobs too convex for the watershed, 80.2 % -> 82.6 % (4 of 669 fragmented) and
80.4 % -> 84.5 % on 10 feeds not looked at before (5 -> 6 of 1087).
"""

import itertools
import math

import cv2
import numpy as np

DEFECTS = 8  # the deepest concavities tried, in pairs (28 cuts at most)
PART_SOLIDITY = 0.7
EDGE_RATIO = 1.6
NEAR_PX = 6


def solidity(points):
    """Area of a closed polygon (an outline) over the area of its convex hull (1 for a convex shape or an empty
    hull)."""
    hull = cv2.contourArea(cv2.convexHull(points))
    return cv2.contourArea(points) / hull if hull > 0 else 1.0


def deepest_notch(outline):
    """Depth in px of the outline's deepest concavity (its largest convexity defect), 0 for a convex outline; infinite
    for an outline that touches itself, whose defects OpenCV cannot measure."""
    try:
        defects = cv2.convexityDefects(outline, cv2.convexHull(outline, returnPoints=False))
    except cv2.error:
        return math.inf
    return 0.0 if defects is None or len(defects) == 0 else float(defects.reshape(-1, 4)[:, 3].max()) / 256.0


def _chord_inside(outline, p, q, samples=5):
    """Whether the straight cut from p to q stays inside the outline (sampled along it)."""
    for t in np.linspace(0.0, 1.0, samples + 2)[1:-1]:
        point = (float(p[0] + t * (q[0] - p[0])), float(p[1] + t * (q[1] - p[1])))
        if cv2.pointPolygonTest(outline, point, False) < 0:
            return False
    return True


def _cuts(outline, far, min_area_px):
    """[(convexity, first part's polygon, p, q)] of the cuts between every two concavities (outline indices `far`)
    that stay inside the blob and leave two parts of at least `min_area_px`, the most convex first. Polygon
    geometry only: the blob is rasterised again for the few cuts whose colours are looked at."""
    total = cv2.contourArea(outline)
    found = []
    for a, b in itertools.combinations(sorted(far), 2):
        first = outline[a:b + 1]
        second = np.concatenate([outline[b:], outline[:a + 1]])
        areas = cv2.contourArea(first), cv2.contourArea(second)
        if min(areas) < min_area_px or abs(sum(areas) - total) > 0.03 * total:
            continue  # crumbs, or polygons that overlap: the cut leaves the blob
        p, q = tuple(int(v) for v in outline[a, 0]), tuple(int(v) for v in outline[b, 0])
        if not _chord_inside(outline, p, q):
            continue
        found.append((min(solidity(first), solidity(second)), first, p, q))
    return sorted(found, key=lambda cut: -cut[0])


def concavity_cut(blob, pixels, min_area_px, depth_px, colour_step):
    """Two part masks (uint8, 255 inside, together the whole blob) of `blob` cut between two concavities, or None.

    `pixels`: the frame's pixels under the blob's box. Of the cuts that pass the module's tests, the one leaving the
    less convex part most convex is kept; the cut line's own pixels go to the first part.
    """
    outline = max(cv2.findContours(blob, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], key=cv2.contourArea)
    if len(outline) < 8:
        return None
    try:
        defects = cv2.convexityDefects(outline, cv2.convexHull(outline, returnPoints=False))
    except cv2.error:  # a self-touching outline: no cut
        return None
    if defects is None:
        return None
    defects = defects.reshape(-1, 4)
    defects = defects[defects[:, 3] / 256.0 >= depth_px]
    far = defects[np.argsort(-defects[:, 3])][:DEFECTS, 2]
    if len(far) < 2:
        return None
    least = max(PART_SOLIDITY, solidity(outline))
    cuts = [cut for cut in _cuts(outline, far, min_area_px) if cut[0] >= least]
    if not cuts:
        return None
    colours = pixels.astype(np.float32)
    typical = None  # the blob's median gradient, measured once a cut's colours differ
    for _, first, p, q in cuts:
        part = cv2.bitwise_and(cv2.fillPoly(np.zeros_like(blob), [first], 255), blob)
        parts = [part, cv2.bitwise_and(blob, cv2.bitwise_not(part))]
        near = cv2.line(np.zeros_like(blob), p, q, 255, 2 * NEAR_PX + 1) > 0
        sides = [colours[(side > 0) & near] for side in parts]
        if min(len(side) for side in sides) == 0 or \
                np.linalg.norm(sides[0].mean(axis=0) - sides[1].mean(axis=0)) < colour_step:
            continue
        if typical is None:
            grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.float32)
            gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
            inner = cv2.erode(blob, np.ones((5, 5), np.uint8)) > 0
            typical = float(np.median(gradient[inner])) if inner.any() else 0.0
        if float(gradient[cv2.line(np.zeros_like(blob), p, q, 255, 3) > 0].mean()) >= EDGE_RATIO * typical:
            return parts
    return None
