"""Tokenisers: GPT-2 BPE (tiktoken over the ranks file `prepare gpt2_tokenizer`
fetches) and characters. Both have `name, vocab_size, eos_id, encode_batch, decode`."""

from __future__ import annotations

import base64
import functools

from mha_jax.data import offline

# The regex of tiktoken's `gpt2` encoding (tiktoken_ext/openai_public.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_EOS = "<|endoftext|>"


class GPT2Tokenizer:
  """tiktoken's `gpt2` encoding; EOS is <|endoftext|> (50256)."""

  def __init__(self, cache_dir=""):
    try:
      import tiktoken  # an optional dependency, imported only when text needs it
    except ImportError:
      raise offline.MissingDataError("GPT-2 BPE needs tiktoken: pip install 'mha-jax[data]'") from None
    path = offline.gpt2_tiktoken_path(cache_dir)
    if not offline.has_gpt2_tiktoken(path):  # never downloaded here: runs stay offline
      raise offline.MissingDataError(f"GPT-2 BPE ranks missing or corrupt at {path}: run "
                                     "`python -m mha_jax.data.prepare gpt2_tokenizer`")
    pairs = (line.split() for line in path.read_bytes().splitlines() if line)
    self._encoding = tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, special_tokens={GPT2_EOS: 50256}, explicit_n_vocab=50257,
        mergeable_ranks={base64.b64decode(token): int(rank) for token, rank in pairs})
    self.name = "gpt2"
    self.vocab_size = self._encoding.n_vocab
    self.eos_id = self._encoding.eot_token

  def encode_batch(self, texts):
    return self._encoding.encode_ordinary_batch(list(texts))

  def decode(self, ids):
    return self._encoding.decode(list(ids))


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

