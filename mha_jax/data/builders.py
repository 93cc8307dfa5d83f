"""TFDS builders for the paper's text corpora that TFDS does not ship.

Both read local files from a manual directory and write ArrayRecord with no
TensorFlow. Each example is one document: {"text": str}.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

# A top-level WikiText heading " = Title = " starts an article; " = = Section = = " does not.
_WIKITEXT_ARTICLE = re.compile(r"^ = [^=].* = $")
WIKITEXT_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
                  "test": "wiki.test.tokens"}
BOOKCORPUS_VALIDATION_FRACTION = 0.01


def wikitext_articles(lines):
  """Lines of a wiki.*.tokens file → article texts (each keeps its own lines)."""
  article = []
  for line in lines:
    if _WIKITEXT_ARTICLE.match(line.rstrip("\n")) and any(l.strip() for l in article):
      yield "".join(article)
      article = []
    article.append(line)
  if any(l.strip() for l in article):
    yield "".join(article)


class Wikitext103(tfds.core.GeneratorBasedBuilder):
  """WikiText-103 (Merity et al. 2016), word-level tokenised, one article per example."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens (from "
      "wikitext-103-v1.zip) in the manual directory.")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        homepage="https://arxiv.org/abs/1609.07843")

  def _split_generators(self, dl_manager):
    manual = pathlib.Path(dl_manager.manual_dir)
    return {split: self._generate_examples(manual / name)
            for split, name in WIKITEXT_FILES.items()}

  def _generate_examples(self, path):
    with open(path, encoding="utf-8") as f:
      for index, article in enumerate(wikitext_articles(f)):
        yield index, {"text": article}


def bookcorpus_files(manual_dir, split):
  """Books (*.txt under manual_dir, sorted) of a split: an evenly spaced 1% (≥ 1) is validation."""
  files = sorted(pathlib.Path(manual_dir).rglob("*.txt"))
  if len(files) < 2:
    raise ValueError(f"bookcorpus needs at least two .txt books in {manual_dir}, found {len(files)}")
  num_validation = max(1, round(BOOKCORPUS_VALIDATION_FRACTION * len(files)))
  validation = set(np.linspace(0, len(files) - 1, num_validation).round().astype(int).tolist())
  return [f for i, f in enumerate(files) if (i in validation) == (split == "validation")]


class Bookcorpus(tfds.core.GeneratorBasedBuilder):
  """BookCorpus-style local text: one book per .txt file, one book per example."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put one .txt file per book (any folder depth) in the manual directory; "
      "a one-sentence-per-line dump should be cut into per-book files first.")

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(bookcorpus_files(dl_manager.manual_dir, split))
            for split in ("train", "validation")}

  def _generate_examples(self, files):
    for path in files:
      yield str(path), {"text": path.read_text(encoding="utf-8", errors="replace")}
