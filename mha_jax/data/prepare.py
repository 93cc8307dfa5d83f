"""Prepare a dataset once, so training reads it with no network:

  python -m mha_jax.data.prepare offline            # shakespeare + gpt2_tokenizer (CI: this)
  python -m mha_jax.data.prepare shakespeare_bpe    # one dataset: its files, then its token cache
  python -m mha_jax.data.prepare wikitext103 --manual_dir=/data/wikitext-103
  python -m mha_jax.data.prepare cifar100 --tfds_data_dir=/data/tfds

TFDS datasets are written as ArrayRecord; text datasets are then tokenised into
the cache (both splits named by the default config), with progress bars.
"""

from __future__ import annotations

import sys

from absl import app, flags

from mha_jax.data import offline, registry, tfds_data

# Files that are not datasets themselves, and what each offline dataset needs.
ASSETS = {"shakespeare": offline.prepare_shakespeare,
          "gpt2_tokenizer": offline.prepare_gpt2_tokenizer}
NEEDS = {"shakespeare_char": ("shakespeare",),
         "shakespeare_bpe": ("shakespeare", "gpt2_tokenizer"),
         **{name: ("gpt2_tokenizer",) for name in tfds_data.TEXT_DATASETS}}
TARGETS = ("offline", *ASSETS, *registry.DATASETS)


def prepare(name, *, cache_dir="", tfds_data_dir="", manual_dir=""):
  """Make `name` (a dataset, an asset, or "offline") readable offline; returns a summary line."""
  if name == "offline":
    return "; ".join(prepare(asset, cache_dir=cache_dir) for asset in ASSETS)
  if name in ASSETS:
    return f"{name}: {ASSETS[name](cache_dir)}"
  config = registry.default_config(name)  # ValueError listing the names if unknown
  config.update(dict(cache_dir=cache_dir, tfds_data_dir=tfds_data_dir, manual_dir=manual_dir))
  for asset in NEEDS.get(name, ()):
    ASSETS[asset](cache_dir)
  if name in tfds_data.IMAGE_DATASETS or name in tfds_data.TEXT_DATASETS:
    tfds_data.prepare(name, data_dir=tfds_data_dir, manual_dir=manual_dir)
  sizes = []
  for split in (config.train_split, config.eval_split):
    # Building a split checks that it reads, and writes a text split's token cache.
    sizes.append(f"{split}={registry.build_split(config, split).info.num_examples}")
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
