"""Binary neural networks for ODH: layers, backbones, packed deployment.

The backbones are registered in ``nhl_jax.models.BACKBONES`` as
``bnn_cnn`` and ``reactnet18``.
"""

from nhl_jax.models.bnn import backbones
from nhl_jax.models.bnn import layers
from nhl_jax.models.bnn import packed
from nhl_jax.models.bnn.backbones import BinaryBlock
from nhl_jax.models.bnn.backbones import BinaryCNN
from nhl_jax.models.bnn.backbones import ReActNet18
from nhl_jax.models.bnn.layers import SIGNS
from nhl_jax.models.bnn.layers import BinaryConv3x3
from nhl_jax.models.bnn.layers import BinaryDense
from nhl_jax.models.bnn.layers import RPReLU
from nhl_jax.models.bnn.layers import RSign
from nhl_jax.models.bnn.layers import approx_sign
from nhl_jax.models.bnn.layers import binarize_weights
from nhl_jax.models.bnn.layers import get_sign
from nhl_jax.models.bnn.layers import ste_sign
from nhl_jax.models.bnn.layers import weight_scale
from nhl_jax.models.bnn.packed import ModelBytes
from nhl_jax.models.bnn.packed import model_bytes
from nhl_jax.models.bnn.packed import pack
from nhl_jax.models.bnn.packed import seconds_per_image

__all__ = [
    'BinaryBlock',
    'BinaryCNN',
    'BinaryConv3x3',
    'BinaryDense',
    'ModelBytes',
    'RPReLU',
    'RSign',
    'ReActNet18',
    'SIGNS',
    'approx_sign',
    'backbones',
    'binarize_weights',
    'get_sign',
    'layers',
    'model_bytes',
    'pack',
    'packed',
    'seconds_per_image',
    'ste_sign',
    'weight_scale',
]
