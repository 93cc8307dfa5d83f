"""mha_jax's tokenisers as Hugging Face fast tokenizers, saved beside an exported
model so that HF tools (pipelines, lm-evaluation-harness) read text into the ids
the model was trained on: characters, and GPT-2 BPE built from the same tiktoken
ranks file mha_jax.data reads (no download).

`mha_jax.data.text.CharTokenizer` gives character c the id 1 + its rank in the
sorted alphabet and keeps id 0 for end-of-document, which has no character. Here
EOS is spelled "\x1e" (ASCII record separator, one byte), so a packed split
`doc₀ EOS doc₁ EOS …` has a text form that encodes back to exactly its ids and
whose byte count equals its token count (for ASCII alphabets).
"""

from __future__ import annotations

import json
import pathlib

EOS_TEXT = "\x1e"


def char_tokenizer(tokenizer):
  """`transformers.PreTrainedTokenizerFast` with the ids of `tokenizer` (an mha_jax
  CharTokenizer: `.chars`, `.eos_id`); every character is one token, nothing is added."""
  import tokenizers
  import transformers
  if EOS_TEXT in tokenizer.chars:
    raise ValueError(f"the alphabet contains {EOS_TEXT!r}, which spells EOS here")
  vocab = {EOS_TEXT: tokenizer.eos_id, **{c: i + 1 for i, c in enumerate(tokenizer.chars)}}
  if sorted(vocab.values()) != list(range(len(vocab))):
    raise ValueError(f"ids of the char tokeniser are not 0..{len(vocab) - 1} (eos_id="
                     f"{tokenizer.eos_id})")
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=EOS_TEXT))
  # Each character is its own piece (newlines and spaces included).
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Split(
      tokenizers.Regex(r"[\s\S]"), behavior="isolated")
  backend.decoder = tokenizers.decoders.Fuse()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, eos_token=EOS_TEXT, bos_token=EOS_TEXT, unk_token=EOS_TEXT,
      pad_token=EOS_TEXT, clean_up_tokenization_spaces=False)


def ids_to_text(ids, tokenizer):
  """Token ids of `tokenizer` (mha_jax CharTokenizer) → text, EOS spelled EOS_TEXT."""
  table = {i + 1: c for i, c in enumerate(tokenizer.chars)}
  table[tokenizer.eos_id] = EOS_TEXT
  return "".join(table[int(i)] for i in ids)


GPT2_EOS_TEXT = "<|endoftext|>"


def bpe_tokenizer(ranks_path, pattern):
  """GPT-2 BPE as a `transformers.PreTrainedTokenizerFast` from a tiktoken ranks file
  (`pattern`: the encoding's pre-tokenisation regex); <|endoftext|> is id 50256.
  Building the merges takes ~10 s."""
  import transformers
  from transformers.convert_slow_tokenizer import TikTokenConverter
  backend = TikTokenConverter(vocab_file=str(ranks_path), pattern=pattern,
                              extra_special_tokens=[GPT2_EOS_TEXT]).converted()
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=backend, eos_token=GPT2_EOS_TEXT, bos_token=GPT2_EOS_TEXT,
      unk_token=GPT2_EOS_TEXT, clean_up_tokenization_spaces=False)


def save_char_tokenizer(tokenizer, directory):
  """Write the HF tokenizer files into an export directory and point config.json's
  bos/eos/pad ids at our EOS."""
  return save_tokenizer(char_tokenizer(tokenizer), tokenizer.eos_id, directory)


def save_tokenizer(hf_tokenizer, eos_id, directory):
  """`hf_tokenizer`'s files into an export directory; config.json's bos/eos/pad ids
  become `eos_id`."""
  hf_tokenizer.save_pretrained(directory)
  config_path = pathlib.Path(directory) / "config.json"
  config = json.loads(config_path.read_text())
  config.update(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
  config_path.write_text(json.dumps(config, indent=2))
  return hf_tokenizer
