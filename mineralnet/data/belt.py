"""Photos as the belt shows them: each specimen cut out of its photo and laid on a belt at the belt's scale, then
cropped by the sorter's own contract (edge/preprocess.py crop_square), so training can see, and evaluation can
measure, what the edge runner classifies.

A photo of a specimen on paper and a segmented particle on a belt are two distributions: on a synthetic belt of
MINET-7 specimens the tests' models scored 0.66 on belt crops against 0.74 on the photos (issue 29). Here:

* the specimen is found against its photo's background (the median colour of the photo's border): pixels that
  differ from it by more than `threshold` (largest of R, G, B), opened, the largest region with its holes filled.
  A photo whose region is under 2 % or over 90 % of the picture, or runs along more than a quarter of the border
  (a close-up, a cluttered background) has no clean specimen: it is left out and counted;
* the specimen is scaled to a size drawn from `size_mm` at `mm_per_px` (the belt's scale: 15-45 mm at 0.5 mm/px is
  30-90 px across) and laid on a random patch of the belt picture (an empty-belt frame of the line's camera, or a
  synthetic dark textured belt), then cropped: a square centred on its box, side = the longer side x (1 + 2 pad).

    python -m mineralnet.data.belt --data ores --out ores_belt [--belt empty_belt.png] [--pad 0.15]

writes a dataset of belt crops with the same class folders (train on it, or on both); `python -m
mineralnet.evaluate --run RUN --belt [empty_belt.png]` reports a run's accuracy on its test photos as belt crops
beside the photos.
"""

import argparse
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from edge.preprocess import IMAGE_EXTENSIONS, crop_square, open_rgb
from mineralnet.data.scan import DataError
from mineralnet.errors import cli

SIZE_MM = (15.0, 45.0)
MM_PER_PX = 0.5
PAD = 0.15  # edge/config.py [particles] pad's default
THRESHOLD = 30


def synthetic_belt(height=720, width=1280, seed=0):
    """A dark rubber belt: a slow brightness variation across it and a fine grain (RGB uint8)."""
    rng = np.random.default_rng(seed)
    slow = np.asarray(Image.fromarray(rng.normal(0, 6, (9, 16)).astype(np.float32), mode="F").resize(
        (width, height), Image.BICUBIC))
    grain = rng.normal(0, 4, (height, width)).astype(np.float32)
    return np.clip(np.array([66, 62, 58], np.float32) + (slow + grain)[..., None], 0, 255).astype(np.uint8)


def specimen_mask(pixels, threshold=THRESHOLD):
    """The specimen of a photo (H, W, 3 uint8) as a boolean mask, or None when the photo has no clean one."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    differs = np.abs(pixels.astype(np.int16) - background.astype(np.int16)).max(axis=2) > threshold
    differs = ndimage.binary_opening(differs, iterations=2)
    labels, count = ndimage.label(differs)
    if count == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(differs, labels, range(1, count + 1))))
    mask = ndimage.binary_fill_holes(labels == largest)
    share = mask.mean()
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]]).mean()
    if not 0.02 <= share <= 0.9 or edge > 0.25:
        return None
    return mask


def belt_crop(pixels, belt, rng, size_mm=SIZE_MM, mm_per_px=MM_PER_PX, pad=PAD, threshold=THRESHOLD):
    """One photo (H, W, 3 uint8) as the sorter would crop it off `belt` (an RGB uint8 picture); None when the photo
    has no clean specimen."""
    mask = specimen_mask(pixels, threshold)
    if mask is None:
        return None
    rows, cols = np.nonzero(mask)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    target = rng.uniform(*size_mm) / mm_per_px  # the specimen's longer side on the belt, px
    scale = target / max(y1 - y0, x1 - x0)
    w, h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    specimen = np.asarray(Image.fromarray(pixels[y0:y1, x0:x1]).resize((w, h), Image.BILINEAR))
    inside = np.asarray(Image.fromarray(mask[y0:y1, x0:x1].astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0
    _, _, side = crop_square((0, 0, w, h), pad)
    if side > min(belt.shape[:2]):
        raise DataError(f"a {side}-px crop does not fit the {belt.shape[1]}x{belt.shape[0]} belt picture: use a "
                         "larger belt picture or a smaller size_mm")
    top = int(rng.integers(0, belt.shape[0] - side + 1))
    left = int(rng.integers(0, belt.shape[1] - side + 1))
    crop = belt[top:top + side, left:left + side].copy()
    cx, cy, _ = crop_square((0, 0, w, h), pad)  # the box's origin inside the crop is -(x0, y0) of its square
    region = crop[-cy:-cy + h, -cx:-cx + w]
    region[inside] = specimen[inside]
    return crop


def load_belt(path=None):
    """The belt picture: an empty-belt frame from `path` (RGB), or the synthetic belt."""
    return np.asarray(open_rgb(path)) if path else synthetic_belt()


def write_belt_dataset(data_dir, out_dir, belt=None, pad=PAD, seed=0):
    """Every photo of `data_dir` (one folder per class) as a belt crop under `out_dir` (same folders, PNG);
    returns (written, left out: no clean specimen). Existing files are never overwritten."""
    belt = load_belt(belt)
    rng = np.random.default_rng(seed)
    written = left_out = 0
    for label in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, label)
        if not os.path.isdir(folder) or label.startswith("."):
            continue
        os.makedirs(os.path.join(out_dir, label), exist_ok=True)
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            target = os.path.join(out_dir, label, os.path.splitext(name)[0] + ".png")
            if os.path.exists(target):
                raise DataError(f"'{target}' exists: pass an empty --out folder (nothing is overwritten).")
            crop = belt_crop(np.asarray(open_rgb(os.path.join(folder, name))), belt, rng, pad=pad)
            if crop is None:
                left_out += 1
                continue
            Image.fromarray(crop).save(target)
            written += 1
    return written, left_out


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="photos, one folder per class")
    parser.add_argument("--out", required=True, help="new folder for the belt crops (same class folders)")
    parser.add_argument("--belt", help="a picture of the empty belt from the line's camera (default: synthetic)")
    parser.add_argument("--pad", type=float, default=PAD, help=f"crop margin, as [particles] pad (default {PAD})")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written, left_out = write_belt_dataset(args.data, args.out, args.belt, args.pad, args.seed)
    print(f"{written} belt crops written to {args.out}; {left_out} photos left out (no clean specimen against their "
          "background)")


if __name__ == "__main__":
    main()
