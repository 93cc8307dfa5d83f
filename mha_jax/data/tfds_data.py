"""TFDS datasets read through `tfds.data_source` (ArrayRecord): random access with
no TensorFlow at training time. Preparing may need TensorFlow for some builders;
reading never does.
"""

from __future__ import annotations

import importlib

from mha_jax.data import offline

# name: (train split, eval split, classes, image size, train crop, eval crop fraction)
IMAGE_DATASETS = {
    "cifar10": ("train", "test", 10, 32, "pad_crop", 1.0),
    "cifar100": ("train", "test", 100, 32, "pad_crop", 1.0),
    "imagenet2012": ("train", "validation", 1000, 224, "random_resized_crop", 0.875),
    "oxford_flowers102": ("train", "test", 102, 224, "random_resized_crop", 0.875),
    "food101": ("train", "validation", 101, 224, "random_resized_crop", 0.875),
    "stanford_dogs": ("train", "test", 120, 224, "random_resized_crop", 0.875),
    "cars196": ("train", "test", 196, 224, "random_resized_crop", 0.875),
}
# name: (train split, eval split, features joined into one document, original-token unit)
TEXT_DATASETS = {
    "cnn_dailymail": ("train", "validation", ("article", "highlights"), "none"),
    "lm1b": ("train", "test", ("text",), "words"),
    "wikitext103": ("train", "validation", ("text",), "words_per_line"),
    "bookcorpus": ("train", "validation", ("text",), "none"),
}
MANUAL = {"imagenet2012", "wikitext103", "bookcorpus"}  # need config.data.manual_dir
# TFDS registers a builder when its module is imported; tensorflow_datasets' own
# __init__ skips some families when TensorFlow is absent.
_BUILDER_MODULES = ("tensorflow_datasets.image_classification",
                    "tensorflow_datasets.summarization", "mha_jax.data.builders")


def import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise offline.MissingDataError(
        "TFDS datasets need tensorflow-datasets and array-record: pip install mha-jax") from None
  for module in _BUILDER_MODULES:
    importlib.import_module(module)
  return tfds


def prepare_hint(name):
  manual = " --manual_dir=DIR" if name in MANUAL else ""
  return f"run `python -m mha_jax.data.prepare {name}{manual}`"


def data_source(name, split, data_dir):
  """The random-access source of one split; never downloads (that is `prepare`'s job)."""
  tfds = import_tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # TFDS raises several types for "not prepared as ArrayRecord"
    where = data_dir or "the default TFDS data_dir"
    raise offline.MissingDataError(
        f"{name}[{split}] is not prepared as ArrayRecord in {where} ({type(e).__name__}): "
        f"{prepare_hint(name)}") from None


def read_documents(source, keys):
  """Documents of a text source in order, features `keys` joined by a blank line."""
  for index in range(len(source)):
    example = source[index]
    yield "\n\n".join(_as_str(example[k]) for k in keys)


def _as_str(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def prepare(name, *, data_dir="", manual_dir=""):
  """Download (where allowed) and write the ArrayRecord files TFDS reads."""
  tfds = import_tfds()
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  try:
    builder.download_and_prepare(download_config=download_config)
  except Exception as e:  # no network, a missing manual file, TensorFlow needed, ...
    message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    raise offline.MissingDataError(f"preparing {name} failed: {type(e).__name__}: {message}"
                                   f"{' (check --manual_dir)' if name in MANUAL else ''}") from e
  return builder.data_dir
