"""Write the first 64 calibration images of ``data/fashion_calib.npz`` as 28x28 grayscale PNGs into
``data/fashion_png/`` (``python -m models.fashion_images``): calibration data as people keep it, for the
README's ``--data FOLDER --preprocess`` example. The npz holds pixel / 255, so ``--preprocess
mode=L,scale=1/255`` reads the same arrays back."""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
COUNT = 64


def main(folder: Path = HERE / "data" / "fashion_png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with np.load(HERE / "data" / "fashion_calib.npz") as z:
        images = z["input"][:COUNT, 0]
    for i, image in enumerate(images):
        pixels = np.rint(image * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png", optimize=True)


if __name__ == "__main__":
    main()
