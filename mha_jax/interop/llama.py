"""Hugging Face `LlamaForCausalLM` ↔ mha_jax "llama".

Rotary layout: HF stores q_proj/k_proj already permuted for its half-split
`rotate_half` (the Meta → HF conversion script does that permutation), and mha_jax's
`apply_rope` is half-split too, so the weights carry over without a permutation.
Meta's original interleaved consolidated.*.pth files are not read here: convert them
with transformers' `convert_llama_weights_to_hf` first.
"""

from __future__ import annotations

from mha_jax.interop import common
from mha_jax.interop.common import LINEAR, Row, Table, linear_block

BLOCK_NAMES = {"attention_norm": "input_layernorm", "query": "self_attn.q_proj",
               "key": "self_attn.k_proj", "value": "self_attn.v_proj", "out": "self_attn.o_proj",
               "mlp_norm": "post_attention_layernorm", "gate": "mlp.gate_proj",
               "up": "mlp.up_proj", "down": "mlp.down_proj"}


def _untie_head(state_dict):
  """tie_word_embeddings=True: mha_jax's LLaMA has its own head, started as a copy."""
  if "lm_head.weight" in state_dict or "model.embed_tokens.weight" not in state_dict:
    return state_dict
  return {**state_dict, "lm_head.weight": state_dict["model.embed_tokens.weight"]}


TABLE = Table(
    rows=(Row("token_embedding/embedding", "model.embed_tokens.weight"),
          *linear_block("decoder/layers_{i}/", "model.layers.{i}.", BLOCK_NAMES, use_bias=False),
          Row("final_norm/scale", "model.norm.weight"),
          Row("lm_head/kernel", "lm_head.weight", LINEAR)),
    ignore=(r"\.rotary_emb\.inv_freq$",),
    prepare=_untie_head)


def rope_theta(config):
  """rope θ from a transformers 5 `rope_parameters` or a 4.x `rope_theta` config."""
  rope = config.get("rope_parameters") or {}
  scaling = config.get("rope_scaling") or rope
  if scaling.get("rope_type", scaling.get("type", "default")) != "default":
    raise ValueError(f"LLaMA rope scaling {scaling!r} is not supported (plain rotary only)")
  return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


# config.json ↔ mha_jax options, both directions (rope_theta has its own reader).
CONFIG_FIELDS = (
    common.ConfigField("num_hidden_layers", "num_layers", common.REQUIRED),
    common.ConfigField("hidden_size", "width", common.REQUIRED),
    common.ConfigField("num_attention_heads", "num_heads", common.REQUIRED),
    common.ConfigField("intermediate_size", "mlp_dim", common.REQUIRED),
    common.ConfigField("rms_norm_eps", "norm_eps", 1e-6),
    common.ConfigField("vocab_size", "vocab_size", common.REQUIRED),
    common.ConfigField("max_position_embeddings", "max_len", 2048),
)


def model_options(config):
  """mha_jax LLaMA options from an HF LLaMA config.json."""
  heads, width = config["num_attention_heads"], config["hidden_size"]
  if config.get("num_key_value_heads", heads) != heads:
    raise ValueError(f"grouped-query attention (num_key_value_heads="
                     f"{config['num_key_value_heads']} != {heads}) is not supported")
  if config.get("head_dim", width // heads) != width // heads:
    raise ValueError(f"head_dim={config['head_dim']} != hidden_size / heads is not supported")
  if config.get("attention_bias") or config.get("mlp_bias"):
    raise ValueError("LLaMA configs with attention_bias / mlp_bias are not supported")
  if config.get("hidden_act", "silu") != "silu":
    raise ValueError(f"LLaMA hidden_act={config['hidden_act']!r}; only 'silu' is supported")
  return dict(common.import_config_fields(CONFIG_FIELDS, config),
              rope_theta=rope_theta(config))


def export_config(model):
  """config.json for `LlamaForCausalLM.from_pretrained` (untied head)."""
  cfg = model.stack
  if cfg.mlp != "swiglu" or cfg.norm != "rmsnorm" or cfg.use_bias or cfg.rope_theta is None:
    raise ValueError("only a LLaMA-shaped stack (rmsnorm, SwiGLU, rope, no bias) "
                     "exports to HF LLaMA")
  return dict(model_type="llama", architectures=["LlamaForCausalLM"],
              **common.export_config_fields(CONFIG_FIELDS, model),
              num_key_value_heads=cfg.num_heads, hidden_act="silu",
              rope_theta=cfg.rope_theta,
              rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
              tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
