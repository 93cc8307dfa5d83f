"""The custom TFDS builders (wikitext103, bookcorpus) on tiny generated file sets."""

import numpy as np
import pytest

from mha_jax import data
from mha_jax.data import builders, prepare, tokenizers

WIKI = {  # split -> file lines; two articles each, with a sub-heading that must not split
    "train": [" \n", " = Alpha = \n", " \n", " The cat sat on the mat . \n", " \n",
              " = = History = = \n", " It was @-@ good , and <unk> . \n", " = Beta = \n",
              " \n", " Another article , a short one . \n"],
    "valid": [" = Gamma = \n", " \n", " Valid text here . \n"],
    "test": [" = Delta = \n", " Test text . \n", " = Epsilon = \n", " More . \n"],
}


def test_wikitext_articles_split_at_top_level_headings_only():
  articles = list(builders.wikitext_articles(WIKI["train"]))
  assert len(articles) == 2
  assert articles[0].startswith(" \n = Alpha = ") and "= = History = =" in articles[0]
  assert articles[1].startswith(" = Beta = ")
  assert "".join(articles) == "".join(WIKI["train"])  # nothing dropped


@pytest.fixture
def wikitext_dirs(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  for split, lines in WIKI.items():
    (manual / f"wiki.{split}.tokens").write_text("".join(lines))
  return str(manual), str(tmp_path / "tfds")


def test_wikitext103_prepares_and_counts_words_per_token(wikitext_dirs, cache_dir):
  manual, tfds_dir = wikitext_dirs
  prepare.prepare("wikitext103", cache_dir=cache_dir, tfds_data_dir=tfds_dir, manual_dir=manual)
  config = data.default_data_config("wikitext103")
  config.update(dict(cache_dir=cache_dir, tfds_data_dir=tfds_dir, seq_len=8))
  evaluation = data.build_input(config, split="test", global_batch_size=2, train=False, seed=0,
                                process_index=0, process_count=1)
  batches = list(evaluation)
  # Independent count: words + <eos> per non-blank line; BPE tokens + EOS per article.
  words = sum(len(l.split()) + 1 for l in WIKI["test"] if l.strip())
  tokenizer = tokenizers.gpt2_tokenizer(cache_dir)
  articles = ["".join(WIKI["test"][:2]), "".join(WIKI["test"][2:])]
  model_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(articles)) - 1
  assert sum(b["mask"].sum() for b in batches) == model_tokens
  assert evaluation.info.original_tokens_per_token == pytest.approx(words / model_tokens)
  targets = np.concatenate([b["targets"][b["mask"] == 1] for b in batches])
  assert (targets == tokenizer.eos_id).sum() == 2 and targets[-1] == tokenizer.eos_id  # one per article


def test_bookcorpus_splits_books_and_reads_them(tmp_path, cache_dir):
  manual = tmp_path / "books"
  for i in range(5):
    (manual / f"shelf{i % 2}").mkdir(parents=True, exist_ok=True)
    (manual / f"shelf{i % 2}" / f"book{i}.txt").write_text(f"Book {i}. " * (20 + i))
  validation = builders.bookcorpus_files(manual, "validation")
  train = builders.bookcorpus_files(manual, "train")
  assert len(validation) == 1 and len(train) == 4 and not set(validation) & set(train)
  tfds_dir = str(tmp_path / "tfds")
  prepare.prepare("bookcorpus", cache_dir=cache_dir, tfds_data_dir=tfds_dir, manual_dir=str(manual))
  config = data.default_data_config("bookcorpus")
  config.update(dict(cache_dir=cache_dir, tfds_data_dir=tfds_dir, seq_len=16))
  batches = list(data.build_input(config, split="train", global_batch_size=4, train=False, seed=0,
                                  process_index=0, process_count=1))
  tokenizer = tokenizers.gpt2_tokenizer(cache_dir)
  expected = sum(len(tokenizer.encode_batch([f.read_text()])[0]) + 1 for f in train) - 1
  assert sum(b["mask"].sum() for b in batches) == expected


def test_bookcorpus_needs_two_books(tmp_path):
  (tmp_path / "only.txt").write_text("one book")
  with pytest.raises(ValueError, match="at least two"):
    builders.bookcorpus_files(tmp_path, "train")
