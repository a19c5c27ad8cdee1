"""A learned contact line: touching particles split where neither their outline nor their colours tell.

The watershed (edge/particles.py) needs a neck between two particles and the cut (edge/cut.py) a colour step across
their contact; two particles of one mineral pressed along a face have neither, yet a contact line still shows (a
seam, a shadow, two textures meeting). `[particles] contact_model` names a small network that sees it: its input is
a blob's square crop (the blob in the top-left corner of a square of its longer side, scaled to the network's size
S), RGB 0-1 under the blob and the blob mask, (1, S, S, 4) float32; its output, (1, S, S, 1), is each pixel's
probability of lying on a contact between two particles. benchmarks/contact_net.py trains one on the belt
simulator's frames and writes it (one trained on a line's own labelled frames is what a plant should use; that
training is not built yet).

Only blobs the watershed and the cut leave whole, that hold at least two smallest particles, from which a particle
is decided (not one cut by the frame's edge, nor one tracking knows is decided material: edge/particles.py
Segmenter.segment) and whose outline turns in where a contact would meet it (a notch at least `[particles]
contact_notch` x the square root of the blob's area deep) are asked. The blob's pixels under THRESHOLD form seeds,
components of at least a quarter of the smallest particle's area; two or more are grown back over the blob by a
watershed on their distance map. Measured on the belt simulator (benchmarks/RESULTS.md, "A learned contact line",
"The contact line asked less", "Asked only where the outline has a notch"): pairs split 82.6-86.4 % -> 90.5-91.6 %
over 24 feeds, single particles fragmented as before; at 30 particles a frame it is asked ~4 times a frame, ~1.1 ms
each (int8, 2 threads), and the runner on 2 cores sorts ~340-410 particles/s instead of ~480-550 without it (~400-460
with benchmarks/contact_net.py's `--stem 2` network): it is off unless set.
"""

import os

import cv2
import numpy as np

from edge.model import ModelError, interpreter_class

THRESHOLD = 0.3  # of 0.3 and 0.5, the better on the feeds it was chosen on, and on the others too
PAD = 3  # belt pixels around the blob in its crop, as the network was trained


def network_input(pixels, blob, size):
    """((size, size, 4) float32, the square's side in px) of a padded blob (uint8 mask) and its pixels."""
    height, width = blob.shape
    side = max(height, width)
    image, mask = np.zeros((side, side, 3), np.uint8), np.zeros((side, side), np.uint8)
    image[:height, :width], mask[:height, :width] = pixels, blob
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.concatenate([image * mask[..., None], mask[..., None]], -1), side


class ContactLine:
    """A contact-line network (see the module); ModelError, one line naming the file and the fix, when it cannot be
    used."""

    def __init__(self, path, threads=None):
        fix = "set [particles] contact_model to a .tflite written by benchmarks/contact_net.py, or remove the key"
        if not os.path.isfile(path):
            raise ModelError(f"contact model '{path}' not found: {fix}.")
        try:
            self._interpreter = interpreter_class()(model_path=path, num_threads=threads)
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"contact model '{path}' cannot be loaded by the TFLite interpreter ({error}): {fix}.") \
                from None
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        size = int(self._input["shape"][1])
        shapes = [tuple(int(v) for v in t["shape"]) for t in (self._input, self._output)]
        if shapes != [(1, size, size, 4), (1, size, size, 1)] or self._input["dtype"] != np.float32:
            raise ModelError(f"contact model '{path}' takes {shapes[0]} and gives {shapes[1]}, not (1, S, S, 4) "
                             f"float32 to (1, S, S, 1): {fix}.")
        self.size = size
        self.asked = 0  # blobs asked about since loading

    def split(self, blob, pixels, least_px):
        """Part masks (uint8, 255 inside) of `blob` cut along the contacts the network sees, or None: one particle.
        `pixels`: the frame's pixels under the blob's box; `least_px`: the smallest seed."""
        self.asked += 1
        padded, tensor, to_blob = padded_input(blob, pixels, self.size)
        self._interpreter.set_tensor(self._input["index"], tensor[None])
        self._interpreter.invoke()
        contact = to_blob(self._interpreter.get_tensor(self._output["index"])[0, ..., 0])
        inner = ((padded > 0) & (contact < THRESHOLD)).astype(np.uint8)
        dist = cv2.distanceTransform(inner, cv2.DIST_L2, 5)
        shade = 255 - cv2.normalize(dist, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        return grow_seeds(padded, inner, least_px, shade)


def padded_input(blob, pixels, size):
    """(the blob padded by PAD, its network input (size, size, 4), a function taking a (size, size) map of the
    network back to the padded blob's shape)."""
    padded = cv2.copyMakeBorder(blob, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0)
    tensor, side = network_input(cv2.copyMakeBorder(pixels, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0),
                                 padded, size)
    height, width = padded.shape

    def to_blob(values):
        return cv2.resize(values, (side, side), interpolation=cv2.INTER_LINEAR)[:height, :width]

    return padded, tensor, to_blob


def grow_seeds(padded, inner, least_px, shade):
    """Part masks (uint8, 255 inside, PAD cut off) of the padded blob `padded`: the 4-connected components of `inner`
    (uint8 0/1) of at least `least_px` pixels are the seeds, grown over the blob by a watershed on `shade` (uint8,
    low where a part's inside is); None where fewer than two seeds stand."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inner, connectivity=4)
    seeds = [k for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] >= least_px]
    if len(seeds) < 2:
        return None
    markers = np.ones(padded.shape, np.int32)  # 1 = belt, 2.. = particles, 0 = to decide
    markers[padded > 0] = 0
    for number, k in enumerate(seeds, start=2):
        markers[labels == k] = number
    cv2.watershed(cv2.cvtColor(shade, cv2.COLOR_GRAY2BGR), markers)
    return [(((markers == n) & (padded > 0)).astype(np.uint8) * 255)[PAD:-PAD, PAD:-PAD]
            for n in range(2, len(seeds) + 2)]
