"""What a run may choose about its data: input size, the folder split.

    options = DataOptions.of(config)  # the fields of a run config
    splits = load_splits('folder', seed=0, data_dir='~/photos',
                         options=options)

Every field defaults to None, "the dataset's default", so a config.json
written before a field existed resumes as the same run.
"""

import math
import numbers
from typing import NamedTuple

from nhl_jax.errors import UsageError


class DataOptions(NamedTuple):
    """A run's choices about its dataset; None picks the default.

    Attributes:
      image_size: side of the square crop fed to the model, for images
        decoded from files (list-file and folder datasets). None: 224,
        after resizing the shorter side to 256 (torchvision's recipe);
        another size keeps that ratio (32: resize 37, crop 32).
      folder_query_fraction: share of each class's images that are
        queries (``--dataset=folder``), rounded, at least one and at most
        all but one. None: 0.1.
      folder_train_per_class: at most this many training images per class,
        drawn from the database (the images that are not queries). None:
        the whole database.
    """

    image_size: int | None = None
    folder_query_fraction: float | None = None
    folder_train_per_class: int | None = None

    @classmethod
    def of(cls, config) -> 'DataOptions':
        """The options of a run config (a ConfigDict or config.json's dict);
        a field that the config lacks is None."""
        return cls(*(config.get(name) for name in cls._fields))

    def given(self) -> list[str]:
        """The names of the fields that are set (not None)."""
        return [name for name, value in zip(self._fields, self)
                if value is not None]

    def check(self) -> 'DataOptions':
        """Returns the options; raises a one-line ``UsageError`` for a bad
        value, naming the field and a valid one."""
        for name in ('image_size', 'folder_train_per_class'):
            value = getattr(self, name)
            if value is not None and not (
                    isinstance(value, numbers.Integral)
                    and not isinstance(value, bool) and value > 0):
                raise UsageError(
                    f'{name} must be a positive int, got {value!r}; pass '
                    f'e.g. --config.{name}=32 (or leave it unset).')
        fraction = self.folder_query_fraction
        if fraction is not None and not (
                isinstance(fraction, numbers.Real)
                and not isinstance(fraction, bool)
                and math.isfinite(fraction) and 0 < fraction < 1):
            raise UsageError(
                f'folder_query_fraction must be a number in (0, 1), the '
                f'share of each class that are queries, got {fraction!r}; '
                'pass e.g. --config.folder_query_fraction=0.1.')
        return self
