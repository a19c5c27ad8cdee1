"""A small synthetic dataset of procedurally textured "specimens", for the demo and the tests.

It is clearly synthetic (class names start with `synthetic_`): each class has its own colour palette and
texture (veins, speckles, bands, blotches...), drawn as an irregular blob on a noisy background, so a
working training loop separates the classes while a broken one does not.
"""

import os

import numpy as np
from PIL import Image

_STYLES = [
    ("synthetic_veined_green", (40, 140, 70), (210, 230, 200), "veins"),
    ("synthetic_speckled_gold", (180, 150, 40), (60, 50, 30), "speckles"),
    ("synthetic_banded_red", (170, 50, 40), (230, 180, 150), "bands"),
    ("synthetic_blotched_blue", (40, 80, 170), (140, 200, 230), "blotches"),
    ("synthetic_striated_grey", (110, 110, 115), (30, 30, 35), "stripes"),
    ("synthetic_checked_violet", (110, 50, 140), (220, 190, 240), "checks"),
]


def _texture(kind, size, rng):
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    if kind == "veins":
        return (np.abs(np.sin(u * rng.uniform(8, 14) + 3 * np.sin(y * 6 + phase))) < 0.25).astype(float)
    if kind == "speckles":
        return (rng.random((size, size)) < 0.12).astype(float)
    if kind == "bands":
        return (np.sin(u * rng.uniform(10, 16) + phase) > 0).astype(float)
    if kind == "blotches":
        coarse = rng.random((6, 6))
        return np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0 > 0.5
    if kind == "stripes":
        return (np.sin(u * rng.uniform(30, 40) + phase) > 0.6).astype(float)
    if kind == "checks":
        n = rng.uniform(5, 9)
        return ((np.floor(x * n + phase) + np.floor(y * n)) % 2).astype(float)
    raise ValueError(kind)


def make_specimen(style_index, size, rng):
    """One synthetic specimen photo of class `style_index` as a (size, size, 3) uint8 array."""
    _, base, accent, kind = _STYLES[style_index]
    pattern = np.asarray(_texture(kind, size, rng), dtype=float)[..., None]
    colour = (1 - pattern) * np.array(base) + pattern * np.array(accent)
    colour *= rng.uniform(0.8, 1.2)  # lighting varies between photos
    y, x = np.mgrid[0:size, 0:size] / size - 0.5
    cx, cy = rng.uniform(-0.1, 0.1, 2)
    theta = np.arctan2(y - cy, x - cx)
    radius = 0.3 + 0.08 * np.sin(3 * theta + rng.uniform(0, 6)) + rng.uniform(-0.05, 0.05)
    mask = (np.hypot(x - cx, y - cy) < radius)[..., None]
    background = np.full((size, size, 3), rng.uniform(150, 200)) + rng.normal(0, 8, (size, size, 3))
    image = np.where(mask, colour, background) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_dataset(directory, num_classes=4, images_per_class=40, image_size=96, seed=0):
    """Write a synthetic one-folder-per-class JPEG dataset to `directory` and return its path.

    Deterministic for a given seed. Existing files of the same name are overwritten.
    """
    if not 2 <= num_classes <= len(_STYLES):
        raise ValueError(f"num_classes must be between 2 and {len(_STYLES)}, got {num_classes}.")
    rng = np.random.default_rng(seed)
    for index in range(num_classes):
        folder = os.path.join(directory, _STYLES[index][0])
        os.makedirs(folder, exist_ok=True)
        for number in range(images_per_class):
            Image.fromarray(make_specimen(index, image_size, rng)).save(
                os.path.join(folder, f"{number:04d}.jpg"), quality=92
            )
    with open(os.path.join(directory, "README.txt"), "w") as handle:
        handle.write(
            "SYNTHETIC demo data made by mineralnet.data.make_demo_dataset: procedural textures, not photographs.\n"
        )
    return directory
