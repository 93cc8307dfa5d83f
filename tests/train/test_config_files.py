"""Config files: every paper row loads and builds its model, `:arguments` are
typed and checked, α′ is validated on every path. No training here: all fast."""

import dataclasses
import types

import pytest

from mha_jax.models import stack_config
from mha_jax import config_util
from mha_jax.train import ConfigError, tasks, train, validation

PAPER_ROWS = [
    "gpt2_wikitext103.py:size=small,attention=hopfield",
    "gpt2_wikitext103.py:size=medium",
    "llama_lm.py:dataset=wikitext103,attention=hopfield",
    "llama_lm.py:dataset=cnn_dailymail",
    "llama_lm.py:dataset=bookcorpus",
    "vit_cifar.py:size=Ti,dataset=cifar10",
    "vit_cifar.py:size=L,dataset=cifar100,attention=hopfield,alpha=0.7",
    "vit_imagenet.py:attention=hopfield,alpha=0.7",
    "transfer.py:dataset=cars196",
    "ablation_alpha.py:alpha=0.5,alpha_hidden=0.2",
    "noskip_depth.py:depth=8,dataset=cifar100,attention=hopfield",
    "demo.py:attention=hopfield",
]
TEXT_INFO = types.SimpleNamespace(modality="text", vocab_size=50257, seq_len=1024)


@pytest.mark.parametrize("spec", PAPER_ROWS + [f"{n}.py:smoke" for n in (
    "vit_cifar", "vit_imagenet", "transfer", "gpt2_wikitext103", "llama_lm", "demo")])
def test_config_loads_and_builds_its_model(spec, helpers):
  config = config_util.load_config(f"{helpers.configs}/{spec}")
  info = TEXT_INFO
  if config.model.name == "vit":
    size = config.data.image_size
    info = types.SimpleNamespace(modality="image", num_classes=10, image_shape=(size, size, 3))
  model = train.make_model(config.model, tasks.make_task(config, info))
  validation.validate(config)
  assert model.stack.skip_connections == ("noskip" not in spec)


def test_parse_arg_types_and_unknown_keys():
  args = config_util.parse_arg("size=S,alpha=0.7,depth=4,smoke,alpha_hidden=0.2", size="Ti",
                               alpha=0.5, depth=0, smoke=False, alpha_hidden=None)
  assert (args.size, args.alpha, args.depth, args.smoke, args.alpha_hidden) == (
      "S", 0.7, 4, True, 0.2)
  with pytest.raises(ValueError, match="unknown config arg 'alhpa'"):
    config_util.parse_arg("alhpa=1", alpha=0.5)
  with pytest.raises(ValueError, match="depth='four' is not an integer"):
    config_util.parse_arg("depth=four", depth=0)


def test_every_attention_field_is_overridable_from_the_command_line():
  config = config_util.load_config("configs/demo.py:attention=hopfield,alpha=0.7")
  fields = {f.name for f in dataclasses.fields(stack_config.AttentionConfig)}
  assert set(config.model.attention) == fields
  assert config.model.attention.alpha_hidden == 0.7   # tied to α as in the paper
  config.model.attention.h0 = "first_scores"           # what --config.model.attention.h0 does
  assert stack_config.AttentionConfig(**config.model.attention).h0 == "first_scores"


@pytest.mark.parametrize("value", ["-0.1", "-1", "1.5"])
def test_alpha_hidden_argument_out_of_range_is_rejected(value, helpers):
  # Issue 9 case 5: `:alpha_hidden=-0.1` used to mean α′ = α silently (any negative did).
  with pytest.raises(ValueError, match=f"attention.alpha_hidden={float(value)} is outside"):
    config_util.load_config(f"{helpers.configs}/demo.py:attention=hopfield,alpha_hidden={value}")


def test_alpha_hidden_override_out_of_range_is_rejected_before_data(helpers, tmp_path):
  config = helpers.smoke_config("demo", **{"model.attention.kind": "hopfield",
                                           "model.attention.alpha_hidden": -0.1})
  with pytest.raises(ConfigError, match="attention.alpha_hidden=-0.1 is outside"):
    train.train_and_evaluate(config, str(tmp_path))


def test_alpha_hidden_zero_is_kept_not_tied():
  config = config_util.load_config("configs/demo.py:attention=hopfield,alpha_hidden=0")
  assert config.model.attention.alpha_hidden == 0.0 and config.model.attention.alpha == 0.5


@pytest.mark.parametrize("key, value, message", [
    ("total_steps", 0, "config.total_steps=0 must be >= 1"),
    ("log_every", 0, "config.log_every=0 must be >= 1"),
    ("max_skipped_steps", -1, "config.max_skipped_steps=-1 must be >= 0"),
    ("optim.warmup_steps", -5, "config.optim.warmup_steps=-5 must be >= 0")])
def test_validate_names_the_field(key, value, message):
  config = config_util.base_config()
  node, leaf = (config.optim, "warmup_steps") if "." in key else (config, key)
  node[leaf] = value
  with pytest.raises(ConfigError, match=message):
    validation.validate(config)
