"""Tokenisers, packing, and perplexity (per model token and per original token)."""

import hashlib
import math

import numpy as np
import pytest

from mha_jax import data
from mha_jax.data import offline, packing, pipeline, tokenizers


def gpt2(cache_dir):
  return tokenizers.gpt2_tokenizer(cache_dir)


def test_gpt2_tokenizer_matches_known_ids_and_round_trips_real_text(cache_dir):
  tokenizer = gpt2(cache_dir)
  assert (tokenizer.vocab_size, tokenizer.eos_id) == (50257, 50256)
  # GPT-2's published ids: "Hello" 15496, " world" 995.
  assert tokenizer.encode_batch(["Hello world"]) == [[15496, 995]]
  works = dict(offline.shakespeare_works("validation", cache_dir))
  sample = next(iter(works.values()))[:20_000]
  (ids,) = tokenizer.encode_batch([sample])
  assert tokenizer.decode(ids) == sample
  assert 2 < len(sample) / len(ids) < 5  # BPE compresses English to ~3-4 characters a token
  # Text that spells the special token is ordinary text, never the EOS id.
  assert tokenizer.eos_id not in tokenizer.encode_batch(["<|endoftext|>"])[0]


def test_gpt2_tokenizer_equals_tiktokens_own_r50k_base(cache_dir, tmp_path, monkeypatch):
  """r50k_base is GPT-2's BPE (same ranks, regex and <|endoftext|>); point tiktoken's
  own loader at our file through its cache so it needs no network."""
  import tiktoken
  url = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
  (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(
      offline.gpt2_tiktoken_path(cache_dir).read_bytes())
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
  reference = tiktoken.get_encoding("r50k_base")
  works = [t[:30_000] for _, t in offline.shakespeare_works("validation", cache_dir)]
  assert gpt2(cache_dir).encode_batch(works) == reference.encode_ordinary_batch(works)
  assert reference.eot_token == gpt2(cache_dir).eos_id


def test_char_tokenizer_round_trip_on_real_text(cache_dir):
  (_, work), *_ = offline.shakespeare_works("validation", cache_dir)
  tokenizer = tokenizers.CharTokenizer(work)
  (ids,) = tokenizer.encode_batch([work])
  assert tokenizer.decode(ids) == work
  assert tokenizer.eos_id == 0 and min(ids) >= 1 and tokenizer.vocab_size == len(set(work)) + 1


def test_pack_puts_one_eos_after_each_document():
  stream = packing.pack([[5, 6], [], [7]], eos_id=0)
  np.testing.assert_array_equal(stream, [5, 6, 0, 0, 7, 0])


@pytest.mark.parametrize("length, seq_len", [(2, 4), (9, 4), (10, 3), (101, 10)])
def test_packed_sequences_use_every_token_once(length, seq_len):
  stream = np.arange(100, 100 + length)
  sequences = packing.PackedSequences(stream, seq_len)
  examples = [sequences[i] for i in range(len(sequences))]
  targets = np.concatenate([e["targets"][e["mask"] == 1] for e in examples])
  inputs = np.concatenate([e["inputs"][e["mask"] == 1] for e in examples])
  np.testing.assert_array_equal(targets, stream[1:])  # no loss, no duplicate, in order
  np.testing.assert_array_equal(inputs, stream[:-1])
  assert len(sequences) == math.ceil((length - 1) / seq_len)


def test_eval_pass_over_a_packed_split_covers_the_stream_once():
  stream = np.arange(1, 1 + 1000)
  split = packing.make_split("toy", stream, None, tokenizers.CharTokenizer("ab"), seq_len=16)
  targets = []
  for process in range(3):
    input_ = pipeline.make_input(split, global_batch_size=12, train=False, seed=0,
                                 process_index=process, process_count=3)
    for batch in input_:
      targets.append(batch["targets"][batch["mask"] == 1])
  np.testing.assert_array_equal(np.sort(np.concatenate(targets)), stream[1:])


def test_original_token_counts():
  line_text = " = Title = \n \n The cat sat . \n"
  assert packing.count_original_tokens(line_text, "words_per_line") == (3 + 1) + (4 + 1)
  assert packing.count_original_tokens("a b c", "words") == 4


def test_perplexity_per_model_and_per_original_token():
  assert data.perplexity(1.5) == pytest.approx(math.exp(1.5))
  # 100 model tokens, mean NLL 1.5 → total 150 nats over 50 words.
  assert data.perplexity(1.5, 0.5) == pytest.approx(math.exp(150 / 50))
  assert data.perplexity(1e4) == pytest.approx(math.exp(packing.MAX_LOG_PERPLEXITY))  # no overflow


def test_shakespeare_bpe_cache_is_reused(cache_dir):
  config = data.default_data_config("shakespeare_bpe")
  config.cache_dir = cache_dir
  first = data.build_input(config, split="validation", global_batch_size=4, train=False, seed=0,
                           process_index=0, process_count=1)
  cached = list((offline.cache_root(cache_dir) / "tokens" / "shakespeare_bpe").glob("*.npy"))
  assert len(cached) == 1
  again = data.build_input(config, split="validation", global_batch_size=4, train=False, seed=0,
                           process_index=0, process_count=1)
  np.testing.assert_array_equal(next(first)["inputs"], next(again)["inputs"])
