"""Datasets by name (offline, CIFAR, list files, folders), splits, batches."""

from nhl_jax.data.datasets import ArrayDataset
from nhl_jax.data.datasets import DatasetSpec
from nhl_jax.data.datasets import Protocol
from nhl_jax.data.datasets import Splits
from nhl_jax.data.datasets import check_dataset
from nhl_jax.data.datasets import export_split_ids
from nhl_jax.data.datasets import load_digits
from nhl_jax.data.datasets import load_mnist5k
from nhl_jax.data.datasets import load_split_ids
from nhl_jax.data.datasets import one_hot
from nhl_jax.data.datasets import split_by_class
from nhl_jax.data.datasets import split_digest
from nhl_jax.data.files import FileDataset
from nhl_jax.data.files import crop_sizes
from nhl_jax.data.files import from_list_split
from nhl_jax.data.folder import FolderError
from nhl_jax.data.folder import load_folder_splits
from nhl_jax.data.listfile import ListFileError
from nhl_jax.data.listfile import ListSplit
from nhl_jax.data.listfile import read_list_file
from nhl_jax.data.listfile import read_list_splits
from nhl_jax.data.options import DataOptions
from nhl_jax.data.pipeline import epoch_seed
from nhl_jax.data.pipeline import eval_batches
from nhl_jax.data.pipeline import image_shape
from nhl_jax.data.pipeline import steps_per_epoch
from nhl_jax.data.pipeline import train_batches
from nhl_jax.data.pipeline import train_dataset
from nhl_jax.data.registry import DATASETS
from nhl_jax.data.registry import FROM_DATA_DIR
from nhl_jax.data.registry import OWN_DATA
from nhl_jax.data.registry import config_spec
from nhl_jax.data.registry import get_spec
from nhl_jax.data.registry import load_splits
from nhl_jax.data.registry import spec_image_shape

__all__ = [
    'DATASETS',
    'FROM_DATA_DIR',
    'OWN_DATA',
    'ArrayDataset',
    'DataOptions',
    'DatasetSpec',
    'FileDataset',
    'FolderError',
    'ListFileError',
    'ListSplit',
    'Protocol',
    'Splits',
    'check_dataset',
    'config_spec',
    'crop_sizes',
    'epoch_seed',
    'eval_batches',
    'export_split_ids',
    'from_list_split',
    'get_spec',
    'image_shape',
    'load_digits',
    'load_folder_splits',
    'load_mnist5k',
    'load_split_ids',
    'load_splits',
    'one_hot',
    'read_list_file',
    'read_list_splits',
    'split_by_class',
    'spec_image_shape',
    'split_digest',
    'steps_per_epoch',
    'train_batches',
    'train_dataset',
]
