"""The kinds table against what the models actually carry, read and cost."""

import dataclasses

import pytest

from mha_jax import flops, kinds, models
from mha_jax.models import layers
from mha_jax.models.stack_config import AttentionConfig, StackConfig

B, T, L, N, D = 2, 16, 3, 4, 8


def stack(**attention):
  return StackConfig(num_layers=L, width=N * D, num_heads=N, mlp_dim=64,
                     attention=AttentionConfig(**attention))


# The closed form of each carry, written out from the equations (attention.py, kernels/).
EXPECTED_CARRY_BYTES = {
    "standard": 0,
    "rezero": 0,
    "hopfield": B * N * T * T * 4,                     # H [B, N, T, S] float32
    "realformer": B * N * T * T * 4,
    "value_residual": B * T * N * D * 4,               # V_1 [B, T, N, D]
    # the history [slots, B, T, N·D] float32 and the int32 layer index
    "attention_residuals": (2 * L + 1) * B * T * N * D * 4 + 4,
    "denseformer": (L + 1) * B * T * N * D * 4 + 4,
    "hyper_connections": 4 * B * T * N * D * 4 + 4,   # n = 4 streams [4, B, T, N·D]
}


@pytest.mark.parametrize("kind", list(EXPECTED_CARRY_BYTES))
def test_carry_bytes_match_the_closed_form(kind):
  assert layers.carry_bytes(stack(kind=kind), B, T) == EXPECTED_CARRY_BYTES[kind]


def test_carry_bytes_follow_the_implementation():
  factorized = stack(kind="hopfield", implementation="factorized", hidden_window=2)
  assert layers.carry_bytes(factorized, B, T) == 2 * B * T * N * 2 * D * 4   # Q̃, K̃, W = 2
  bf16 = stack(kind="hopfield", implementation="fused", hidden_dtype="bfloat16")
  assert layers.carry_bytes(bf16, B, T) == B * N * T * T * 2


def test_table_row_carries_hidden_iff_the_model_carries_h():
  for name, kind in kinds.KINDS.items():
    state = layers.initial_state(stack(kind=name), B, T)
    assert ("hidden" in state) == kind.carries_hidden, name
    assert (state == {}) == (kind.carries == "nothing"), name


@pytest.mark.parametrize("kind", list(kinds.KINDS))
def test_flops_extra_is_the_table_rate_times_the_score_map(kind):
  model = models.build_model("gpt2", "small", num_layers=L, width=N * D, num_heads=N,
                             mlp_dim=64, vocab_size=64, max_len=T, attention={"kind": kind})
  counted = flops.training_flops(model, B, "text", seq_len=T)
  per_entry = kinds.KINDS[kind].score_update_flops
  assert counted.mha_extra == 3 * L * per_entry * B * N * T * T
  if kind in ("standard", "rezero", "value_residual", "attention_residuals", "denseformer",
              "hyper_connections"):
    assert counted.mha_extra == 0


def test_every_field_a_kind_does_not_read_is_refused_when_set():
  defaults = {f.name: f.default for f in dataclasses.fields(AttentionConfig)}
  changed = dict(alpha=0.3, alpha_hidden=0.2, residual="standard", h0="first_scores",
                 h0_noise_std=2.0, h0_noise_seed=3, reset_every=2, score_scale=0.5,
                 value_residual_lambda=0.1)
  for name, kind in kinds.KINDS.items():
    for field, value in changed.items():
      assert value != defaults[field]
      if field in kind.all_fields:
        options = dict(kind=name, **{field: value})
        if field == "h0_noise_std" or field == "h0_noise_seed":
          options["h0"] = "noise"
        AttentionConfig(**options)
      else:
        with pytest.raises(ValueError, match=f"attention.{field}=.*not read by"):
          AttentionConfig(kind=name, **{field: value})


def test_standard_with_alpha_is_refused_in_one_line():
  with pytest.raises(ValueError) as error:
    AttentionConfig(kind="standard", alpha=0.3)
  assert "attention.alpha=0.3" in str(error.value) and "'standard'" in str(error.value)
  assert "\n" not in str(error.value)


def test_unknown_kind_names_the_allowed_ones():
  with pytest.raises(ValueError, match="attention.kind='nope'.*'hopfield'"):
    AttentionConfig(kind="nope")


def test_names_filter_by_fact():
  assert kinds.names(rival=True) == ("realformer", "value_residual", "rezero",
                                     "attention_residuals", "denseformer", "hyper_connections")
  assert set(kinds.names(carries_hidden=True)) == {"hopfield", "realformer"}
  assert "value_residual" not in kinds.names(hf_export=True)
