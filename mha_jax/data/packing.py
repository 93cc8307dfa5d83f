"""Text as fixed-length sequences: packing documents into one token stream,
caching it, and the per-original-token accounting perplexity needs.

A split is tokenised once into one flat stream, `doc₀ EOS doc₁ EOS …`, and cut
into consecutive windows of seq_len + 1 tokens that overlap by one: window i
gives inputs = stream[iT : iT+T] and targets = stream[iT+1 : iT+T+1]. Every
token after the first is a target exactly once; the last window is padded, with
mask 0 on the padding. The stream is cached as .npy (memory-mapped on reuse).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pathlib
import re

import numpy as np
import tqdm

from mha_jax.data.pipeline import DatasetInfo, Split

ORIGINAL_TOKENS = ("none", "words", "words_per_line")
MAX_LOG_PERPLEXITY = 50.0  # a diverged run reports e^50, not an overflow


def perplexity(mean_nll_per_token, original_tokens_per_token=1.0):
  """exp(total NLL / tokens counted) from the mean NLL per model token.

  Per model token by default; given a split's `info.original_tokens_per_token`
  (original tokens, e.g. WikiText words, over model tokens) the same total NLL
  is spread over the original tokens: exp(mean NLL / ratio).
  """
  return math.exp(min(mean_nll_per_token / original_tokens_per_token, MAX_LOG_PERPLEXITY))


def count_original_tokens(text, unit):
  if unit == "words":
    return len(text.split()) + 1
  if unit == "words_per_line":
    return sum(len(line.split()) + 1 for line in text.splitlines() if line.strip())
  raise ValueError(f"original_tokens={unit!r} is not allowed; choose one of {ORIGINAL_TOKENS}")


def pack(token_lists, eos_id, dtype=np.int32):
  """[doc₀, doc₁, …] → flat stream doc₀ EOS doc₁ EOS …"""
  return np.fromiter(itertools.chain.from_iterable((*tokens, eos_id) for tokens in token_lists),
                     dtype)


def tokenize_documents(documents, tokenizer, *, num_documents, unit="none", chunk=4096,
                       description="tokenising"):
  """Iterable of strings → (flat stream, original-token count, or None for unit "none")."""
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  streams, original = [np.zeros([0], dtype)], 0
  documents = iter(documents)
  with tqdm.tqdm(total=num_documents, desc=description, unit="doc") as bar:
    while batch := [text for _, text in zip(range(chunk), documents)]:
      streams.append(pack(tokenizer.encode_batch(batch), tokenizer.eos_id, dtype))
      if unit != "none":
        original += sum(count_original_tokens(text, unit) for text in batch)
      bar.update(len(batch))
  return np.concatenate(streams), (None if unit == "none" else original)


def cached_stream(path, build):
  """Load the stream at `path` (+ its .json sidecar), or build() it and save both."""
  path = pathlib.Path(path)
  meta_path = path.with_suffix(".json")
  if path.exists() and meta_path.exists():
    return np.load(path, mmap_mode="r"), json.loads(meta_path.read_text())["original_tokens"]
  stream, original = build()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # hosts sharing a file system may race
  np.save(tmp, stream)
  tmp.rename(path)  # atomic: a crashed prepare leaves no half-written cache behind
  meta_path.write_text(json.dumps({"num_tokens": int(len(stream)), "original_tokens": original}))
  return stream, original


def cache_name(split, tokenizer, num_documents, *variant):
  """A file name per (split, tokeniser, document count, variant...): a stale cache gets a new name."""
  parts = (split, tokenizer.name, num_documents, *variant)
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", ".".join(map(str, parts))) + ".npy"


class PackedSequences:
  """Random-access windows over a flat stream (see the module docstring)."""

  def __init__(self, stream, seq_len):
    if len(stream) < 2:
      raise ValueError("a text split needs at least two tokens")
    self.stream = stream
    self.seq_len = seq_len

  def __len__(self):
    return -(-(len(self.stream) - 1) // self.seq_len)

  def __getitem__(self, index):
    if not 0 <= index < len(self):
      raise IndexError(index)
    start = index * self.seq_len
    window = np.asarray(self.stream[start:start + self.seq_len + 1], np.int32)
    valid = len(window) - 1
    inputs = np.zeros([self.seq_len], np.int32)
    targets = np.zeros([self.seq_len], np.int32)
    mask = np.zeros([self.seq_len], np.float32)
    inputs[:valid], targets[:valid], mask[:valid] = window[:-1], window[1:], 1.0
    return {"inputs": inputs, "targets": targets, "mask": mask}


def make_split(name, stream, original_tokens, tokenizer, seq_len):
  sequences = PackedSequences(stream, seq_len)
  ratio = None if original_tokens is None else original_tokens / (len(stream) - 1)
  info = DatasetInfo(name=name, modality="text", num_examples=len(sequences),
                     vocab_size=tokenizer.vocab_size, seq_len=seq_len,
                     original_tokens_per_token=ratio, eos_id=tokenizer.eos_id)
  return Split(info=info, source=sequences, preprocess=lambda example, rng: example)
