"""Image datasets: per-example preprocessing, and mixup/cutmix on batches.

Every source yields {"image": uint8 [H, W, C], "label": int}. Train: crop, flip,
RandAugment, then normalise; eval: central crop resized to `image_size`, then
normalise. Output images are float32 (x/255 − mean)/std.
"""

from __future__ import annotations

import functools

import numpy as np

from mha_jax.data import augment
from mha_jax.data.pipeline import Split

CROPS = ("none", "pad_crop", "random_resized_crop")


def preprocess(example, rng, *, cfg, channels):
  """One example → {"image": float32 [S, S, C], "label": int32, "mask": float32}."""
  image = np.asarray(example["image"], np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  size = cfg.image_size
  if rng is None:
    image = augment.center_crop_resize(image, size, cfg.eval_crop_fraction)
  else:
    if cfg.crop == "random_resized_crop":
      image = augment.random_resized_crop(image, size, cfg.rrc_scale, cfg.rrc_ratio, rng)
    else:
      image = augment.center_crop_resize(image, size, 1.0)
      if cfg.crop == "pad_crop":
        image = augment.pad_crop(image, cfg.pad, rng)
    if cfg.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    if cfg.randaugment_layers:
      image = augment.randaugment(image, cfg.randaugment_layers, cfg.randaugment_magnitude, rng)
  mean = np.asarray(cfg.mean, np.float32)[:channels]
  std = np.asarray(cfg.std, np.float32)[:channels]
  image = (image.astype(np.float32) / 255.0 - mean) / std
  return {"image": image, "label": np.int32(example["label"]), "mask": np.float32(1.0)}


def make_split(info, source, cfg):
  """Wire preprocessing and (if switched on) mixup/cutmix around a source."""
  if cfg.crop not in CROPS:
    raise ValueError(f"data.crop={cfg.crop!r} is not allowed; choose one of {CROPS}")
  batch_transform = None
  if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
    batch_transform = functools.partial(
        augment.mixup_cutmix, num_classes=info.num_classes, mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha, switch_prob=cfg.mixup_switch_prob)
  return Split(info=info, source=source,
               preprocess=functools.partial(preprocess, cfg=cfg, channels=info.image_shape[2]),
               batch_transform=batch_transform)
