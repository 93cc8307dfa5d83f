"""attention.kind="hopfield_energy" in every model family (issue 20 §3, §4).

GPT-2, LLaMA and ViT of 2 layers against a NumPy float64 forward written from the
families' definitions (embeddings, norms, rotary, MLPs, heads) around the row-wise
retrieval oracle of tests/test_energy.py; the stack under every remat policy,
scanned and looped, equal to the plain scanned stack in values and gradients; a
GPT-2 on 8 simulated devices (tests/conftest.py) equal to one device.

Tolerances: float32 against float64, 1e-5 of the largest |logit| (measured: at
most 2.1e-6, polynomial GPT-2); float32 runs of one program in another fusion or
summation order (remat, loop, shards) agree to ~1e-6.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention, interop
from mha_jax.models import build_model, layers
from mha_jax.models.param_layout import stack_layer_params, unstack_layer_params
from mha_jax.models.stack_config import REMAT_POLICIES, StackConfig
from mha_jax.train import sharding
from tests.models.test_layers import BATCH, LENGTH, WIDTH, init_stack, stack_config
from tests.test_energy import np_readout, np_update

TINY = dict(num_layers=2, width=24, num_heads=3, mlp_dim=40)
VOCAB, TOKENS, IMAGE = 29, 7, 8
# What the NumPy forward of each family must reproduce (the models' published layouts).
FAMILY_FACTS = {
    "gpt2": dict(norm="layernorm", eps=1e-5, mlp="gelu_tanh", rope=None),
    "llama": dict(norm="rmsnorm", eps=1e-6, mlp="swiglu", rope=10000.0),
    "vit": dict(norm="layernorm", eps=1e-6, mlp="gelu", rope=None),
}
# (family, separation, separation_param as configured, as the oracle takes it, steps, β)
CASES = [
    ("gpt2", "entmax", 1.5, 1.5, 2, None),
    ("gpt2", "polynomial", 3.0, 3.0, 1, None),
    ("llama", "cubic", 0.05, (0.0, 0.05), 1, None),
    ("llama", "sparsemax", None, None, 2, 0.6),
    ("vit", "softmax", None, None, 3, None),
    ("vit", "entmax", 1.5, 1.5, 1, 0.5),
]


def _family_args(family, scan_layers=True):
  common = dict(TINY, name=family, scan_layers=scan_layers)
  if family == "vit":
    return dict(common, variant="Ti/4", image_size=IMAGE, num_classes=5)
  return dict(common, vocab_size=VOCAB)


def tiny_model(family, scan_layers=True, **attention_kw):
  return build_model(**_family_args(family, scan_layers),
                     attention=dict(kind="hopfield_energy", **attention_kw))


def family_inputs(family):
  if family == "vit":
    return jax.random.normal(jax.random.key(0), (2, IMAGE, IMAGE, 3))
  return jax.random.randint(jax.random.key(0), (2, TOKENS), 0, VOCAB)


def random_params(model, inputs, scale=0.3):
  """Every parameter drawn at random (norm scales around 1), so the reference must use
  each one; only shapes come from the model (jax.eval_shape: nothing compiled)."""
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), inputs))["params"])
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  return jax.tree.unflatten(treedef, [
      float(jax.tree_util.keystr(path).endswith("['scale']"))
      + scale * jax.random.normal(key, leaf.shape, leaf.dtype)
      for (path, leaf), key in zip(leaves, keys)])


# ---- NumPy float64 forward ---------------------------------------------------------------

def np_norm(x, p, facts):
  if facts["norm"] == "rmsnorm":
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + facts["eps"]) * p["scale"]
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + facts["eps"]) * p["scale"] + p["bias"]


def np_rope(x, theta):
  """Rotary embedding, half-split layout, positions 0 … T−1; x [B, T, N, D]."""
  length, head_dim = x.shape[1], x.shape[-1]
  angles = np.arange(length)[:, None] / theta ** (np.arange(0, head_dim, 2) / head_dim)
  cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
  x1, x2 = np.split(x, 2, axis=-1)
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def np_dense(x, p, spec="...i,io->...o"):
  y = np.einsum(spec, x, p["kernel"])
  return y + p["bias"] if "bias" in p else y


def np_mlp(p, x, kind):
  if kind == "swiglu":
    gate = np_dense(x, p["gate"])
    return np_dense(gate / (1 + np.exp(-gate)) * np_dense(x, p["up"]), p["down"])
  h = np_dense(x, p["fc1"])
  if kind == "gelu":
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
  else:
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
  return np_dense(h, p["fc2"])


def np_block(p, x, mask, facts, retrieval):
  """x ← x + Out(retrieve(Q, K, V)) on Norm x; x ← x + MLP(Norm x)."""
  separation, param, steps, beta = retrieval
  y = np_norm(x, p["attention_norm"], facts)
  q, k, v = (np_dense(y, p["attention"][name], "btd,dnh->btnh")
             for name in ("query", "key", "value"))
  if facts["rope"]:
    q, k = np_rope(q, facts["rope"]), np_rope(k, facts["rope"])
  beta = q.shape[-1] ** -0.5 if beta is None else beta
  state = q
  for _ in range(steps):
    state = np_update(state, k, beta, mask, separation, param)
  u = np_readout(state, k, v, beta, mask, separation, param)
  x = x + np_dense(u, p["attention"]["out"], "btnh,nhd->btd")
  return x + np_mlp(p["mlp"], np_norm(x, p["mlp_norm"], facts), facts["mlp"])


def np_model(family, params, inputs, retrieval, valid=None):
  """Logits of a 2-layer `family` model; `valid` [B, T]: key padding of a decoder."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), unstack_layer_params(params))
  facts, inputs = FAMILY_FACTS[family], np.asarray(inputs)
  if family == "vit":
    batch, size, _, channels = inputs.shape
    patch, grid = size // 2, 2   # Ti/4 on 8×8 images: 2×2 patches of 4×4 pixels
    patches = inputs.reshape(batch, grid, patch, grid, patch, channels).transpose(0, 1, 3, 2, 4, 5)
    x = np.einsum("bhwuvc,uvcd->bhwd", patches, p["embedding"]["kernel"]) + p["embedding"]["bias"]
    x = np.concatenate([np.broadcast_to(p["cls"], (batch, 1, x.shape[-1])),
                        x.reshape(batch, grid * grid, -1)], axis=1) + p["position_embedding"]
    mask, stack, final = np.ones((1, 1, 1, x.shape[1]), bool), p["encoder"], "encoder_norm"
  else:
    embedding = p["token_embedding"]["embedding"]
    x = embedding[inputs]
    if family == "gpt2":
      x = x + p["position_embedding"][:inputs.shape[1]]
    mask = np.tril(np.ones((inputs.shape[1],) * 2, bool))[None, None]
    if valid is not None:
      mask = mask & valid[:, None, None, :]
    stack, final = p["decoder"], "final_norm"
  for n in range(TINY["num_layers"]):
    x = np_block(stack[f"layers_{n}"], x, mask, facts, retrieval)
  x = np_norm(x, p[final], facts)
  if family == "vit":
    return np_dense(x[:, 0], p["head"])
  return x @ embedding.T if family == "gpt2" else np_dense(x, p["lm_head"])


@pytest.mark.parametrize("family,separation,param,np_param,steps,beta", CASES)
def test_model_family_matches_numpy_forward(family, separation, param, np_param, steps, beta):
  options = dict(energy_steps=steps, separation=separation, separation_param=param,
                 score_scale=beta)
  model, inputs = tiny_model(family, **options), family_inputs(family)
  params = random_params(model, inputs)
  kwargs, valid = {}, None
  if family == "gpt2":   # the second sequence's last two tokens are padding
    valid = np.ones((2, TOKENS), bool)
    valid[1, -2:] = False
    kwargs["padding_mask"] = jnp.asarray(valid)
  logits, _ = jax.jit(lambda p: model.apply({"params": p}, inputs, **kwargs))(params)
  expected = np_model(family, params, inputs, (separation, np_param, steps, beta), valid)
  scale = np.abs(expected).max()
  assert scale > 1.0   # the heads read real signal, not a zero-initialised output
  np.testing.assert_allclose(logits, expected, atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_model_family_scanned_and_looped_agree(family):
  options = dict(energy_steps=2, separation="entmax", separation_param=1.5)
  scanned, looped = tiny_model(family, **options), tiny_model(family, False, **options)
  inputs = family_inputs(family)
  # Weights of 0.3 make this ViT's sparse-head gradients ill-conditioned in float32 (a
  # 1e-7 relative nudge of the weights moves them by 3e-4, as far as scan and loop
  # differ); at 0.15 they are well-conditioned and agree to 1e-6.
  params = random_params(scanned, inputs, scale=0.15)

  def loss(model, params):
    logits, _ = model.apply({"params": params}, inputs)
    return jnp.mean(jnp.sin(logits))

  value_s, grad_s = jax.jit(jax.value_and_grad(lambda p: loss(scanned, p)))(params)
  value_l, grad_l = jax.jit(jax.value_and_grad(lambda p: loss(looped, p)))(
      unstack_layer_params(params))
  np.testing.assert_allclose(value_s, value_l, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grad_s, stack_layer_params(grad_l))


@pytest.mark.parametrize("family", ["gpt2", "llama", "vit"])
def test_standard_checkpoint_loads_and_zero_steps_softmax_is_standard(family):
  """No new parameters; energy_steps=0 with softmax gives standard attention's logits."""
  inputs = family_inputs(family)
  standard = build_model(**_family_args(family), attention=dict(kind="standard"))
  params = random_params(standard, inputs)
  energy_model = tiny_model(family, energy_steps=0)
  shapes = jax.eval_shape(lambda: nn.unbox(energy_model.init(jax.random.key(0), inputs)))
  assert jax.tree.structure(shapes["params"]) == jax.tree.structure(params)
  assert [a.shape for a in jax.tree.leaves(shapes["params"])] == [
      a.shape for a in jax.tree.leaves(params)]
  logits, _ = jax.jit(lambda p: energy_model.apply({"params": p}, inputs))(params)
  expected, _ = jax.jit(lambda p: standard.apply({"params": p}, inputs))(params)
  np.testing.assert_array_equal(logits, expected)
  stepped, _ = tiny_model(family, energy_steps=1).apply({"params": params}, inputs)
  assert np.abs(np.asarray(stepped - expected)).max() > 1e-3


@pytest.mark.parametrize("attention_kw,setting", [
    (dict(kind="hopfield_energy", energy_steps=1), "attention.kind='hopfield_energy'"),
    (dict(kind="hopfield", energy_steps=1), "Hopfield retrieval")])
def test_hf_export_refuses_retrieval_in_one_line(attention_kw, setting, tmp_path):
  model = build_model(**_family_args("gpt2"), attention=attention_kw)
  params = random_params(model, family_inputs("gpt2"))
  with pytest.raises(ValueError, match="does not export to transformers") as info:
    interop.export_pretrained(params, model, str(tmp_path))
  assert setting in str(info.value) and "\n" not in str(info.value)
  assert not list(tmp_path.iterdir())   # nothing half-written


# ---- remat and scan ----------------------------------------------------------------------

ENTMAX_STACK = dict(kind="hopfield_energy", energy_steps=2, separation="entmax",
                    separation_param=1.5)


def stack_value_and_grad(cfg, params):
  x = jax.random.normal(jax.random.key(3), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH)

  def loss(params):
    y, _ = layers.LayerStack(cfg).apply({"params": params}, x, mask)
    return jnp.mean(jnp.sin(y))
  return jax.jit(jax.value_and_grad(loss))(params)


@functools.cache
def plain_stack():
  """(params, loss, gradients) of the scanned stack without remat: the reference."""
  x = jax.random.normal(jax.random.key(3), (BATCH, LENGTH, WIDTH))
  params = init_stack(stack_config(), x, attention.causal_mask(LENGTH))  # no new parameters
  return (params,) + stack_value_and_grad(stack_config(**ENTMAX_STACK), params)


# Every policy scanned; the loop without remat (scan vs loop) and with full remat.
@pytest.mark.parametrize("remat_policy,scan", [
    (policy, True) for policy in REMAT_POLICIES if policy != "none"]
    + [("none", False), ("full", False)])
def test_remat_and_loop_equal_the_plain_scanned_stack(remat_policy, scan):
  cfg = StackConfig(**{**stack_config(**ENTMAX_STACK).__dict__, "remat_policy": remat_policy,
                       "scan_layers": scan})
  params, value, grads = plain_stack()
  other_value, other_grads = stack_value_and_grad(
      cfg, params if scan else unstack_layer_params(params))
  assert np.abs(np.asarray(jax.tree.leaves(grads)[0])).max() > 1e-4
  np.testing.assert_allclose(other_value, value, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               other_grads if scan else stack_layer_params(other_grads), grads)


# ---- sharded -----------------------------------------------------------------------------

@pytest.mark.parametrize("mesh_config", [dict(data=2, tensor=4), dict(data=2, fsdp=2, tensor=2)],
                         ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()))
def test_sharded_gpt_equals_one_device(mesh_config):
  model = build_model("gpt2", None, num_layers=2, width=32, num_heads=4, mlp_dim=48,
                      vocab_size=VOCAB, attention=dict(kind="hopfield_energy", energy_steps=2,
                                                       separation="sparsemax"))
  tokens = jax.random.randint(jax.random.key(4), (8, TOKENS + 1), 0, VOCAB)
  params = random_params(model, tokens[:, :-1], scale=0.1)

  def loss(params, tokens):
    logits, _ = model.apply({"params": params}, tokens[:, :-1])
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, tokens[:, 1:, None], axis=-1))

  step = jax.value_and_grad(loss)
  value, grads = jax.jit(step)(params, tokens)
  mesh = sharding.make_mesh(mesh_config)
  rules = sharding.logical_rules({})
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(1), tokens[:, :-1]))["params"]
  shardings = sharding.state_shardings(boxed, mesh, rules)
  placed = jax.device_put(params, shardings)
  with sharding.step_context(mesh, rules):
    sharded_value, sharded_grads = jax.jit(step)(
        placed, jax.device_put(tokens, sharding.batch_sharding(mesh)))
  query = placed["decoder"]["layers"]["attention"]["query"]["kernel"]   # [L, D, N, H]
  assert query.addressable_shards[0].data.shape[2] == 4 // mesh_config["tensor"]
  np.testing.assert_allclose(sharded_value, value, atol=2e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), sharded_grads, grads)
