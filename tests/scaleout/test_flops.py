"""The MaxText-style FLOP formula against XLA's own count of the compiled train step."""

import functools

import flax.linen as nn
import jax
import pytest

from mha_jax import config_util, flops, models
from mha_jax.data import DatasetInfo
from mha_jax.train import optim, state, steps, tasks

# Big enough that matmuls dominate (the formula leaves out norms, softmax, Adam),
# small enough to compile in seconds. Unscanned layers: XLA's cost analysis
# counts a while-loop body once, whatever its trip count.
GPT = dict(name="gpt2", variant="small", num_layers=2, width=128, num_heads=4, mlp_dim=512,
           vocab_size=256, max_len=64, scan_layers=False)
VIT = dict(name="vit", variant="Ti/4", num_layers=2, width=128, num_heads=4, mlp_dim=512,
           num_classes=10, image_size=32, scan_layers=False)


def compiled_step_flops(model, info, batch_size):
  tx, _ = optim.make_optimizer(config_util.base_config().optim, 100)
  task = tasks.make_task(config_util.base_config(), info)
  abstract = nn.unbox(jax.eval_shape(state.init_fn(model, tx, task, 0), jax.random.key(0)))
  if info.modality == "image":
    batch = {"image": jax.ShapeDtypeStruct((batch_size,) + info.image_shape, "float32"),
             "label": jax.ShapeDtypeStruct((batch_size,), "int32"),
             "mask": jax.ShapeDtypeStruct((batch_size,), "float32")}
  else:
    shape = (batch_size, info.seq_len)
    batch = {"inputs": jax.ShapeDtypeStruct(shape, "int32"),
             "targets": jax.ShapeDtypeStruct(shape, "int32"),
             "mask": jax.ShapeDtypeStruct(shape, "float32")}
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, task=task))
  return step.lower(abstract, batch).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("family", ["gpt", "vit"])
def test_formula_within_10_percent_of_cost_analysis(family):
  kind = "hopfield"   # counts both the model FLOPs and MHA's extra H update
  options = dict(GPT if family == "gpt" else VIT, attention={"kind": kind})
  model = models.build_model(**options)
  if family == "gpt":
    info = DatasetInfo("t", "text", 1, vocab_size=256, seq_len=64)
    counted = flops.training_flops(model, 8, "text", seq_len=64)
  else:
    info = DatasetInfo("i", "image", 1, num_classes=10, image_shape=(32, 32, 3))
    counted = flops.training_flops(model, 8, "image")
  xla = compiled_step_flops(model, info, 8)
  estimate = counted.model + counted.mha_extra
  print(f"{family} {kind}: formula {estimate:.4g} (model {counted.model:.4g}), "
        f"cost_analysis {xla:.4g}, ratio {estimate / xla:.3f}")
  assert abs(estimate - xla) / xla < 0.10, (family, kind, estimate, xla)
  assert counted.mha_extra > 0


def test_standard_attention_has_no_extra_score_work():
  model = models.build_model(**dict(GPT, attention={"kind": "standard"}))
  counted = flops.training_flops(model, 8, "text", seq_len=64)
  assert counted.mha_extra == 0 and counted.items == 8 * 64
