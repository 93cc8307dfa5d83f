"""Text: tokenisers, packing documents into fixed-length sequences, and the
per-original-token accounting that perplexity needs.

A split is tokenised once into one flat token stream, `doc₀ EOS doc₁ EOS …`, and
cut into consecutive windows of seq_len + 1 tokens that overlap by one: window i
gives inputs = stream[iT : iT+T] and targets = stream[iT+1 : iT+T+1]. Every
token after the first is a target exactly once; the last window is padded, with
mask 0 on the padding. The stream is cached as .npy (memory-mapped on reuse).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import pathlib
import re

import ml_collections
import numpy as np
import tqdm

from mha_jax.data import offline
from mha_jax.data.pipeline import DatasetInfo, Split

TOKENIZERS = ("gpt2", "char")
ORIGINAL_TOKENS = ("none", "words", "words_per_line")
# The regex of tiktoken's `gpt2` encoding (tiktoken_ext/openai_public.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOS = "<|endoftext|>"


def base_config(*, seq_len=1024, tokenizer="gpt2", original_tokens="none"):
  return ml_collections.ConfigDict(dict(
      kind="text",
      seq_len=seq_len,  # T: tokens per sequence
      tokenizer=tokenizer,  # one of TOKENIZERS
      # Unit of the "original tokenisation" perplexity is reported in (ORIGINAL_TOKENS):
      # "words": whitespace tokens + 1 end marker per document (lm1b);
      # "words_per_line": whitespace tokens + 1 <eos> per non-blank line (WikiText);
      # "none": only per model token.
      original_tokens=original_tokens,
  ))


class GPT2Tokenizer:
  """tiktoken's `gpt2` encoding; EOS is <|endoftext|> (50256)."""

  def __init__(self, cache_dir=""):
    try:
      import tiktoken  # an optional dependency, imported only when text needs it
    except ImportError:
      raise offline.MissingDataError("GPT-2 BPE needs tiktoken: pip install 'mha-jax[data]'") from None
    path = offline.gpt2_tiktoken_path(cache_dir)
    if path.exists():
      self._encoding = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN,
                                         mergeable_ranks=_read_tiktoken_ranks(path),
                                         special_tokens={GPT2_EOS: 50256}, explicit_n_vocab=50257)
    else:
      try:
        self._encoding = tiktoken.get_encoding("gpt2")  # downloads once where there is a network
      except Exception as e:
        raise offline.MissingDataError(
            f"GPT-2 BPE files unavailable ({type(e).__name__}): run "
            "`python -m mha_jax.data.prepare gpt2_tokenizer`") from None
    self.name = "gpt2"
    self.vocab_size = self._encoding.n_vocab
    self.eos_id = self._encoding.eot_token

  def encode_batch(self, texts):
    return self._encoding.encode_ordinary_batch(list(texts))

  def decode(self, ids):
    return self._encoding.decode(list(ids))


def _read_tiktoken_ranks(path):
  data = path.read_bytes()
  if hashlib.sha256(data).hexdigest() != offline.GPT2_TIKTOKEN_SHA256:
    raise offline.MissingDataError(f"{path} has the wrong sha256: run "
                                   "`python -m mha_jax.data.prepare gpt2_tokenizer`")
  pairs = (line.split() for line in data.splitlines() if line)
  return {base64.b64decode(token): int(rank) for token, rank in pairs}


class CharTokenizer:
  """One id per character of `alphabet`; id 0 is EOS (never a character)."""

  def __init__(self, alphabet):
    self.name = "char"
    self.chars = sorted(set(alphabet))
    self._ids = {c: i + 1 for i, c in enumerate(self.chars)}
    self.vocab_size = len(self.chars) + 1
    self.eos_id = 0

  def encode_batch(self, texts):
    return [[self._ids[c] for c in text] for text in texts]

  def decode(self, ids):
    return "".join(self.chars[i - 1] for i in ids if i != self.eos_id)


@functools.lru_cache(maxsize=4)
def gpt2_tokenizer(cache_dir):
  """One GPT2Tokenizer per cache dir: building the BPE tables takes about a second."""
  return GPT2Tokenizer(cache_dir)


def make_tokenizer(cfg, alphabet=None):
  if cfg.tokenizer not in TOKENIZERS:
    raise ValueError(f"data.tokenizer={cfg.tokenizer!r} is not allowed; choose one of {TOKENIZERS}")
  if cfg.tokenizer == "char":
    if alphabet is None:
      raise ValueError("tokenizer='char' is only available for datasets with a fixed alphabet")
    return CharTokenizer(alphabet)
  return gpt2_tokenizer(cfg.cache_dir)


def count_original_tokens(text, unit):
  if unit == "words":
    return len(text.split()) + 1
  if unit == "words_per_line":
    return sum(len(line.split()) + 1 for line in text.splitlines() if line.strip())
  raise ValueError(f"original_tokens={unit!r} is not allowed; choose one of {ORIGINAL_TOKENS}")


def pack(token_lists, eos_id, dtype=np.int32):
  """[doc₀, doc₁, …] → flat stream doc₀ EOS doc₁ EOS …"""
  parts = []
  for tokens in token_lists:
    parts.append(np.asarray(tokens, dtype))
    parts.append(np.asarray([eos_id], dtype))
  return np.concatenate(parts) if parts else np.zeros([0], dtype)


def tokenize_documents(documents, tokenizer, *, num_documents, unit="none", chunk=4096,
                       description="tokenising"):
  """Iterable of strings → (flat stream, original-token count, or None for unit "none")."""
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  streams, original = [], 0
  with tqdm.tqdm(total=num_documents, desc=description, unit="doc") as bar:
    for batch in _chunks(documents, chunk):
      streams.append(pack(tokenizer.encode_batch(batch), tokenizer.eos_id, dtype))
      if unit != "none":
        original += sum(count_original_tokens(text, unit) for text in batch)
      bar.update(len(batch))
  stream = np.concatenate(streams) if streams else np.zeros([0], dtype)
  return stream, (None if unit == "none" else original)


def _chunks(items, size):
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


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


def make_split(name, stream, original_tokens, tokenizer, cfg):
  sequences = PackedSequences(stream, cfg.seq_len)
  ratio = None if original_tokens is None else original_tokens / (len(stream) - 1)
  info = DatasetInfo(name=name, kind="text", num_examples=len(sequences),
                     vocab_size=tokenizer.vocab_size, seq_len=cfg.seq_len,
                     original_tokens_per_token=ratio, eos_id=tokenizer.eos_id)
  return Split(info=info, source=sequences, preprocess=lambda example, rng: example)


def perplexity_per_original_token(mean_nll_per_token, info):
  """exp(total NLL / original tokens) = exp(mean NLL per model token / ratio)."""
  if info.original_tokens_per_token is None:
    raise ValueError(f"{info.name} has no original tokenisation to report perplexity in")
  return float(np.exp(mean_nll_per_token / info.original_tokens_per_token))
