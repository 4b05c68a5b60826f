"""Random image augmentations in JAX, run inside the jitted train step.

ODH's views (kornia in hly1998/OSH): RandomResizedCrop,
horizontal flip 0.5, ColorJitter(0.4, 0.8, 0.8, 0.2) with p = 0.8,
greyscale 0.2 and Gaussian blur 0.5, every probability multiplied by a
``strength`` (1 for the strong view, 0.5 for the weak one)::

    key = jax.random.fold_in(rng, step)          # threaded, so resumable
    x = images.astype(jnp.float32) / 255.0       # [B, H, W, C] in [0, 1]
    strong = augment(key, x, AugmentParams())
    weak = augment(key2, x, AugmentParams(), strength=0.5)

Every image draws its own parameters, from one [B, 14] array of uniforms
(one threefry call per batch keeps the compile time small). Grey images
(C = 1) are handled:
saturation, hue and greyscale leave them unchanged. Two simplifications:
a crop that does not fit is clipped to the image (torchvision retries ten
times, then centre-crops), and the hue shift is a rotation in YIQ space
(kornia shifts H in HSV; both rotate the hue circle, the results differ
slightly in saturated colours).
"""

import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from nhl_jax.types import Array, PRNGKey

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision and kornia


class AugmentParams(NamedTuple):
    """Augmentation settings; the defaults are ODH's (kornia's) values.

    Attributes:
      crop_scale: range of the crop's area as a fraction of the image.
      crop_ratio: range of the crop's aspect ratio w / h.
      crop_prob: probability of cropping (then resized back to H x W).
      flip_prob: probability of a horizontal flip.
      jitter: (brightness, contrast, saturation, hue) strengths: factors
        drawn from [1 - v, 1 + v] (hue: a shift in [-v, v] of the circle).
      jitter_prob: probability of the colour jitter.
      grey_prob: probability of turning an RGB image grey.
      blur_prob: probability of a Gaussian blur.
      blur_sigma: range of the blur's standard deviation in pixels.
      blur_size: kernel side as a fraction of H (made odd, at least 3).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_prob: float = 1.0
    flip_prob: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.8, 0.8, 0.2)
    jitter_prob: float = 0.8
    grey_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_size: float = 0.1


ODH_PARAMS = AugmentParams()

# Columns of the uniforms one image draws (one random call for the batch:
# every jax.random call compiles its own threefry hash).
_U_CROP, _U_FLIP, _U_JITTER, _U_GREY, _U_BLUR = 0, 5, 6, 11, 12
NUM_UNIFORMS = 14


def augment(key: PRNGKey, images: Array,
            params: AugmentParams = ODH_PARAMS, *, strength=1.0) -> Array:
    """Crop, flip, colour jitter, greyscale and blur, per image.

    Args:
      key: PRNG key.
      images: [B, H, W, C] float in [0, 1], C = 1 or 3.
      params: the settings.
      strength: multiplies every probability (ODH's weak view: 0.5); a
        float, or [B] per image (both views of a step in one call).

    Returns:
      [B, H, W, C] float32 in [0, 1].
    """
    chex.assert_rank(images, 4)
    if images.shape[-1] not in (1, 3):
        raise ValueError(
            f'augment needs grey or RGB images [B, H, W, 1 or 3], got shape '
            f'{images.shape}.'
        )
    b = images.shape[0]
    strength = jnp.broadcast_to(jnp.asarray(strength, jnp.float32), (b,))
    u = jax.random.uniform(key, (b, NUM_UNIFORMS), jnp.float32)
    one = lambda u, x, s: _augment_one(u, x, params, s)
    return jax.vmap(one)(u, images.astype(jnp.float32), strength)


def _augment_one(u, x, params: AugmentParams, strength):
    x = random_resized_crop(u[_U_CROP:_U_FLIP], x, params.crop_scale,
                            params.crop_ratio,
                            prob=params.crop_prob * strength)
    x = _maybe(u[_U_FLIP], params.flip_prob * strength, x, x[:, ::-1])
    x = color_jitter(u[_U_JITTER:_U_GREY], x, params.jitter,
                     prob=params.jitter_prob * strength)
    x = _maybe(u[_U_GREY], params.grey_prob * strength, x,
               jnp.broadcast_to(grey(x), x.shape))
    size = max(3, int(params.blur_size * x.shape[0]) | 1)
    x = gaussian_blur(u[_U_BLUR:], x, params.blur_sigma, size,
                      prob=params.blur_prob * strength)
    return jnp.clip(x, 0.0, 1.0)


def _maybe(u, prob, x, transformed):
    """``transformed`` where the uniform u < prob, else ``x``."""
    return jnp.where(u < prob, transformed, x)


def _between(u, low, high):
    return low + (high - low) * u


def grey(x: Array) -> Array:
    """Luma [..., 1] of RGB pixels [..., 3]; grey pixels are returned as is."""
    if x.shape[-1] == 1:
        return x
    return x @ jnp.asarray(_GREY, x.dtype)[:, None]


def crop_box(u: Array, height: int, width: int, scale, ratio):
    """A crop (y0, x0, h, w) of area ~ U(scale) and log-uniform ratio.

    Args:
      u: [4] uniforms in [0, 1): area, log ratio, y0, x0.
      height, width: the image size.
      scale: range of the area fraction.
      ratio: range of w / h.

    Returns:
      Four float32 scalars; the box lies inside the image.
    """
    area = height * width * _between(u[0], *scale)
    r = jnp.exp(_between(u[1], math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.clip(jnp.sqrt(area * r), 1.0, width)
    h = jnp.clip(jnp.sqrt(area / r), 1.0, height)
    return u[2] * (height - h), u[3] * (width - w), h, w


def resize_box(x: Array, y0, x0, h, w) -> Array:
    """Bilinear resampling of the box (y0, x0, h, w) of x [H, W, C] to H x W.

    Pixel centres are mapped (half-pixel convention) and edges clamped, so
    the full box (0, 0, H, W) returns x exactly.
    """
    height, width = x.shape[:2]

    def axis(start, size, n):
        pos = start + (jnp.arange(n, dtype=jnp.float32) + 0.5) * size / n
        pos = jnp.clip(pos - 0.5, 0.0, n - 1.0)
        low = jnp.floor(pos)
        return (low.astype(jnp.int32),
                jnp.minimum(low + 1, n - 1).astype(jnp.int32), pos - low)

    r0, r1, fy = axis(y0, h, height)
    c0, c1, fx = axis(x0, w, width)
    fy, fx = fy[:, None, None], fx[None, :, None]
    rows = (1.0 - fy) * x[r0] + fy * x[r1]  # [H, W, C]
    return (1.0 - fx) * rows[:, c0] + fx * rows[:, c1]


def random_resized_crop(u: Array, x: Array, scale=(0.08, 1.0),
                        ratio=(3.0 / 4.0, 4.0 / 3.0), *,
                        prob=1.0) -> Array:
    """With probability ``prob``, a random crop of x [H, W, C] resized back.

    Args:
      u: [5] uniforms: apply, then those of ``crop_box``.
      x: [H, W, C].
      scale, ratio: as ``crop_box``.
      prob: probability of cropping.
    """
    height, width = x.shape[:2]
    box = crop_box(u[1:], height, width, scale, ratio)
    full = (0.0, 0.0, float(height), float(width))
    box = [jnp.where(u[0] < prob, b, f) for b, f in zip(box, full)]
    return resize_box(x, *box)


def color_jitter(u: Array, x: Array, strengths, *, prob=0.8) -> Array:
    """Brightness, contrast, saturation and hue, in that order (x [H, W, C]).

    Factors: brightness b, contrast c and saturation s from [1 - v, 1 + v]
    (clipped at 0); x <- b x; x <- m + c (x - m) with m the mean luma;
    x <- g + s (x - g) with g the luma; hue: a rotation by 2 pi t, t from
    [-v, v], of the chroma plane (I, Q) of YIQ. Values are clipped to
    [0, 1] after each step.

    Args:
      u: [5] uniforms: apply, then the four factors.
      x: [H, W, C].
      strengths: (brightness, contrast, saturation, hue).
      prob: probability of the jitter.
    """
    b, c, s, hue = strengths
    factor = lambda v, t: _between(v, max(0.0, 1.0 - t), 1.0 + t)
    y = jnp.clip(x * factor(u[1], b), 0.0, 1.0)
    mean = jnp.mean(grey(y))
    y = jnp.clip(mean + factor(u[2], c) * (y - mean), 0.0, 1.0)
    if x.shape[-1] == 3:
        g = grey(y)
        y = jnp.clip(g + factor(u[3], s) * (y - g), 0.0, 1.0)
        turn = _between(u[4], -hue, hue)
        y = jnp.clip(_rotate_hue(y, 2.0 * jnp.pi * turn), 0.0, 1.0)
    return _maybe(u[0], prob, x, y)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def _rotate_hue(x, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin],
                          [0.0, sin, cos]])
    return x @ (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).T


def gaussian_blur(u: Array, x: Array, sigma_range=(0.1, 2.0),
                  size: int = 3, *, prob=0.5) -> Array:
    """A separable Gaussian blur of x [H, W, C], reflect-padded (kornia).

    Args:
      u: [2] uniforms: apply, sigma.
      x: [H, W, C].
      sigma_range: the standard deviation is drawn from this range.
      size: odd kernel side.
      prob: probability of blurring.
    """
    if size % 2 == 0:
        raise ValueError(f'blur kernel size must be odd, got {size}.')
    sigma = _between(u[1], *sigma_range)
    r = size // 2
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (t / sigma) ** 2)
    w = w / jnp.sum(w)
    height, width = x.shape[:2]
    p = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode='reflect')
    rows = sum(w[i] * p[i:i + height] for i in range(size))
    out = sum(w[i] * rows[:, i:i + width] for i in range(size))
    return _maybe(u[0], prob, x, out)
