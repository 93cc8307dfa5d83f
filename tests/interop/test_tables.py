"""Every family table reads both ways: import ∘ export and export ∘ import are the
identity on random tensors, key for key (HF GPT-2, LLaMA, ViT, timm ViT, and the
PyTorch reference models' own tables)."""

import numpy as np
import pytest

from mha_jax import models
from mha_jax.interop import common, pretrained

SHAPES = dict(num_layers=3, width=40, num_heads=5, mlp_dim=56)
CASES = {"gpt2": ("gpt2", dict(vocab_size=97, max_len=23), False),
         "llama": ("llama", dict(vocab_size=91, max_len=64), False),
         "vit": ("vit", dict(num_classes=7, image_size=20, patch_size=5), False),
         "timm": ("vit", dict(num_classes=7, image_size=20, patch_size=5, norm_eps=1e-6), True)}


def random_flat(model):
  inp = (np.zeros((1, 20, 20, 3), np.float32) if models.family_name(model) == "vit"
         else np.zeros((1, 1), np.int32))
  shapes = pretrained.expected_shapes(model, inp)
  rng = np.random.RandomState(0)
  return {path: rng.randn(*s.shape).astype(np.float32) for path, s in shapes.items()}


def assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_table_round_trips_every_key(case):
  family, extra, timm = CASES[case]
  model = models.build_model(family, **SHAPES, **extra)
  table = pretrained.table_for(family, timm)
  ours = random_flat(model)
  theirs = table.export_state_dict(ours, 3, 5)
  back, origin = table.import_state_dict(theirs, 3, 5, "test")
  assert_same(back, ours)                                   # import ∘ export
  assert set(origin.values()) == set(theirs)                # every key read
  rng = np.random.RandomState(1)
  random_theirs = {k: rng.randn(*v.shape).astype(np.float32) for k, v in theirs.items()}
  assert_same(table.export_state_dict(table.import_state_dict(random_theirs, 3, 5, "test")[0],
                                      3, 5), random_theirs)  # export ∘ import


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_torch_reference_table_round_trips(family):
  torch_models = pytest.importorskip("mha_jax.interop.torch_models")
  extra = CASES[family][1]
  model = models.build_model(family, **SHAPES, **extra)
  ours = random_flat(model)
  options = {**SHAPES, **extra, "mlp": model.stack.mlp, "norm_eps": model.stack.norm_eps}
  cls = {"gpt2": torch_models.GPT2, "llama": torch_models.Llama, "vit": torch_models.ViT}[family]
  reference = cls.from_flat(ours, options)
  assert_same(common.flatten(reference.to_jax(dict(reference.named_parameters()))), ours)


def test_one_registry():
  assert set(pretrained.CONVERTERS) == set(models.FAMILIES)
  assert models.family_name(models.build_model("gpt2", **SHAPES)) == "gpt2"


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_config_field_tables_round_trip(family):
  """export_config then model_options gives back every option the table names."""
  from mha_jax.interop import gpt2, llama, vit
  from mha_jax.models import build_model
  module = {"gpt2": gpt2, "llama": llama, "vit": vit}[family]
  options = dict(num_layers=3, width=24, num_heads=4, mlp_dim=40)
  extra = {"gpt2": dict(vocab_size=37, max_len=19), "llama": dict(vocab_size=37, max_len=19),
           "vit": dict(num_classes=5, image_size=12, patch_size=4)}[family]
  model = build_model(family, **options, **extra)
  config = module.export_config(model)
  back = module.model_options(config)
  for field in module.CONFIG_FIELDS:
    expected = getattr(model.stack, field.ours, None) if hasattr(model.stack, field.ours) \
        else getattr(model, field.ours)
    assert back[field.ours] == expected, field
    assert config[field.theirs] == expected, field
