"""Configs of mha_jax's Modern Hopfield Attention exports for Hugging Face transformers.

Written beside the weights by `mha_jax.interop.export_pretrained`; needs only
transformers. config.json's "mha_jax_attention" holds the attention settings
(spec §2), checked on load so a bad value fails in one line naming the field.
"""

from transformers import GPT2Config, LlamaConfig, ViTConfig

DEFAULTS = dict(kind="hopfield", alpha=0.5, alpha_hidden=0.5, residual="scaled_branch", h0="zeros",
                reset_every=0, score_scale=None)
CHOICES = dict(kind=("hopfield", "realformer", "standard"), residual=("convex", "scaled_branch", "standard"),
               h0=("zeros", "first_scores"))  # a random H_0 is a JAX draw: it does not export


def check_attention(settings):
  """The settings with defaults filled in; one-line ValueError naming a bad field."""
  att = {**DEFAULTS, **(settings or {})}

  def bad(field, allowed):
    raise ValueError(f"config.json mha_jax_attention.{field}={att[field]!r} is not allowed: "
                     f"{allowed}")
  for field, allowed in CHOICES.items():
    if att[field] not in allowed:
      bad(field, f"choose one of {allowed}")
  for field in ("alpha", "alpha_hidden"):
    if isinstance(att[field], bool) or not isinstance(att[field], (int, float)) \
        or not 0 <= att[field] <= 1:
      bad(field, "a number in [0, 1]")
  if isinstance(att["reset_every"], bool) or not isinstance(att["reset_every"], int) \
      or att["reset_every"] < 0:
    bad("reset_every", "an integer >= 0")
  if att["score_scale"] is not None and not isinstance(att["score_scale"], (int, float)):
    bad("score_scale", "a number or null")
  return att


class CheckedAttention:
  """Validates `mha_jax_attention` before the stock config's own checks."""

  def __post_init__(self, **kwargs):
    self.mha_jax_attention = check_attention(self.mha_jax_attention)
    super().__post_init__(**kwargs)


class MhaGPT2Config(CheckedAttention, GPT2Config):
  model_type = "mha_gpt2"
  mha_jax_attention: dict | None = None


class MhaLlamaConfig(CheckedAttention, LlamaConfig):
  model_type = "mha_llama"
  mha_jax_attention: dict | None = None


class MhaViTConfig(CheckedAttention, ViTConfig):
  model_type = "mha_vit"
  mha_jax_attention: dict | None = None
