"""Image augmentation: shapes, value ranges, and the mixup/cutmix label arithmetic."""

import numpy as np
import pytest

from mha_jax.data import augment


def image(h=12, w=10, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
  x = image()
  out = augment.pad_crop(x, 4, np.random.default_rng(1))
  padded = np.pad(x, ((4, 4), (4, 4), (0, 0)))
  windows = [padded[t:t + 12, l:l + 10] for t in range(9) for l in range(9)]
  assert any(np.array_equal(out, w) for w in windows)


def test_center_crop_resize_keeps_the_center():
  x = np.zeros((10, 20, 1), np.uint8)
  x[:, 5:15] = 200  # the central 10x10 square of a 10x20 image
  np.testing.assert_array_equal(augment.center_crop_resize(x, 10, 1.0), x[:, 5:15])


@pytest.mark.parametrize("channels", [1, 3])
def test_random_resized_crop_and_randaugment_keep_dtype_and_shape(channels):
  rng = np.random.default_rng(0)
  out = augment.random_resized_crop(image(40, 30, channels), 16, (0.08, 1.0), (0.75, 1.33), rng)
  assert out.shape == (16, 16, channels) and out.dtype == np.uint8
  out = augment.randaugment(out, 3, 9.0, rng)
  assert out.shape == (16, 16, channels) and out.dtype == np.uint8


@pytest.mark.parametrize("channels", [1, 3])
def test_every_randaugment_op_keeps_size_and_changes_some_image(channels):
  x = image(c=channels)
  changed = 0
  for name, op in augment._OPS.items():
    out = augment.from_pil(op(augment.to_pil(x), 1.0, np.random.default_rng(0)), channels)
    assert out.shape == x.shape and out.dtype == np.uint8, name
    changed += not np.array_equal(out, x)
  assert changed >= len(augment._OPS) - 3  # identity (and color on grayscale) may not change


def batch(n=6, classes=5):
  rng = np.random.default_rng(0)
  return {"image": rng.normal(size=(n, 8, 8, 3)).astype(np.float32),
          "label": np.arange(n, dtype=np.int32) % classes, "mask": np.ones(n, np.float32)}


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
  b = batch()
  out = augment.mixup_cutmix(b, np.random.default_rng(3), num_classes=5, mixup_alpha=0.8,
                             cutmix_alpha=0.0, switch_prob=0.5)
  one_hot = np.eye(5)[b["label"]]  # rows 0 and 5 have labels 0 and 0: pick rows 1 and 4
  # Recover λ from row 1's soft label (mixed with row 4), then check its image used it too.
  lam = out["soft_label"][1] @ one_hot[1]
  assert 0 < lam < 1
  np.testing.assert_allclose(out["image"][1], lam * b["image"][1] + (1 - lam) * b["image"][4],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["soft_label"].sum(-1), 1.0, rtol=1e-6)


def test_cutmix_label_weight_is_the_kept_area():
  b = batch()
  out = augment.mixup_cutmix(b, np.random.default_rng(5), num_classes=5, mixup_alpha=0.0,
                             cutmix_alpha=1.0, switch_prob=0.5)
  kept = (out["image"][1] == b["image"][1]).all(-1).mean()  # pixels still from example 1
  assert 0 < kept < 1
  one_hot = np.eye(5)[b["label"]]
  expected = kept * one_hot[1] + (1 - kept) * one_hot[4]  # row 1 is pasted from row 4
  np.testing.assert_allclose(out["soft_label"][1], expected, atol=1e-6)
