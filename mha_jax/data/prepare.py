"""Prepare a dataset once, so training reads it with no network:

  python -m mha_jax.data.prepare offline            # shakespeare + gpt2_tokenizer (CI: this)
  python -m mha_jax.data.prepare shakespeare_bpe    # one dataset: its files, then its token cache
  python -m mha_jax.data.prepare wikitext103 --manual_dir=/data/wikitext-103
  python -m mha_jax.data.prepare cifar100 --tfds_data_dir=/data/tfds

The steps come from the dataset's row (`Dataset.prepare_steps`): fetch files,
write TFDS datasets as ArrayRecord, then build both default splits, which
tokenises text into the cache, with progress bars.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mha_jax.data import datasets, offline, sources

# Files that are not datasets themselves.
ASSETS = {"shakespeare": offline.prepare_shakespeare,
          "gpt2_tokenizer": offline.prepare_gpt2_tokenizer}
TARGETS = ("offline", *ASSETS, *datasets.DATASETS)


def prepare_tfds(name, *, data_dir="", manual_dir=""):
  """Download (where allowed) and write the ArrayRecord files TFDS reads."""
  tfds = sources.import_tfds()
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  builder = tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
  try:
    builder.download_and_prepare(download_config=download_config)
  except Exception as e:  # no network, a missing manual file, TensorFlow needed, ...
    message = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    manual = " (check --manual_dir)" if datasets.lookup(name).manual else ""
    raise offline.MissingDataError(
        f"preparing {name} failed: {type(e).__name__}: {message}{manual}") from e
  return builder.data_dir


def prepare(name, *, cache_dir="", tfds_data_dir="", manual_dir=""):
  """Make `name` (a dataset, an asset, or "offline") readable offline; returns a summary line."""
  if name == "offline":
    return "; ".join(prepare(asset, cache_dir=cache_dir) for asset in ASSETS)
  if name in ASSETS:
    return f"{name}: {ASSETS[name](cache_dir)}"
  config = datasets.default_config(name, cache_dir=cache_dir, tfds_data_dir=tfds_data_dir,
                                   manual_dir=manual_dir)  # ValueError listing the names if unknown
  for step in datasets.lookup(name).prepare_steps:
    if step == "tfds":
      prepare_tfds(name, data_dir=tfds_data_dir, manual_dir=manual_dir)
    else:
      ASSETS[step](cache_dir)
  # Building a split checks that it reads, and writes a text split's token cache.
  sizes = [f"{split}={sources.build_split(config, split).info.num_examples}"
           for split in (config.train_split, config.eval_split)]
  return f"{name}: ready ({', '.join(sizes)} examples)"


def main(argv):
  if len(argv) != 2 or argv[1] not in TARGETS:
    sys.exit(f"usage: python -m mha_jax.data.prepare NAME [--cache_dir=...]; NAME is one of "
             f"{', '.join(TARGETS)}")
  try:
    print(prepare(argv[1], cache_dir=flags.FLAGS.cache_dir,
                  tfds_data_dir=flags.FLAGS.tfds_data_dir, manual_dir=flags.FLAGS.manual_dir))
  except offline.MissingDataError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  # Defined here, not at import, so importing `prepare` adds no global flags.
  flags.DEFINE_string("cache_dir", "", "offline files and token caches "
                      "(default $MHA_JAX_DATA_DIR or ~/.cache/mha_jax)")
  flags.DEFINE_string("tfds_data_dir", "", "TFDS root (default TFDS's)")
  flags.DEFINE_string("manual_dir", "", "raw files for manual TFDS datasets")
  app.run(main)
