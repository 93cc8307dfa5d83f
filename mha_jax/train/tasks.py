"""What is being learnt, chosen once from the dataset's modality: the model's inputs,
its per-item loss, the eval summary, a dummy input for init, and the model
options the data fixes (classes and image size, or vocabulary and length).
The steps, the loop and state setup call a Task and never ask "image or text?".
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from mha_jax import data


@dataclasses.dataclass(frozen=True)
class ImageClassification:
  """Per-example softmax cross-entropy (soft mixup/cutmix targets if the batch has
  them, optional label smoothing); top-1 accuracy."""
  info: object
  label_smoothing: float = 0.0
  throughput_name: ClassVar[str] = "examples_per_sec"
  throughput_unit: ClassVar[str] = "img/s"
  items_per_example: ClassVar[int] = 1

  def model_defaults(self):
    return {"num_classes": self.info.num_classes, "image_size": self.info.image_shape[0]}

  def dummy_input(self):
    return jnp.zeros((1,) + tuple(self.info.image_shape), jnp.float32)

  def model_inputs(self, batch):
    """(positional input, keyword args) of the model for one batch."""
    return batch["image"], {}

  def weighted_losses(self, logits, batch, train):
    """Per-item losses, correctness and weights (padding weighs 0)."""
    if "soft_label" in batch:   # mixup / cutmix targets from the input pipeline
      targets = batch["soft_label"]
    else:
      targets = jax.nn.one_hot(batch["label"], logits.shape[-1])
    if train and self.label_smoothing:
      targets = optax.smooth_labels(targets, self.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets)
    correct = jnp.argmax(logits, -1) == batch["label"]
    weight = batch["mask"].astype(jnp.float32)
    return loss * weight, correct * weight, weight

  def summarize(self, sums, eval_info):
    """loss and top-1 from eval sums."""
    del eval_info
    weight = max(float(sums["weight"]), 1.0)
    return {"loss": float(sums["loss"]) / weight, "accuracy": float(sums["correct"]) / weight}


@dataclasses.dataclass(frozen=True)
class LanguageModelling:
  """Per-token next-token cross-entropy; next-token accuracy and perplexity. A batch
  with a "loss_mask" (associative recall: only the answers) scores only where it is
  1; "mask" alone says which tokens the model may attend to."""
  info: object
  throughput_name: ClassVar[str] = "tokens_per_sec"
  throughput_unit: ClassVar[str] = "tok/s"

  @property
  def items_per_example(self):
    return self.info.seq_len

  def model_defaults(self):
    return {"vocab_size": self.info.vocab_size, "max_len": self.info.seq_len}

  def dummy_input(self):
    return jnp.zeros((1, self.info.seq_len), jnp.int32)

  def model_inputs(self, batch):
    return batch["inputs"], {"padding_mask": batch["mask"] > 0}

  def weighted_losses(self, logits, batch, train):
    del train
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = jnp.argmax(logits, -1) == batch["targets"]
    weight = batch["mask"].astype(jnp.float32)
    if "loss_mask" in batch:
      weight = weight * batch["loss_mask"]
    return loss * weight, correct * weight, weight

  def summarize(self, sums, eval_info):
    """loss, accuracy, perplexity, and perplexity per original (e.g. word) token of
    the eval split (its own words-per-token ratio)."""
    weight = max(float(sums["weight"]), 1.0)
    loss = float(sums["loss"]) / weight
    out = {"loss": loss, "accuracy": float(sums["correct"]) / weight,
           "perplexity": data.perplexity(loss)}
    if getattr(eval_info, "original_tokens_per_token", None):
      out["perplexity_original"] = data.perplexity(loss, eval_info.original_tokens_per_token)
    return out


def make_task(config, info):
  """The task of `info.modality` ('image' | 'text'); options from the config."""
  if info.modality == "image":
    return ImageClassification(info, label_smoothing=config.get("label_smoothing", 0.0))
  if info.modality == "text":
    return LanguageModelling(info)
  raise ValueError(f"dataset modality {info.modality!r} has no task; allowed: 'image', 'text'")
