"""Cached decoding (mha_jax.decode) against recomputing the full forward at every
step, for GPT-2 and LLaMA, standard attention and MHA (h0 zeros, noise and
first_scores, reset_every) and the value residual, on a left-padded batch; and
sampling filters against their closed-form distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention, decode
from mha_jax.models import build_model

VOCAB, PROMPT, NEW = 61, 5, 6
CASES = {
    "gpt2-standard": ("gpt2", {"kind": "standard"}),
    "gpt2-mha": ("gpt2", {"kind": "hopfield", "alpha": 0.5, "alpha_hidden": 0.7}),
    "gpt2-mha-noise": ("gpt2", {"kind": "hopfield", "h0": "noise", "h0_noise_std": 2.0}),
    "llama-standard": ("llama", {"kind": "standard"}),
    "llama-mha-reset": ("llama", {"kind": "hopfield", "h0": "first_scores", "reset_every": 2}),
    # Carries layer 1's values: the cache must hold the mixed values attention uses.
    "llama-value-residual": ("llama", {"kind": "value_residual"}),
    # Each new token iterates over the cached keys (Hopfield retrieval, entmax heads).
    "gpt2-energy": ("gpt2", {"kind": "hopfield_energy", "energy_steps": 2,
                             "separation": "entmax", "separation_param": 1.5}),
}


def tiny_model(case):
  name, attention_options = CASES[case]
  depth = 3 if attention_options.get("reset_every") else 2   # layer 3 restarts the chain
  model = build_model(name, num_layers=depth, width=32, num_heads=4, mlp_dim=48,
                      vocab_size=VOCAB, max_len=24, attention=attention_options)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  # Larger weights than the 0.02 init, so logits differ by more than rounding.
  params = jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)
  return model, params


def padded_prompts():
  """Row 0: 5 tokens; row 1: 3 tokens left-padded with a token the mask must hide."""
  prompt = np.array(jax.random.randint(jax.random.key(1), (2, PROMPT), 1, VOCAB))
  prompt[1, :2] = VOCAB - 1
  valid = np.ones((2, PROMPT), bool)
  valid[1, :2] = False
  return prompt, valid


@pytest.mark.parametrize("case", sorted(CASES))
def test_cached_decoding_equals_full_forward_every_step(case):
  model, params = tiny_model(case)
  prompt, valid = padded_prompts()
  tokens, logits = decode.generate(model, params, prompt, prompt_valid=valid, max_new_tokens=NEW)
  ref_tokens, ref_logits = decode.generate_uncached(model, params, prompt, prompt_valid=valid,
                                                    max_new_tokens=NEW)
  assert logits.shape == (2, NEW, VOCAB)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
  assert len(set(np.asarray(tokens).ravel().tolist())) > 1   # not a degenerate model


def test_padded_row_generates_what_the_prompt_alone_does():
  """Positions count real tokens (GPT-2's learned table) and noise H_0 is indexed by
  position, so left padding changes nothing; the reference is the plain forward on
  the unpadded prompt and its continuation."""
  model, params = tiny_model("gpt2-mha-noise")
  prompt, valid = padded_prompts()
  tokens, logits = decode.generate(model, params, prompt, prompt_valid=valid, max_new_tokens=NEW)
  alone = prompt[1:, 2:]
  sequence = np.concatenate([alone, np.asarray(tokens[1:])], axis=1)
  full_logits, _ = model.apply({"params": params}, sequence)
  np.testing.assert_allclose(logits[1], full_logits[0, alone.shape[1] - 1:-1], atol=1e-5, rtol=0)
  np.testing.assert_array_equal(tokens[1], np.argmax(full_logits[0, alone.shape[1] - 1:-1], -1))


def test_noise_h0_rows_do_not_depend_on_sequence_length():
  short = attention.initial_hidden_state(1, 3, 5, noise_std=1.0, noise_seed=4)
  long = attention.initial_hidden_state(1, 3, 9, noise_std=1.0, noise_seed=4)
  np.testing.assert_array_equal(short, long[:, :, :5, :5])
  assert float(jnp.std(long)) > 0.5


def test_cache_overflow_and_bad_sampling_are_refused():
  model, params = tiny_model("gpt2-standard")
  with pytest.raises(ValueError, match="max_len=24"):
    decode.generate(model, params, np.ones((1, 20), np.int32), max_new_tokens=5)
  for bad in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError, match=next(iter(bad))):
      decode.Sampling(**bad)


def draw(logits, sampling, count=4000):
  keys = jax.random.split(jax.random.key(3), count)
  one = lambda key: decode.sample_token(key, jnp.asarray([logits], jnp.float32), sampling)[0]
  return np.bincount(np.asarray(jax.vmap(one)(keys)), minlength=len(logits)) / count


def test_sampling_filters_follow_their_distributions():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = np.log(probs)
  np.testing.assert_allclose(draw(logits, decode.Sampling(temperature=1.0)), probs, atol=0.03)
  tempered = probs ** 0.5 / (probs ** 0.5).sum()
  np.testing.assert_allclose(draw(logits, decode.Sampling(temperature=2.0)), tempered, atol=0.03)
  top2 = np.array([0.625, 0.375, 0.0, 0.0])
  np.testing.assert_allclose(draw(logits, decode.Sampling(1.0, top_k=2)), top2, atol=0.03)
  # Mass before token 2 is 0.8 ≥ 0.7: the nucleus is {0, 1}.
  np.testing.assert_allclose(draw(logits, decode.Sampling(1.0, top_p=0.7)), top2, atol=0.03)
  greedy = np.array([1.0, 0.0, 0.0, 0.0])
  np.testing.assert_array_equal(draw(logits, decode.Sampling(1.0, top_k=1), 50), greedy)
  np.testing.assert_array_equal(draw(logits, decode.Sampling(0.0), 50), greedy)
