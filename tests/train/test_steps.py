"""Tasks and steps against closed forms: cross-entropy with label smoothing and
soft labels, perplexities, one SGD step of a linear softmax classifier
(gradient Xᵀ(softmax − onehot)/N), and the non-finite skip."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mha_jax.train import steps, tasks

RNG = np.random.default_rng(0)


def np_cross_entropy(logits, targets):
  logits = logits - logits.max(-1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -(targets * log_probs).sum(-1)


def image_task(label_smoothing=0.0, classes=3):
  info = types.SimpleNamespace(modality="image", num_classes=classes, image_shape=(4,))
  return tasks.ImageClassification(info, label_smoothing=label_smoothing)


def test_image_loss_with_label_smoothing_soft_labels_and_padding():
  logits = RNG.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1])
  mask = np.array([1, 1, 1, 0], np.float32)
  task = image_task(label_smoothing=0.3)
  loss, correct, weight = task.weighted_losses(jnp.asarray(logits),
                                               {"label": labels, "mask": mask}, train=True)
  smoothed = 0.7 * np.eye(3)[labels] + 0.3 / 3
  np.testing.assert_allclose(loss, np_cross_entropy(logits, smoothed) * mask, rtol=1e-6)
  np.testing.assert_array_equal(correct, (logits.argmax(-1) == labels) * mask)
  np.testing.assert_array_equal(weight, mask)
  eval_loss, _, _ = task.weighted_losses(jnp.asarray(logits), {"label": labels, "mask": mask},
                                         train=False)   # no smoothing at evaluation
  np.testing.assert_allclose(eval_loss, np_cross_entropy(logits, np.eye(3)[labels]) * mask,
                             rtol=1e-6)
  soft = RNG.dirichlet(np.ones(3), size=4).astype(np.float32)
  mixed, _, _ = image_task().weighted_losses(
      jnp.asarray(logits), {"label": labels, "mask": mask, "soft_label": soft}, train=True)
  np.testing.assert_allclose(mixed, np_cross_entropy(logits, soft) * mask, rtol=1e-6)


def test_language_model_loss_and_summary():
  logits = RNG.normal(size=(2, 5, 7)).astype(np.float32)
  targets = RNG.integers(0, 7, (2, 5))
  mask = np.ones((2, 5), np.float32)
  mask[1, 3:] = 0
  info = types.SimpleNamespace(modality="text", vocab_size=7, seq_len=5,
                               original_tokens_per_token=None)
  task = tasks.LanguageModelling(info)
  loss, correct, weight = task.weighted_losses(jnp.asarray(logits),
                                               {"targets": targets, "mask": mask}, train=True)
  np.testing.assert_allclose(loss, np_cross_entropy(logits, np.eye(7)[targets]) * mask, rtol=1e-6)
  sums = {"loss": float(loss.sum()), "correct": float(correct.sum()), "weight": float(weight.sum())}
  mean = sums["loss"] / 8
  summary = task.summarize(sums, types.SimpleNamespace(original_tokens_per_token=1.25))
  assert summary["loss"] == pytest.approx(mean) and summary["perplexity"] == pytest.approx(
      np.exp(mean))
  assert summary["perplexity_original"] == pytest.approx(np.exp(mean / 1.25))
  correct_count = float(((logits.argmax(-1) == targets) * mask).sum())
  assert summary["accuracy"] == pytest.approx(correct_count / 8)
  assert "perplexity_original" not in task.summarize(sums, info)
  assert set(image_task().summarize(sums, None)) == {"loss", "accuracy"}


class Linear(nn.Module):
  """The smallest model with the zoo's signature: (logits, intermediates)."""
  classes: int

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(self.classes, use_bias=False, name="dense")(x), {}


def one_step(images, skip_nonfinite=False, lr=0.5):
  task, model, tx = image_task(), Linear(3), optax.sgd(lr)
  params = model.init(jax.random.key(0), task.dummy_input())["params"]
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt": tx.init(params),
           "rng": jax.random.key_data(jax.random.key(1))}
  labels = np.array([0, 1, 2, 1, 0, 2])
  batch = {"image": images, "label": labels, "mask": np.ones(6, np.float32)}
  new, metrics = jax.jit(lambda s, b: steps.train_step(
      s, b, model=model, tx=tx, task=task, skip_nonfinite=skip_nonfinite))(state, batch)
  return np.asarray(params["dense"]["kernel"]), new, metrics, labels


def test_train_step_is_one_sgd_step_of_the_closed_form_gradient():
  images = RNG.normal(size=(6, 4)).astype(np.float32)
  kernel, new, metrics, labels = one_step(images)
  logits = images @ kernel
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  grad = images.T @ (probs - np.eye(3)[labels]) / 6
  np.testing.assert_allclose(new["params"]["dense"]["kernel"], kernel - 0.5 * grad,
                             rtol=1e-5, atol=1e-6)
  assert float(metrics["loss"]) == pytest.approx(np_cross_entropy(logits, np.eye(3)[labels]).mean(),
                                                 rel=1e-5)
  assert float(metrics["grad_norm"]) == pytest.approx(np.linalg.norm(grad), rel=1e-5)
  assert int(new["step"]) == 1 and int(metrics["nonfinite"]) == 0


def test_nonfinite_update_is_flagged_and_skipped_only_when_asked():
  images = RNG.normal(size=(6, 4)).astype(np.float32)
  images[2, 1] = np.nan
  kernel, kept, metrics, _ = one_step(images, skip_nonfinite=True)
  assert int(metrics["nonfinite"]) == 1 and int(kept["step"]) == 1
  np.testing.assert_array_equal(kept["params"]["dense"]["kernel"], kernel)
  _, applied, metrics, _ = one_step(images, skip_nonfinite=False)
  assert int(metrics["nonfinite"]) == 1
  assert np.isnan(np.asarray(applied["params"]["dense"]["kernel"])).any()


def test_eval_step_sums_weighted_counts():
  task, model = image_task(), Linear(3)
  params = model.init(jax.random.key(0), task.dummy_input())["params"]
  images = RNG.normal(size=(4, 4)).astype(np.float32)
  batch = {"image": images, "label": np.array([0, 1, 2, 0]), "mask": np.array([1, 1, 0, 1.0])}
  sums = steps.eval_step(params, batch, model=model, task=task)
  logits = images @ np.asarray(params["dense"]["kernel"])
  expected = np_cross_entropy(logits, np.eye(3)[batch["label"]]) * batch["mask"]
  assert float(sums["loss"]) == pytest.approx(expected.sum(), rel=1e-5)
  assert float(sums["weight"]) == 3.0
