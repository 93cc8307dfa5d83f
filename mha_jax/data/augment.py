"""Image augmentation in numpy/PIL on uint8 [H, W, C] images, one example at a
time with a numpy Generator (grain hands each example its own seeded rng).

A DeiT-style CIFAR recipe: pad+crop or random-resized crop, horizontal flip,
RandAugment (Cubuk et al. 2020: `num_layers` ops drawn uniformly, each at a
fixed `magnitude` out of 10), and mixup/cutmix on batches.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0


def to_pil(image_HxWxC):
  return Image.fromarray(image_HxWxC[..., 0] if image_HxWxC.shape[-1] == 1 else image_HxWxC)


def from_pil(pil, channels):
  array = np.asarray(pil, np.uint8)
  return array[..., None] if channels == 1 else array


def resize(image_HxWxC, height, width):
  if image_HxWxC.shape[:2] == (height, width):
    return image_HxWxC
  pil = to_pil(image_HxWxC).resize((width, height), Image.BICUBIC)
  return from_pil(pil, image_HxWxC.shape[-1])


def center_crop_resize(image_HxWxC, size, crop_fraction):
  """Eval view: the central `crop_fraction` of the shorter side, resized to size×size."""
  h, w = image_HxWxC.shape[:2]
  side = max(1, int(round(min(h, w) * crop_fraction)))
  top, left = (h - side) // 2, (w - side) // 2
  return resize(image_HxWxC[top:top + side, left:left + side], size, size)


def pad_crop(image_HxWxC, pad, rng):
  """Zero-pad by `pad` pixels on each side, then crop the original size at random."""
  h, w = image_HxWxC.shape[:2]
  padded = np.pad(image_HxWxC, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  return padded[top:top + h, left:left + w]


def random_resized_crop(image_HxWxC, size, scale, ratio, rng):
  """Inception crop: a random area fraction in `scale`, aspect ratio in `ratio` (log-uniform)."""
  h, w = image_HxWxC.shape[:2]
  for _ in range(10):
    area = h * w * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    ch, cw = int(round(math.sqrt(area / aspect))), int(round(math.sqrt(area * aspect)))
    if 0 < ch <= h and 0 < cw <= w:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      return resize(image_HxWxC[top:top + ch, left:left + cw], size, size)
  return center_crop_resize(image_HxWxC, size, 1.0)  # the fallback torchvision also uses


def _signed(value, rng):
  return value if rng.random() < 0.5 else -value


def _affine(pil, matrix):
  return pil.transform(pil.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=0)


# name -> (pil, level in [0, 1], rng) -> pil; levels follow the RandAugment paper's ranges.
_OPS = {
    "identity": lambda im, v, rng: im,
    "autocontrast": lambda im, v, rng: ImageOps.autocontrast(im),
    "equalize": lambda im, v, rng: ImageOps.equalize(im),
    "rotate": lambda im, v, rng: im.rotate(_signed(30 * v, rng), resample=Image.BILINEAR),
    "solarize": lambda im, v, rng: ImageOps.solarize(im, int(256 - 256 * v)),
    "posterize": lambda im, v, rng: ImageOps.posterize(im, max(1, int(8 - 4 * v))),
    "color": lambda im, v, rng: ImageEnhance.Color(im).enhance(1 + _signed(0.9 * v, rng)),
    "contrast": lambda im, v, rng: ImageEnhance.Contrast(im).enhance(1 + _signed(0.9 * v, rng)),
    "brightness": lambda im, v, rng: ImageEnhance.Brightness(im).enhance(1 + _signed(0.9 * v, rng)),
    "sharpness": lambda im, v, rng: ImageEnhance.Sharpness(im).enhance(1 + _signed(0.9 * v, rng)),
    "shear_x": lambda im, v, rng: _affine(im, (1, _signed(0.3 * v, rng), 0, 0, 1, 0)),
    "shear_y": lambda im, v, rng: _affine(im, (1, 0, 0, _signed(0.3 * v, rng), 1, 0)),
    "translate_x": lambda im, v, rng: _affine(im, (1, 0, _signed(0.45 * v * im.size[0], rng), 0, 1, 0)),
    "translate_y": lambda im, v, rng: _affine(im, (1, 0, 0, 0, 1, _signed(0.45 * v * im.size[1], rng))),
}
RANDAUGMENT_OPS = tuple(_OPS)


def randaugment(image_HxWxC, num_layers, magnitude, rng):
  pil = to_pil(image_HxWxC)
  for name in rng.choice(RANDAUGMENT_OPS, size=num_layers):
    pil = _OPS[name](pil, magnitude / MAX_MAGNITUDE, rng)
  return from_pil(pil, image_HxWxC.shape[-1])


def mixup_cutmix(batch, rng, *, num_classes, mixup_alpha, cutmix_alpha, switch_prob):
  """Mix each example with the batch reversed (timm's pairing); adds "soft_label".

  One λ per batch. Cutmix pastes a box and sets λ to the pasted area actually kept.
  With both on, cutmix is chosen with probability `switch_prob`. Padding rows
  (mask 0) only occur at eval, where this does not run.
  """
  image, label = batch["image"], batch["label"]
  one_hot = np.eye(num_classes, dtype=np.float32)[label]
  use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
  lam = rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha)
  flipped = image[::-1]
  if use_cutmix:
    h, w = image.shape[1:3]
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    mixed = image.copy()
    mixed[:, top:bottom, left:right] = flipped[:, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
  else:
    mixed = lam * image + (1 - lam) * flipped
  soft = lam * one_hot + (1 - lam) * one_hot[::-1]
  return {**batch, "image": mixed.astype(np.float32), "soft_label": soft.astype(np.float32)}
