"""Every dataset name: its config defaults and how to build one split of it."""

from __future__ import annotations

import zlib

import ml_collections
import numpy as np

from mha_jax.data import images, offline, text, tfds_data
from mha_jax.data.pipeline import DatasetInfo, Split


def _common(name, train_split="train", eval_split="validation"):
  return dict(
      name=name,
      train_split=train_split,  # what the train loop passes as `split` for training
      eval_split=eval_split,  # and for evaluation
      cache_dir="",  # offline files and token caches; "" = $MHA_JAX_DATA_DIR or ~/.cache/mha_jax
      tfds_data_dir="",  # TFDS ArrayRecord root; "" = TFDS's default (~/tensorflow_datasets)
      manual_dir="",  # wikitext103 / bookcorpus / imagenet2012 raw files (prepare only)
      read_threads=4,  # threads preparing batches ahead (0: in the caller's thread)
      prefetch_batches=4,  # batches prepared ahead, per process
  )


def _config(name, family_fields, train_split="train", eval_split="validation"):
  family_fields.update(_common(name, train_split, eval_split))
  return family_fields


class ArraySource:
  """Random access over in-memory uint8 images and integer labels."""

  def __init__(self, images_NxHxW, labels_N):
    self.images, self.labels = images_NxHxW, labels_N

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    return {"image": self.images[index], "label": self.labels[index]}


class SyntheticImages:
  """Example i: uniform noise and a label from a Generator seeded by (*seed, i)."""

  def __init__(self, num_examples, image_shape, num_classes, seed):
    self.num_examples, self.image_shape = num_examples, tuple(image_shape)
    self.num_classes, self.seed = num_classes, seed

  def __len__(self):
    return self.num_examples

  def __getitem__(self, index):
    rng = np.random.default_rng([*self.seed, index])
    return {"image": rng.integers(0, 256, self.image_shape, dtype=np.uint8),
            "label": rng.integers(0, self.num_classes)}


class SyntheticText:
  """Sequence i: uniform random tokens from a Generator seeded by (*seed, i)."""

  def __init__(self, num_examples, seq_len, vocab_size, seed):
    self.num_examples, self.seq_len, self.vocab_size, self.seed = (
        num_examples, seq_len, vocab_size, seed)

  def __len__(self):
    return self.num_examples

  def __getitem__(self, index):
    tokens = np.random.default_rng([*self.seed, index]).integers(
        0, self.vocab_size, self.seq_len + 1, dtype=np.int32)
    return {"inputs": tokens[:-1], "targets": tokens[1:],
            "mask": np.ones([self.seq_len], np.float32)}


def _offline_images(loader, channels=1):
  def build(cfg, split):
    images_NxHxW, labels_N = loader(split)
    info = DatasetInfo(name=cfg.name, kind="image", num_examples=len(labels_N), num_classes=10,
                       image_shape=(cfg.image_size, cfg.image_size, channels))
    return images.make_split(info, ArraySource(images_NxHxW, labels_N), cfg)
  return build


def _split_seed(seed, split):
  """Different noise per split name, the same for every process and run."""
  return [seed, zlib.crc32(split.encode())]


def _synthetic_images(cfg, split):
  source = SyntheticImages(cfg.num_examples, cfg.image_shape, cfg.num_classes,
                           _split_seed(cfg.seed, split))
  info = DatasetInfo(name=cfg.name, kind="image", num_examples=cfg.num_examples,
                     num_classes=cfg.num_classes,
                     image_shape=(cfg.image_size, cfg.image_size, cfg.image_shape[2]))
  return images.make_split(info, source, cfg)


def _synthetic_text(cfg, split):
  info = DatasetInfo(name=cfg.name, kind="text", num_examples=cfg.num_examples,
                     vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
  source = SyntheticText(cfg.num_examples, cfg.seq_len, cfg.vocab_size,
                         _split_seed(cfg.seed, split))
  return Split(info=info, source=source, preprocess=lambda example, rng: example)


def _shakespeare(cfg, split):
  works = offline.shakespeare_works(split, cfg.cache_dir)
  alphabet = None
  if cfg.tokenizer == "char":  # the alphabet of all works, so both splits share ids
    alphabet = "".join(sorted({c for s in offline.SPLITS
                               for _, t in offline.shakespeare_works(s, cfg.cache_dir) for c in t}))
  tokenizer = text.make_tokenizer(cfg, alphabet)
  return _packed_text(cfg, split, tokenizer, lambda: (t for _, t in works), len(works))


def _tfds_images(cfg, split):
  _, _, num_classes, _, _, _ = tfds_data.IMAGE_DATASETS[cfg.name]
  source = tfds_data.data_source(cfg.name, split, cfg.tfds_data_dir)
  info = DatasetInfo(name=cfg.name, kind="image", num_examples=len(source),
                     num_classes=num_classes, image_shape=(cfg.image_size, cfg.image_size, 3))
  return images.make_split(info, source, cfg)


def _tfds_text(cfg, split):
  source = tfds_data.data_source(cfg.name, split, cfg.tfds_data_dir)
  keys = tuple(cfg.text_keys)
  return _packed_text(cfg, split, text.make_tokenizer(cfg),
                      lambda: tfds_data.read_documents(source, keys), len(source), *keys)


def _packed_text(cfg, split, tokenizer, documents, num_documents, *variant):
  """The split's token stream, from the cache or tokenised now (and cached), packed."""
  name = text.cache_name(split, tokenizer, num_documents, cfg.original_tokens, *variant)
  path = offline.cache_root(cfg.cache_dir) / "tokens" / cfg.name / name
  stream, original = text.cached_stream(path, lambda: text.tokenize_documents(
      documents(), tokenizer, num_documents=num_documents, unit=cfg.original_tokens,
      description=f"{cfg.name}[{split}]"))
  return text.make_split(cfg.name, stream, original, tokenizer, cfg)


def _digits_config():
  config = _config("digits", images.base_config(image_size=8, crop="none"))
  config.flip = False  # a mirrored digit is not that digit
  return config


def _mnist5k_config():
  config = _config("mnist5k", images.base_config(image_size=28, crop="pad_crop"))
  config.update(dict(flip=False, pad=2))  # no mirroring; shifts of up to 2 of 28 pixels
  return config


def _synthetic_images_config():
  config = _config("synthetic_images", images.base_config(image_size=32, crop="none"))
  config.update(dict(image_shape=(32, 32, 3), num_classes=10, num_examples=1024, seed=0))
  return config


def _synthetic_text_config():
  config = _config("synthetic_text", text.base_config(seq_len=128))
  config.update(dict(vocab_size=256, num_examples=1024, seed=0))
  return config


def _shakespeare_config(name, tokenizer, seq_len):
  return lambda: _config(name, text.base_config(seq_len=seq_len, tokenizer=tokenizer))


def _tfds_image_config(name):
  train_split, eval_split, _, size, crop, crop_fraction = tfds_data.IMAGE_DATASETS[name]
  def make():
    family = images.base_config(image_size=size, crop=crop, eval_crop_fraction=crop_fraction)
    if size > 32:  # ImageNet statistics for the natural-photo sets
      family.update(dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))
    return _config(name, family, train_split, eval_split)
  return make


def _tfds_text_config(name):
  train_split, eval_split, keys, unit = tfds_data.TEXT_DATASETS[name]
  def make():
    config = _config(name, text.base_config(original_tokens=unit), train_split, eval_split)
    config.text_keys = keys  # TFDS features joined into one document
    return config
  return make


# name: (default config factory, split builder)
DATASETS = {
    "digits": (_digits_config, _offline_images(offline.digits)),
    "mnist5k": (_mnist5k_config, _offline_images(offline.mnist5k)),
    "synthetic_images": (_synthetic_images_config, _synthetic_images),
    "synthetic_text": (_synthetic_text_config, _synthetic_text),
    "shakespeare_char": (_shakespeare_config("shakespeare_char", "char", 256), _shakespeare),
    "shakespeare_bpe": (_shakespeare_config("shakespeare_bpe", "gpt2", 256), _shakespeare),
    **{name: (_tfds_image_config(name), _tfds_images) for name in tfds_data.IMAGE_DATASETS},
    **{name: (_tfds_text_config(name), _tfds_text) for name in tfds_data.TEXT_DATASETS},
}


def lookup(name):
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
  return DATASETS[name]


def default_config(name) -> ml_collections.ConfigDict:
  return lookup(name)[0]()


def build_split(cfg, split):
  return lookup(cfg.name)[1](cfg, split)
