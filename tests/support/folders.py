"""Class-folder trees of tiny images, for the folder and list-file tests."""

import os

import numpy as np
from PIL import Image


def write_tree(root, counts, size=8, ext='.png', seed=0) -> None:
    """``root/<class>/<i><ext>``: ``counts[class]`` random RGB images each.

    Args:
      root: the folder of class folders (made if missing).
      counts: class name -> number of images (0 makes an empty folder).
      size: side of the square images.
      ext: the images' extension (their format follows it).
      seed: seed of the pixels; each class has its own mean colour, so a
        model can learn something in one epoch.
    """
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(sorted(counts.items())):
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            pixels = rng.normal(60 * c + 40, 25, (size, size, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                os.path.join(folder, f'{i:03d}{ext}'))
