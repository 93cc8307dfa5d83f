"""Hugging Face `GPT2LMHeadModel` ↔ mha_jax "gpt2".

HF GPT-2 stores its projections as `Conv1D`, weight [in, out] (already a Flax
kernel, no transpose), with Q, K, V fused in `attn.c_attn` along the output axis.
The LM head is tied to `wte`, as in mha_jax's GPT (`embed.attend`).
"""

from __future__ import annotations

from mha_jax.interop import common
from mha_jax.interop.common import GELU, HEADS_BIAS, HEADS_IN, HEADS_OUT, Row, Table, dense, norm

OURS, THEIRS = "decoder/layers_{i}/", "transformer.h.{i}."
QKV = tuple(f"{OURS}attention/{name}" for name in ("query", "key", "value"))


def _add_prefix(state_dict):
  """The original OpenAI-converted checkpoints carry GPT2Model names (no prefix)."""
  if "transformer.wte.weight" in state_dict or "wte.weight" not in state_dict:
    return state_dict
  return {k if k.startswith("lm_head") else f"transformer.{k}": v for k, v in state_dict.items()}


TABLE = Table(
    rows=(Row("token_embedding/embedding", "transformer.wte.weight"),
          Row("position_embedding", "transformer.wpe.weight"),
          *norm(OURS + "attention_norm", THEIRS + "ln_1"),
          *dense(QKV, THEIRS + "attn.c_attn", HEADS_IN, HEADS_BIAS, fused_axis=1),
          *dense(OURS + "attention/out", THEIRS + "attn.c_proj", HEADS_OUT),
          *norm(OURS + "mlp_norm", THEIRS + "ln_2"),
          *dense(OURS + "mlp/fc1", THEIRS + "mlp.c_fc"),
          *dense(OURS + "mlp/fc2", THEIRS + "mlp.c_proj"),
          *norm("final_norm", "transformer.ln_f")),
    # Causal-mask buffers of older checkpoints, and the tied head (a copy of wte).
    ignore=(r"\.attn\.(masked_)?bias$", r"^lm_head\.weight$"),
    prepare=_add_prefix)


# config.json ↔ mha_jax options, both directions (n_inner None means 4·width).
CONFIG_FIELDS = (
    common.ConfigField("n_layer", "num_layers", common.REQUIRED),
    common.ConfigField("n_embd", "width", common.REQUIRED),
    common.ConfigField("n_head", "num_heads", common.REQUIRED),
    common.ConfigField("n_inner", "mlp_dim", None),
    common.ConfigField("layer_norm_epsilon", "norm_eps", 1e-5),
    common.ConfigField("vocab_size", "vocab_size", common.REQUIRED),
    common.ConfigField("n_positions", "max_len", common.REQUIRED),
)


def model_options(config):
  """mha_jax GPT options (num_layers, width, ...) from an HF GPT-2 config.json."""
  if config.get("scale_attn_by_inverse_layer_idx") or not config.get("scale_attn_weights", True):
    raise ValueError("GPT-2 configs with scale_attn_by_inverse_layer_idx=True or "
                     "scale_attn_weights=False are not supported")
  act = config.get("activation_function", "gelu_new")
  if act not in GELU:
    raise ValueError(f"GPT-2 activation_function={act!r}; supported: {sorted(GELU)}")
  options = common.import_config_fields(CONFIG_FIELDS, config)
  options["mlp_dim"] = options["mlp_dim"] or 4 * options["width"]
  return dict(options, mlp=GELU[act])


def export_config(model):
  """config.json for `GPT2LMHeadModel.from_pretrained`."""
  cfg = model.stack
  if cfg.mlp not in ("gelu_tanh", "gelu") or cfg.norm != "layernorm" or not cfg.use_bias:
    raise ValueError("only a GPT-2-shaped stack (layernorm, GELU MLP, biases) exports to HF GPT-2")
  return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"],
              **common.export_config_fields(CONFIG_FIELDS, model),
              activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
              tie_word_embeddings=True)
