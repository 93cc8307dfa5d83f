"""The literal PyTorch MHA stack (float64) and the JAX `LayerStack` (float32) compute
the same outputs, hidden states and gradients, from the same weights."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mha_jax import attention, kinds
from mha_jax.interop import torch_reference
from mha_jax.models import layers, param_layout, stack_config

# Compile-bound (one XLA compile per case, 2 shared CPU cores): skip the expensive
# LLVM passes; the arithmetic compared is the same.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LAYERS, WIDTH, HEADS, MLP, BATCH, LENGTH = 3, 24, 4, 28, 2, 7  # head_dim 6: rotary needs even


@functools.lru_cache(maxsize=None)  # the guard tests below reuse the parametrized runs
def run_both(att, causal, mlp="gelu_tanh", seed=0, llama=False):
  torch.manual_seed(seed)
  shape = dict(mlp=mlp, norm_eps=1e-5)
  if llama:
    shape = dict(mlp="swiglu", norm_eps=1e-5, norm="rmsnorm", bias=False, rope_theta=100.0)
  ref = torch_reference.Stack(LAYERS, WIDTH, HEADS, MLP, att, **shape).double()
  with torch.no_grad():  # non-trivial norms, so a swapped scale/bias shows
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
  rng = np.random.RandomState(seed)
  x = rng.randn(BATCH, LENGTH, WIDTH)
  probe = rng.randn(BATCH, LENGTH, WIDTH)  # loss = Σ out·probe: every output counts

  x_t = torch.tensor(x, requires_grad=True)
  out_t, hidden_t = ref(x_t, causal=causal)
  (out_t * torch.tensor(probe)).sum().backward()
  torch_grads = torch_reference.stack_tensors_to_jax(
      {name: p.grad for name, p in ref.named_parameters()}, HEADS)

  jax_shape = dict(shape, use_bias=shape.pop("bias", True))
  cfg = stack_config.StackConfig(num_layers=LAYERS, width=WIDTH, num_heads=HEADS, mlp_dim=MLP,
                           attention=dataclass_dict(att), **jax_shape)
  stack = layers.LayerStack(cfg)
  params = param_layout.stack_layer_params(
      torch_reference.stack_tensors_to_jax(ref.state_dict(), HEADS))
  mask = attention.causal_mask(LENGTH) if causal else None

  def loss(params, x):
    out, inter = stack.apply({"params": params}, x, mask, return_intermediates=True)
    return jnp.sum(out * probe), (out, inter)

  args = (jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params), jnp.asarray(x, jnp.float32))
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)).lower(*args)
  (_, (out_j, inter)), (grads_j, dx_j) = step.compile(FAST_COMPILE)(*args)
  return dict(out=(np.asarray(out_j), out_t.detach().numpy()),
              dx=(np.asarray(dx_j), x_t.grad.numpy()),
              grads=(param_layout.unstack_layer_params(grads_j), torch_grads),
              hidden=(inter.get("hidden_state"), hidden_t))


def dataclass_dict(att):
  """The JAX AttentionConfig fields of the reference's settings that its kind reads."""
  reads = kinds.get(att.kind).all_fields
  return {field: value for field, value in dataclasses.asdict(att).items() if field in reads}


def max_grad_diff(grads_j, grads_t):
  diffs = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), grads_j, grads_t)
  return max(jax.tree.leaves(diffs))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("h0", ["zeros", "first_scores"])
@pytest.mark.parametrize("alpha", [0.5, 0.7])
def test_mha_stack_matches_torch_reference(alpha, h0, causal):
  att = torch_reference.Attention(kind="hopfield", alpha=alpha, alpha_hidden=alpha, h0=h0)
  r = run_both(att, causal)
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert np.abs(r["dx"][0] - r["dx"][1]).max() <= 1e-4
  assert max_grad_diff(*r["grads"]) <= 1e-4
  hidden_j, hidden_t = r["hidden"]
  for n in range(LAYERS):  # H_n itself, not only its effect on x
    np.testing.assert_allclose(hidden_j[n], hidden_t[n].detach().numpy(), atol=1e-5)


def test_llama_shaped_stack_matches_torch_reference():
  """RMSNorm, SwiGLU, rotary Q/K, no biases; MHA with first_scores."""
  att = torch_reference.Attention(kind="hopfield", alpha=0.5, alpha_hidden=0.5, h0="first_scores")
  r = run_both(att, True, llama=True)
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert np.abs(r["dx"][0] - r["dx"][1]).max() <= 1e-4
  assert max_grad_diff(*r["grads"]) <= 1e-4


@pytest.mark.parametrize("residual", ["scaled_branch", "standard"])
def test_other_residual_forms(residual):
  att = torch_reference.Attention(kind="hopfield", alpha=0.7, alpha_hidden=0.3, residual=residual)
  r = run_both(att, True, mlp="gelu")
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert max_grad_diff(*r["grads"]) <= 1e-4


def test_standard_attention_matches_torch_reference():
  r = run_both(torch_reference.Attention(kind="standard"), True)
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert np.abs(r["dx"][0] - r["dx"][1]).max() <= 1e-4
  assert max_grad_diff(*r["grads"]) <= 1e-4


def test_reference_is_not_trivially_standard():
  """Guard against a comparison that passes because MHA changes nothing."""
  std = run_both(torch_reference.Attention(kind="standard"), True)["out"][1]
  mha = run_both(torch_reference.Attention(kind="hopfield", alpha=0.5, alpha_hidden=0.5),
                 True)["out"][1]
  assert np.abs(std - mha).max() > 1e-2


def test_first_scores_layer_one_is_plain_attention_scores():
  """h0="first_scores": H_1 = s_1 exactly; "zeros": H_1 = (1−α′) s_1."""
  zeros = run_both(torch_reference.Attention(kind="hopfield", alpha=0.7, alpha_hidden=0.7,
                                             h0="zeros"), False)["hidden"][1]
  first = run_both(torch_reference.Attention(kind="hopfield", alpha=0.7, alpha_hidden=0.7,
                                             h0="first_scores"), False)["hidden"][1]
  np.testing.assert_allclose(zeros[0].detach().numpy(), 0.3 * first[0].detach().numpy(),
                             rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("separation,param,steps", [
    ("softmax", None, 2), ("sparsemax", None, 2), ("entmax", 1.5, 2), ("polynomial", 3.0, 1),
    ("cubic", 0.1, 1)])
def test_hopfield_energy_matches_torch_reference(separation, param, steps):
  att = torch_reference.Attention(kind="hopfield_energy", energy_steps=steps,
                                  separation=separation, separation_param=param)
  r = run_both(att, True)
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert np.abs(r["dx"][0] - r["dx"][1]).max() <= 1e-4
  # float32 against float64: relative to the largest gradient (polynomial heads are not
  # normalised, so their gradients reach ~10).
  largest = max(float(np.abs(g).max()) for g in jax.tree.leaves(r["grads"][1]))
  assert max_grad_diff(*r["grads"]) <= 1e-4 * max(1.0, largest)
  standard = run_both(torch_reference.Attention(kind="standard"), True)["out"][1]
  assert np.abs(standard - r["out"][1]).max() > 1e-3   # retrieval changed the numbers


def test_mha_with_retrieval_on_h_matches_torch_reference():
  att = torch_reference.Attention(kind="hopfield", alpha=0.6, alpha_hidden=0.4,
                                  energy_steps=1)
  r = run_both(att, True)
  assert np.abs(r["out"][0] - r["out"][1]).max() <= 1e-5
  assert max_grad_diff(*r["grads"]) <= 1e-4


def test_reference_entmax_backward_is_its_jacobian():
  z = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
  assert torch.autograd.gradcheck(lambda z: torch_reference._Entmax.apply(z, 1.5), (z,))
  assert torch.autograd.gradcheck(torch_reference._sparsemax, (z,))
