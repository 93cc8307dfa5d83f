"""Every TFDS dataset through the `tfds.data_source` route under `tfds.testing.mock_data`."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mha_jax import data
from mha_jax.data import sources, tokenizers


# Published class counts, to check the ones read from TFDS's dataset_info.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet2012": 1000, "oxford_flowers102": 102,
               "food101": 101, "stanford_dogs": 120, "cars196": 196}
TFDS_TEXT = sorted(n for n, row in data.DATASETS.items() if row.source == "tfds" and row.modality == "text")


def build(config, train, batch=4):
  split = config.train_split if train else config.eval_split
  return data.build_input(config, split=split, global_batch_size=batch, train=train, seed=0,
                          process_index=0, process_count=1)


def test_every_tfds_image_dataset_is_tested():
  tfds_images = {n for n, row in data.DATASETS.items() if row.source == "tfds" and row.modality == "image"}
  assert tfds_images == set(NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_image_datasets_under_mock_data(name):
  config = data.default_data_config(name)
  config.image_size = 24  # keep the per-example resizes cheap; the real size is in the config
  num_classes = NUM_CLASSES[name]
  with tfds.testing.mock_data(num_examples=6):
    train, evaluation = build(config, train=True), build(config, train=False)
    train_batch, eval_batches = next(train), list(evaluation)
  assert train.info.num_classes == num_classes and train.info.image_shape == (24, 24, 3)
  for batch in [train_batch, *eval_batches]:
    assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.float32
    assert np.all((0 <= batch["label"]) & (batch["label"] < num_classes))
  # Pixels x/255 in [0, 1], normalised by the config's mean and std.
  lo = (0 - np.asarray(config.mean)) / np.asarray(config.std)
  hi = (1 - np.asarray(config.mean)) / np.asarray(config.std)
  assert np.all(train_batch["image"] >= lo - 1e-5) and np.all(train_batch["image"] <= hi + 1e-5)
  assert len(eval_batches) == 2 and sum(b["mask"].sum() for b in eval_batches) == 6


def test_cifar_train_batch_with_the_deit_recipe_has_soft_labels():
  config = data.default_data_config("cifar100")
  config.update(dict(randaugment_layers=2, mixup_alpha=0.8, cutmix_alpha=1.0))
  with tfds.testing.mock_data(num_examples=8):
    batch = next(build(config, train=True))
  assert batch["soft_label"].shape == (4, 100) and batch["soft_label"].dtype == np.float32
  np.testing.assert_allclose(batch["soft_label"].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", TFDS_TEXT)
def test_text_datasets_under_mock_data(name, cache_dir):
  config = data.default_data_config(name)
  config.update(dict(cache_dir=cache_dir, seq_len=16))
  with tfds.testing.mock_data(num_examples=5):
    documents = list(sources.read_documents(
        sources.data_source(name, config.eval_split, ""), data.DATASETS[name].text_keys))
    evaluation = build(config, train=False)
    batches = list(evaluation)
    train_batch = next(build(config, train=True))
  # Independent count: every document's BPE tokens plus one EOS each are the targets + 1.
  tokenizer = tokenizers.gpt2_tokenizer(cache_dir)
  expected = sum(len(ids) + 1 for ids in tokenizer.encode_batch(documents))
  assert sum(b["mask"].sum() for b in batches) == expected - 1
  for batch in [train_batch, *batches]:
    assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
    assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
    assert batch["inputs"].max() < 50257 and batch["inputs"].min() >= 0
  assert evaluation.info.vocab_size == 50257 and evaluation.info.seq_len == 16


def test_unprepared_dataset_gives_one_line_saying_how_to_prepare(tmp_path):
  config = data.default_data_config("cifar10")
  config.tfds_data_dir = str(tmp_path)
  with pytest.raises(data.MissingDataError) as error:
    build(config, train=True)
  message = str(error.value)
  assert "\n" not in message and "python -m mha_jax.data.prepare cifar10" in message
