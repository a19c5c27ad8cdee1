"""Photos as the belt shows them (issue 29, the crop gap): mineralnet/data/belt.py cuts a photo's specimen out, lays
it on a belt at the belt's scale and crops it by the sorter's contract; its command writes a dataset of such crops."""

import numpy as np
from PIL import Image

from mineralnet.data.belt import main


def test_a_belt_crop_centres_the_specimen_on_belt_with_the_sorters_margin():
    """A red square on white paper becomes a square crop: the specimen centred, at the belt's scale (its longer side
    drawn from size_mm at mm_per_px), with pad x its side of belt all round; a photo without a clean specimen
    (a plain picture) gives None."""
    from edge.preprocess import crop_square
    from mineralnet.data.belt import belt_crop

    photo = np.full((200, 200, 3), 250, np.uint8)
    photo[50:150, 60:140] = (200, 20, 20)  # 80 x 100 px
    belt = np.full((300, 400, 3), 60, np.uint8)
    crop = belt_crop(photo, belt, np.random.default_rng(0), size_mm=(20.0, 20.0), mm_per_px=0.5, pad=0.15)
    _, _, side = crop_square((0, 0, 32, 40), 0.15)  # 100 px scaled to 40 px (20 mm at 0.5 mm/px)
    assert crop.shape == (side, side, 3)
    red = np.all(crop == (200, 20, 20), axis=2)
    rows, cols = np.nonzero(red)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (40, 32)
    assert abs((rows.min() + rows.max()) / 2 - (side - 1) / 2) <= 1 and abs((cols.min() + cols.max()) / 2 - (side - 1) / 2) <= 1
    assert (crop[~red] == 60).all()  # the rest is belt
    assert belt_crop(np.full((200, 200, 3), 250, np.uint8), belt, np.random.default_rng(0)) is None



def test_the_command_writes_a_belt_crop_dataset_and_never_overwrites(tmp_path, capsys):
    data = tmp_path / "photos"
    for label, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
        (data / label).mkdir(parents=True)
        for number in range(3):
            photo = np.full((120, 160, 3), 245, np.uint8)
            photo[30 + number:90, 40:110 + number] = colour
            Image.fromarray(photo).save(data / label / f"{number}.jpg", quality=95)
        Image.fromarray(np.full((120, 160, 3), 245, np.uint8)).save(data / label / "blank.png")  # no specimen
    out = tmp_path / "belt"
    assert main(["--data", str(data), "--out", str(out)]) == 0
    assert "6 belt crops written" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "red").iterdir()) == ["0.png", "1.png", "2.png"]
    crop = np.asarray(Image.open(out / "blue" / "0.png"))
    assert crop.shape[0] == crop.shape[1] and (np.abs(crop.astype(int) - (20, 20, 200)).max(axis=2) < 40).any()
    assert main(["--data", str(data), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "exists: pass an empty --out folder" in error
