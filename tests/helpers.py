"""Test helpers shared across test folders (a module of its own name: every folder's conftest.py is `conftest`)."""

import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real MINET-7 photos: MINERALNET_MINET, else ../shared/data/minet_512 beside the checkout.
MINET = os.environ.get("MINERALNET_MINET") or os.path.join(os.path.dirname(REPO), "shared", "data", "minet_512")


def requires_minet(test):
    """Marks a test `data` (it reads the real photos) and skips it only where they are absent."""
    return pytest.mark.data(pytest.mark.skipif(not os.path.isdir(MINET), reason=f"real photos absent: {MINET}")(test))


def eca_reference(x, kernel):
    """ECA in plain NumPy: mean over space, zero-padded 'same' cross-correlation across channels, sigmoid."""
    pooled = x.mean(axis=(1, 2))
    k = len(kernel)
    padded = np.pad(pooled, ((0, 0), (k // 2, k // 2)))
    conv = np.stack([padded[:, i:i + pooled.shape[1]] for i in range(k)], axis=-1) @ kernel
    weights = 1 / (1 + np.exp(-conv))
    return x * weights[:, None, None, :]


def run_serialization_test(layer, inputs):
    """The round trips every registered layer must survive (as keras-hub's run_serialization_test): config ->
    layer, serialize -> deserialize by registered name, and a saved .keras model that reloads with identical
    outputs. Returns the reloaded model's output."""
    import tempfile

    import keras

    config = layer.get_config()
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    assert keras.saving.get_registered_name(type(layer)).startswith("mineralnet>")
    model_input = keras.Input(inputs.shape[1:])
    model = keras.Model(model_input, layer(model_input))
    expected = keras.ops.convert_to_numpy(model(inputs))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "layer.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
    got = keras.ops.convert_to_numpy(reloaded(inputs))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    return got


def runner_modules(argv, cwd):
    """Run edge/runner.py with `argv` (argv[0] = its path) in a fresh interpreter, which must exit 0; returns the
    names of every module it had imported by the end (to show what the device needs and what it never loads)."""
    import json

    script = (
        "import json, runpy, sys\n"
        f"sys.argv = {list(argv)!r}\n"
        "try:\n"
        f"    runpy.run_path({argv[0]!r}, run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


OLD_FEATURE_LAYER = "global_average_pooling2d"  # keras.applications' name of ConvNeXt's pooling before the builders named it


def with_old_layer_names(model, renames=None):
    """`model` (same weights) with layers renamed as an older version named them, {new: old}; default: the pooling
    layer as ConvNeXt and VGG19 model.keras files of older run directories have it. Stands for such a file."""
    import keras

    renames = renames or {"avg_pool": OLD_FEATURE_LAYER}

    def clone(layer):
        return layer.__class__.from_config({**layer.get_config(), "name": renames.get(layer.name, layer.name)})

    old = keras.models.clone_model(model, clone_function=clone)
    old.set_weights(model.get_weights())
    return old


def gated_folder(directory, clock, gate):
    """An edge FolderSource that holds its last frame until `gate` (a threading.Event) is set: a test looks mid-run."""
    from edge.sources import FolderSource

    class GatedFolder(FolderSource):
        def read(self):
            if len(self._paths) == 1:
                gate.wait(60)
            return super().read()

    return GatedFolder(directory, clock)


def belt_folder(tmp_path, tiny_export, count):
    """A folder of the tiny export's first `count` test pictures, each named LABEL_FILE: a source for a run."""
    folder = tmp_path / "belt"
    folder.mkdir()
    for row in tiny_export["test_rows"][:count]:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    return str(folder)


class HeldBackRun:
    """`runner` sorting `folder` in a thread while gated_folder holds its last frame back: construction returns
    once `items` items are sorted (or the run ended), so a test looks mid-run; finish() releases the frame, waits
    for the run and returns its summary (None if it failed)."""

    def __init__(self, runner, folder, items, **capture_options):
        from edge.sources import Capture

        self._gate, self._results = threading.Event(), {}
        capture = Capture(gated_folder(folder, runner.clock, self._gate), runner.clock, runner.events,
                          **capture_options)
        self._thread = threading.Thread(target=lambda: self._results.update(summary=runner.run(capture)))
        self._thread.start()
        while runner.tally.items < items and self._thread.is_alive():
            self._thread.join(0.01)

    def finish(self):
        self._gate.set()
        self._thread.join(60)
        return self._results.get("summary")


def run_python(args, env=None, timeout=600, check=True):
    """Run `python ARGS` from the repo root in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


SRGB_PRIMARIES_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))  # r, g, b XYZ
D50 = (0.9642, 1.0, 0.8249)


def icc_profile(space="RGB", primaries=SRGB_PRIMARIES_D50, gamma=1.0):
    """Bytes of a minimal ICC v2 profile built here, so tests need no profile file from the system.

    "RGB": a matrix/TRC display profile with the given (red, green, blue) XYZ colorants and one gamma curve for
    all three channels; "GRAY": a display profile with one gamma curve; "CMYK": a printer profile whose A2B0
    lut16 maps each ink corner to the sRGB primaries' naive mix (cyan = white minus red, black = black), so pure
    inks have an obvious sRGB answer. gamma 1.0 means linear-light values: sRGB's 128 grey is such a file's 55.
    """
    import struct

    def fixed(value):
        return struct.pack(">i", round(value * 65536))

    def xyz(values):
        return b"XYZ \0\0\0\0" + b"".join(fixed(v) for v in values)

    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = b"mineralnet test profile\0"
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(12) + bytes(67)),
            (b"cprt", b"text\0\0\0\0" + b"no copyright\0"), (b"wtpt", xyz(D50))]
    if space == "RGB":
        device, colour_space = b"mntr", b"RGB "
        tags += [(b"rXYZ", xyz(primaries[0])), (b"gXYZ", xyz(primaries[1])), (b"bXYZ", xyz(primaries[2])),
                 (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    elif space == "GRAY":
        device, colour_space = b"mntr", b"GRAY"
        tags += [(b"kTRC", curve)]
    elif space == "CMYK":
        device, colour_space = b"prtr", b"CMYK"
        clut = b""
        for c, m, y, k in ((c, m, y, k) for c in (0, 1) for m in (0, 1) for y in (0, 1) for k in (0, 1)):
            linear = [(1 - ink) * (1 - k) for ink in (c, m, y)]
            point = [sum(primaries[channel][axis] * linear[channel] for channel in range(3)) for axis in range(3)]
            clut += struct.pack(">3H", *(round(v * 32768) for v in point))  # lut16 XYZ: 0x8000 is 1.0
        identity = b"".join(fixed(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
        ramp = struct.pack(">2H", 0, 65535)
        lut = b"mft2\0\0\0\0" + bytes([4, 3, 2, 0]) + identity + struct.pack(">2H", 2, 2) + ramp * 4 + clut + ramp * 3
        tags += [(b"A2B0", lut)]
    else:
        raise ValueError(f"no test profile for colour space {space!r}")
    table, data = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">2I", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + bytes(4) + bytes([2, 0x10, 0, 0]) + device + colour_space + b"XYZ "
              + struct.pack(">6H", 2024, 1, 1, 0, 0, 0) + b"acsp" + bytes(24) + bytes(4)
              + b"".join(fixed(v) for v in D50) + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def swapped_primaries_profile():
    """A linear-light RGB profile whose red and green primaries are sRGB's green and red: a pure red pixel tagged
    with it is sRGB green, and its 128 grey (linear 0.5) is sRGB's 188."""
    red, green, blue = SRGB_PRIMARIES_D50
    return icc_profile("RGB", (green, red, blue))


def flat_blocks(colours, block=8):
    """A (block, block * len(colours), channels) uint8 array of flat squares, one per colour: JPEG keeps flat
    8x8 blocks nearly exact, so expected colours can be checked at block centres."""
    return np.concatenate([np.tile(np.array(c, np.uint8), (block, block, 1)) for c in colours], axis=1)


ORIENTED = {  # EXIF Orientation -> how the stored pixels become upright, written independently of Pillow
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def write_decode_cases(directory):
    """Files that test orientation and colour management: (usable {name: path}, unusable {name: path})."""
    from PIL import Image, ImageCms

    directory = str(directory)
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    swapped = swapped_primaries_profile()
    rng = np.random.default_rng(7)
    gradient = np.dstack([*np.meshgrid(np.linspace(0, 255, 20), np.linspace(0, 255, 12)), np.full((12, 20), 90.0)])
    gradient = gradient.astype(np.uint8)
    good = {}
    for orientation in ORIENTED:
        exif = Image.Exif()
        exif[0x0112] = orientation
        good[f"exif_{orientation}"] = path(f"exif_{orientation}.jpg")
        Image.fromarray(gradient).save(good[f"exif_{orientation}"], quality=95, exif=exif)
    primaries = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (128, 128, 128), (255, 255, 255), (0, 0, 0)]
    good["swapped_png"] = path("swapped.png")
    Image.fromarray(np.array([primaries], np.uint8)).save(good["swapped_png"], icc_profile=swapped)
    good["swapped_jpg"] = path("swapped.jpg")
    Image.fromarray(flat_blocks(primaries[:4])).save(good["swapped_jpg"], quality=100, subsampling=0,
                                                                icc_profile=swapped)
    rotated = Image.fromarray(flat_blocks([(255, 0, 0), (0, 0, 255)]))  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6
    good["swapped_rotated_jpg"] = path("swapped_rotated.jpg")
    rotated.save(good["swapped_rotated_jpg"], quality=100, subsampling=0, icc_profile=swapped, exif=exif)
    good["swapped_rgba_png"] = path("swapped_rgba.png")
    Image.fromarray(np.array([[[255, 0, 0, 255], [255, 0, 0, 0]]], np.uint8), "RGBA").save(
        good["swapped_rgba_png"], icc_profile=swapped)
    good["swapped_palette_png"] = path("swapped_palette.png")
    Image.fromarray(np.array([primaries[:2]], np.uint8)).convert("P").save(good["swapped_palette_png"],
                                                                            icc_profile=swapped)
    grey = np.array([[0, 55, 128, 255]], np.uint8)
    good["grey_png"] = path("grey_linear.png")
    Image.fromarray(grey).save(good["grey_png"], icc_profile=icc_profile("GRAY"))
    good["grey16_png"] = path("grey16_linear.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(good["grey16_png"], icc_profile=icc_profile("GRAY"))
    good["grey_rgb_profile_png"] = path("grey_rgb_profile.png")  # ImageMagick tags grey files with RGB profiles
    Image.fromarray(grey).save(good["grey_rgb_profile_png"], icc_profile=swapped)
    good["cmyk_jpg"] = path("cmyk.jpg")
    Image.fromarray(flat_blocks([(0, 255, 255, 0), (0, 0, 0, 128)]), "CMYK").save(
        good["cmyk_jpg"], quality=100, icc_profile=icc_profile("CMYK"))
    good["srgb_tagged_png"] = path("srgb_tagged.png")
    noise = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(noise).save(good["srgb_tagged_png"],
                                icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    good["untagged_png"] = path("untagged.png")
    Image.fromarray(noise).save(good["untagged_png"])
    bad = {"corrupt": path("corrupt_profile.png"), "mismatched": path("grey_profile_on_rgb.png")}
    Image.fromarray(noise).save(bad["corrupt"], icc_profile=b"not an ICC profile at all" * 8)
    Image.fromarray(noise).save(bad["mismatched"], icc_profile=icc_profile("GRAY"))
    return good, bad


def scraped_run(runner, folder, read):
    """Sort `folder` with `runner` while Prometheus (edge/telemetry.py) serves on 127.0.0.1; returns (summary,
    read(address) after the run)."""
    from edge.sources import Capture, FolderSource
    from edge.telemetry import Telemetry

    telemetry = Telemetry(runner.model)
    runner.attach_telemetry(telemetry)
    address = telemetry.serve("127.0.0.1", 0)
    try:
        summary = runner.run(Capture(FolderSource(str(folder), runner.clock), runner.clock, runner.events))
        return summary, read(address)
    finally:
        telemetry.close()
