"""The operator sees the belt: the latest frame with each particle outlined in the colour of what became of it.

Green: ejected into a product bin (a single item's bin, or the valve bar's); orange: uncertain, to recheck; blue:
rides on (another bin on a belt of many); red: late, error, conflict or no position; grey: not decided in this
frame (tracked, entering, leaving). The sorting thread only keeps a reference to the frame and its particles
(`show`); the page's thread draws them (`jpeg`), so the line page costs the sorting nothing per frame.
"""

import io

import numpy as np
from PIL import Image

COLOURS = {"product": (40, 200, 60), "uncertain": (255, 160, 0), "rides": (80, 140, 255), "fault": (230, 40, 40),
           "seen": (190, 190, 190)}
FAULTS = ("late", "error", "conflict", "no_position")


class BeltView:
    def __init__(self, roi, recheck, product=None):
        """`product`: the valve bar's bin on a belt of many (other bins ride on), None for single items (every bin
        but recheck is ejected)."""
        self.roi, self.recheck, self.product = roi, recheck, product
        self._latest = None  # (image, [(bbox, mask, colour key)])

    def colour(self, bin_name, reason):
        if reason in FAULTS:
            return "fault"
        if reason == "uncertain":
            return "uncertain"
        if bin_name != self.recheck and (self.product is None or bin_name == self.product):
            return "product"
        return "rides"

    def show(self, image, particles, outcome):
        """The frame as segmented (Pillow RGB or an RGB array) and its particles; `outcome` {index: (bin, reason)}
        of those decided."""
        marks = [(p.bbox, p.mask, self.colour(*outcome[p.index]) if p.index in outcome else "seen")
                 for p in particles]
        self._latest = (image, marks)

    def jpeg(self, width=640):
        """The latest frame's region of interest, outlined and scaled to `width`, as JPEG bytes; None before one."""
        latest = self._latest
        if latest is None:
            return None
        image, marks = latest
        pixels = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        if self.roi is not None:
            x, y, w, h = self.roi
            pixels = pixels[y:y + h, x:x + w]
        pixels = pixels.copy()  # the outlines are drawn on it
        for (x, y, w, h), mask, key in marks:
            if mask is None:
                mask = np.ones((h, w), bool)
            edge = mask & ~_eroded(_eroded(mask))
            region = pixels[y:y + h, x:x + w]
            region[edge[:region.shape[0], :region.shape[1]]] = COLOURS[key]
        out = Image.fromarray(pixels)
        if out.width > width:
            out = out.resize((width, max(1, round(out.height * width / out.width))), Image.BILINEAR)
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=85, subsampling=0)  # full-resolution colour: the outlines are thin
        return buffer.getvalue()


def _eroded(mask):
    """The mask less its boundary pixels (4-neighbourhood; outside the box counts as background)."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
