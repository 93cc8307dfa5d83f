"""mha_jax.energy against NumPy float64 loops and closed forms (issue 20 §4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention, energy

CASES = [("softmax", None), ("sparsemax", None), ("entmax", 1.5), ("polynomial", 3.0),
         ("cubic", (0.1, 0.2))]
CONVEX_CASES = [("softmax", None), ("entmax", 1.5), ("sparsemax", None), ("polynomial", 3.0)]


STATIC = ("separation", "separation_param")
# jit, so each case compiles once instead of dispatching every op eagerly.
separate = jax.jit(energy.separate, static_argnames=STATIC)
hopfield_energy = jax.jit(energy.hopfield_energy, static_argnames=STATIC)
hopfield_update = jax.jit(energy.hopfield_update, static_argnames=STATIC)
retrieve = jax.jit(energy.hopfield_retrieve, static_argnames=STATIC + ("steps",))
converge = jax.jit(energy.converge, static_argnames=STATIC + ("max_steps",))


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


# ---- NumPy oracles: one row at a time, float64 -------------------------------------------

def np_sparsemax(z):
  z_sorted = np.sort(z)[::-1]
  cumulative = np.cumsum(z_sorted)
  rank = np.arange(1, len(z) + 1)
  support = rank[1 + rank * z_sorted > cumulative].max()
  return np.maximum(z - (cumulative[support - 1] - 1) / support, 0.0)


def np_entmax(z, alpha):
  """Bisection on τ in Σ [(α−1)z − τ]₊^{1/(α−1)} = 1 between max−1 and max."""
  x = (alpha - 1) * z
  lo, hi = x.max() - 1, x.max()
  for _ in range(200):
    mid = (lo + hi) / 2
    if np.sum(np.maximum(x - mid, 0) ** (1 / (alpha - 1))) >= 1:
      lo = mid
    else:
      hi = mid
  p = np.maximum(x - lo, 0) ** (1 / (alpha - 1))
  return p / p.sum()


def np_row_weights(u, separation, param):
  if separation == "softmax" or (separation == "entmax" and param == 1.0):
    e = np.exp(u - u.max())
    return e / e.sum()
  if separation == "sparsemax":
    return np_sparsemax(u)
  if separation == "entmax":
    return np_entmax(u, param)
  if separation == "polynomial":
    relu = np.maximum(u, 0)
    if not relu.any():  # no positive score: L is 0 nearby, so is its gradient
      return relu
    return relu ** (param - 1) / np.sum(relu ** param) ** ((param - 1) / param)
  c2, c3 = param
  phi = u + c2 * u ** 2 + c3 * u ** 3
  e = np.exp(phi - phi.max())
  return e / e.sum() * (1 + 2 * c2 * u + 3 * c3 * u ** 2)


def np_row_lagrangian(u, separation, param):
  if separation in ("softmax", "cubic"):
    phi = u if separation == "softmax" else u + param[0] * u ** 2 + param[1] * u ** 3
    return phi.max() + np.log(np.sum(np.exp(phi - phi.max())))
  if separation == "polynomial":
    return np.sum(np.maximum(u, 0) ** param) ** (1 / param)
  alpha = 2.0 if separation == "sparsemax" else param
  p = np_row_weights(u, separation, param)
  return p @ u + (1 - np.sum(p ** alpha)) / (alpha * (alpha - 1))


def np_rows(fn, q, k, beta, mask, *args):
  """{(b, t, n): (fn(scores over the allowed keys, *args), allowed)}; mask [B|1, N|1, T, S]."""
  batch, length, heads, _ = q.shape
  mask = np.broadcast_to(mask, (batch, heads, length, k.shape[1]))
  out = {}
  for b in range(batch):
    for t in range(length):
      for n in range(heads):
        allowed = mask[b, n, t]
        u = beta * k[b, allowed, n] @ q[b, t, n]
        out[b, t, n] = (fn(u, *args), allowed)
  return out


def np_update(q, k, beta, mask, separation, param):
  new = np.zeros(q.shape)
  for (b, t, n), (w, allowed) in np_rows(np_row_weights, q, k, beta, mask, separation,
                                         param).items():
    new[b, t, n] = w @ k[b, allowed, n]
  return new


def np_readout(q, k, v, beta, mask, separation, param):
  out = np.zeros(q.shape[:3] + v.shape[-1:])
  for (b, t, n), (w, allowed) in np_rows(np_row_weights, q, k, beta, mask, separation,
                                         param).items():
    out[b, t, n] = w @ v[b, allowed, n]
  return out


def np_energy(q, k, beta, mask, separation, param):
  e = 0.5 * np.sum(q ** 2, -1)
  for (b, t, n), (lagr, _) in np_rows(np_row_lagrangian, q, k, beta, mask, separation,
                                      param).items():
    e[b, t, n] -= lagr / beta
  return e


def random_qkv(seed, batch=2, length=5, heads=2, head_dim=4, keys=None):
  rng = np.random.default_rng(seed)
  keys = keys or length
  return (rng.normal(size=(batch, length, heads, head_dim)),
          rng.normal(size=(batch, keys, heads, head_dim)),
          rng.normal(size=(batch, keys, heads, head_dim)))


def causal_padding_mask(batch=2, length=5):
  valid = np.ones((batch, length), bool)
  valid[1, -2:] = False
  return np.asarray(attention.causal_mask(length)) & np.asarray(
      attention.padding_mask(jnp.asarray(valid)))


MASKS = {"none": None, "causal": np.asarray(attention.causal_mask(5)),
         "padding": np.array([True, True, True, False, False])[None, None, None],
         "causal+padding": causal_padding_mask()}


# ---- §2 source-field energy ----------------------------------------------------------------

@pytest.mark.parametrize("mask_name", MASKS)
def test_source_energy_gradient_is_attention(mask_name):
  q, k, v = random_qkv(0)
  mask = MASKS[mask_name]
  full = np.ones((1, 1, 5, 5), bool) if mask is None else mask
  expected = np_readout(q, k, v, 0.5, full, "softmax", None)
  lse = np_rows(np_row_lagrangian, q, k, 0.5, full, "softmax", None)
  source = jnp.zeros(q.shape)
  value, grad = jax.jit(jax.value_and_grad(energy.attention_energy, argnums=3))(
      q, k, v, source, mask=mask, scale=0.5)
  np.testing.assert_allclose(value, sum(l for l, _ in lse.values()), rtol=1e-12)
  np.testing.assert_allclose(grad, expected, atol=1e-12)
  np.testing.assert_allclose(grad, attention.dot_product_attention(q, k, v, mask=mask,
                                                                   scale=0.5), atol=1e-12)


# ---- energy and update -------------------------------------------------------------------

@pytest.mark.parametrize("separation,param", CASES + [("entmax", 3.0)])
def test_unit_gradient_step_of_the_energy_is_one_update(separation, param):
  q, k, _ = random_qkv(1)
  mask, beta = MASKS["causal+padding"], 0.8
  options = dict(beta=beta, mask=mask, separation=separation, separation_param=param)
  grad = jax.jit(jax.grad(lambda s: jnp.sum(energy.hopfield_energy(s, k, **options))))(q)
  expected = np_update(q, k, beta, mask, separation, param)
  np.testing.assert_allclose(hopfield_update(q, k, **options), expected, atol=1e-10)
  np.testing.assert_allclose(q - grad, expected, atol=1e-10)
  np.testing.assert_allclose(hopfield_energy(q, k, **options),
                             np_energy(q, k, beta, mask, separation, param), atol=1e-10)


def test_zero_steps_is_standard_attention_bit_for_bit():
  with jax.enable_x64(False):
    q, k, v = (jnp.asarray(a, jnp.float32) for a in random_qkv(3))
    mask = jnp.asarray(causal_padding_mask())
    expected = attention.dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(energy.hopfield_retrieve(q, k, v, steps=0, mask=mask),
                                  expected)
    np.testing.assert_allclose(
        expected, np_readout(*(np.asarray(a, np.float64) for a in (q, k, v)), 0.5,
                             np.asarray(mask), "softmax", None), atol=1e-5)


@pytest.mark.parametrize("separation,param", CONVEX_CASES)
def test_energy_never_rises_along_the_update(separation, param):
  seeds = [random_qkv(10 + seed, length=6, head_dim=6) for seed in range(4)]
  q, k = (np.concatenate([draw[i] for draw in seeds]) for i in (0, 1))  # a seed per example
  options = dict(beta=1.0, mask=None, separation=separation, separation_param=param)
  state, energies = q, [hopfield_energy(q, k, **options)]
  for _ in range(8):
    state = hopfield_update(state, k, **options)
    energies.append(hopfield_energy(state, k, **options))
  drops = -np.diff(np.stack(energies), axis=0)
  assert drops.min() >= -1e-12
  assert drops[0].max() > 1e-2  # the iteration actually moved


@pytest.mark.parametrize("separation,param", [("softmax", None), ("entmax", 1.5),
                                              ("polynomial", 4.0)])
def test_converged_state_is_a_fixed_point(separation, param):
  q, k, _ = random_qkv(4)
  mask = MASKS["causal"]
  result = converge(q, k, beta=1.0, mask=mask, separation=separation,
                    separation_param=param, tol=1e-12, max_steps=400)
  assert bool(jnp.all(result.converged))
  np.testing.assert_allclose(np_update(np.asarray(result.fixed_point), k, 1.0, mask,
                                       separation, param), result.fixed_point, atol=1e-10)
  trace = np.asarray(result.energy_trace)
  last = int(result.steps.max())
  assert np.all(np.diff(trace[:last + 1], axis=0) <= 1e-12)
  assert np.isnan(trace[last + 1:]).all()


@pytest.mark.parametrize("separation,param", [("softmax", None), ("entmax", 1.5),
                                              ("sparsemax", None), ("polynomial", 6.0)])
def test_large_beta_retrieves_the_stored_pattern_from_a_nearby_query(separation, param):
  """±1 patterns, D = 32, 15 % of the query's signs flipped; β = 1 ≫ 1/√D (the
  polynomial head is scale-free: its sharpness is the degree)."""
  rng = np.random.default_rng(5)
  patterns = rng.choice([-1.0, 1.0], size=(1, 12, 1, 32))
  values = rng.normal(size=(1, 12, 1, 3))
  query = patterns[:, 7:8] * np.where(rng.random((1, 1, 1, 32)) < 0.15, -1.0, 1.0)
  result = converge(query, patterns, beta=1.0, separation=separation,
                    separation_param=param, tol=1e-10, max_steps=50)
  fixed = np.asarray(result.fixed_point)[0, 0, 0]
  target = patterns[0, 7, 0]
  if separation == "polynomial":  # keys with a positive overlap keep a small weight
    assert fixed @ target / np.linalg.norm(fixed) / np.linalg.norm(target) > 0.9999
  else:
    np.testing.assert_allclose(fixed, target, atol=1e-6)
    np.testing.assert_allclose(
        retrieve(query, patterns, values, steps=2, beta=1.0, separation=separation,
                 separation_param=param)[0, 0, 0], values[0, 7, 0], atol=1e-6)
  assert int(result.well_type[0, 0, 0]) == energy.WELL_TYPES.index("single")


# ---- separations -------------------------------------------------------------------------

@pytest.mark.parametrize("separation,param", [("sparsemax", None), ("entmax", 1.25),
                                              ("entmax", 1.5), ("entmax", 2.0),
                                              ("entmax", 4.0)])
def test_sparse_separations_match_numpy(separation, param):
  rng = np.random.default_rng(6)
  logits = 3.0 * rng.normal(size=(4, 9))
  mask = rng.random((4, 9)) < 0.7
  mask[:, 0] = True
  weights = np.asarray(separate(logits, separation=separation, separation_param=param,
                                mask=mask))
  for row in range(4):
    expected = np.zeros(9)
    expected[mask[row]] = np_row_weights(logits[row, mask[row]], separation, param)
    np.testing.assert_allclose(weights[row], expected, atol=1e-12)
  assert np.all(weights[~mask] == 0.0) and (weights[mask] == 0).any()


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0, 3.0])
def test_entmax_jacobian_matches_finite_differences(alpha):
  logits = np.random.default_rng(7).normal(size=7) * 2.0
  step = 1e-6
  numeric = np.stack([(np_entmax(logits + step * e, alpha) - np_entmax(logits - step * e, alpha))
                      / (2 * step) for e in np.eye(7)], axis=1)
  entmax = lambda z: energy.separate(z, separation="entmax", separation_param=alpha)
  np.testing.assert_allclose(jax.jit(jax.jacfwd(entmax))(logits), numeric, atol=1e-7)
  np.testing.assert_allclose(jax.jit(jax.jacrev(entmax))(logits), numeric, atol=1e-7)


def test_reductions_to_softmax():
  logits = np.random.default_rng(8).normal(size=(3, 8)) * 2.0
  softmax = np.asarray(jax.nn.softmax(logits, axis=-1))
  weights = lambda sep, param: np.asarray(separate(logits, separation=sep,
                                                   separation_param=param))
  np.testing.assert_allclose(weights("entmax", 1.0), softmax, atol=1e-15)
  traced = jax.jit(lambda a: energy.separate(logits, separation="entmax", separation_param=a))
  errors = [np.abs(traced(1.0 + gap) - softmax).max() for gap in (1e-1, 1e-2, 1e-3)]
  assert errors[0] > errors[1] > errors[2] and errors[2] < 2e-3
  np.testing.assert_allclose(traced(1.0), softmax, atol=1e-15)
  np.testing.assert_allclose(weights("entmax", 2.0), weights("sparsemax", None), atol=1e-12)
  np.testing.assert_allclose(weights("cubic", (0.0, 0.0)), softmax, atol=1e-15)
  np.testing.assert_allclose(weights("cubic", 0.0), softmax, atol=1e-15)
  q, k, v = random_qkv(9)
  np.testing.assert_allclose(retrieve(q, k, v, steps=3, separation="cubic", separation_param=0.0),
                             retrieve(q, k, v, steps=3), atol=1e-14)


@pytest.mark.parametrize("separation,param", CASES)
def test_retrieval_matches_numpy_and_masked_keys_get_zero_weight(separation, param):
  q, k, v = random_qkv(11)
  mask = causal_padding_mask()
  options = dict(beta=0.7, mask=mask, separation=separation, separation_param=param)
  state, np_state = q, q
  for _ in range(4):
    scores = attention.attention_scores(state, k, 0.7)
    weights = np.asarray(separate(scores, separation=separation, separation_param=param,
                                  mask=mask))
    assert np.all(np.broadcast_to(weights, (2, 2, 5, 5))[~np.broadcast_to(mask, (2, 2, 5, 5))]
                  == 0.0)
    state = hopfield_update(state, k, **options)
    np_state = np_update(np_state, k, 0.7, mask, separation, param)
  out = retrieve(q, k, v, steps=4, **options)
  np.testing.assert_allclose(out, np_readout(np_state, k, v, 0.7, mask, separation, param),
                             atol=1e-9)
  # Padding keys of example 1 may change arbitrarily without moving any output.
  k_noisy, v_noisy = k.copy(), v.copy()
  k_noisy[1, -2:], v_noisy[1, -2:] = 1e3, -1e3
  np.testing.assert_array_equal(out, retrieve(q, k_noisy, v_noisy, steps=4, **options))


@pytest.mark.parametrize("separation,param", CASES)
def test_grad_through_the_iteration_matches_finite_differences(separation, param):
  q, k, v = random_qkv(12)
  mask = MASKS["causal"]
  project = np.random.default_rng(13).normal(size=q.shape)

  def loss(q_, k_, v_):
    out = energy.hopfield_retrieve(q_, k_, v_, steps=3, beta=0.9, mask=mask,
                                   separation=separation, separation_param=param)
    return jnp.sum(out * project)

  jitted = jax.jit(loss)
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  rng, step = np.random.default_rng(14), 1e-6
  for index, grad in enumerate(grads):
    direction = rng.normal(size=grad.shape)
    args_plus = [q, k, v]
    args_minus = [q, k, v]
    args_plus[index] = args_plus[index] + step * direction
    args_minus[index] = args_minus[index] - step * direction
    numeric = (float(jitted(*args_plus)) - float(jitted(*args_minus))) / (2 * step)
    np.testing.assert_allclose(np.sum(np.asarray(grad) * direction), numeric, rtol=1e-6)


def test_vmap_over_queries_and_a_traced_alpha():
  q, k, v = random_qkv(15)
  alphas = jnp.asarray([1.0, 1.5, 2.0])
  per_alpha = jax.jit(jax.vmap(lambda a: energy.hopfield_retrieve(
      q, k, v, steps=2, separation="entmax", separation_param=a)))(alphas)
  for index, alpha in enumerate([1.0, 1.5, 2.0]):
    np.testing.assert_allclose(per_alpha[index], np_readout(
        np_update(np_update(q, k, 0.5, True, "entmax", alpha), k, 0.5, True, "entmax", alpha),
        k, v, 0.5, True, "entmax", alpha), atol=1e-12)
  per_example = jax.jit(jax.vmap(lambda q_, k_, v_: energy.hopfield_retrieve(
      q_[None], k_[None], v_[None], steps=2, separation="sparsemax")[0]))(q, k, v)
  np.testing.assert_allclose(per_example, retrieve(q, k, v, steps=2, separation="sparsemax"),
                             atol=1e-12)


def test_bfloat16_inputs_keep_a_float32_state():
  with jax.enable_x64(False):
    q, k, v = (jnp.asarray(a, jnp.float32) for a in random_qkv(16))
    expected = retrieve(q, k, v, steps=2, separation="entmax")
    low = retrieve(*(a.astype(jnp.bfloat16) for a in (q, k, v)), steps=2, separation="entmax")
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), expected, atol=0.05)


# ---- wells and bad input -----------------------------------------------------------------

def test_well_types_single_metastable_global():
  keys = np.eye(8)[None, :, None] * 4.0
  duplicated = keys.copy()
  duplicated[0, 1, 0] = keys[0, 0, 0]  # two identical keys share one well
  query = keys[:, :1] + 0.1
  classify = lambda k_, beta: converge(query, k_, beta=beta, tol=1e-10, max_steps=200)
  single = classify(keys, 2.0)
  metastable = classify(duplicated, 2.0)
  spread = classify(keys, 1e-3)  # almost uniform weights
  kinds = [int(r.well_type[0, 0, 0]) for r in (single, metastable, spread)]
  assert [energy.WELL_TYPES[i] for i in kinds] == ["single", "metastable", "global"]
  keys_needed = [int(r.keys_for_mass[0, 0, 0]) for r in (single, metastable, spread)]
  assert keys_needed == [1, 2, 8]  # uniform over 8: 0.9 needs ceil(7.2) = 8 keys


@pytest.mark.parametrize("call,bad", [
    (dict(separation="relu"), "'relu'"),
    (dict(separation="entmax", separation_param=0.5), "0.5"),
    (dict(separation="polynomial", separation_param=1.0), "1.0"),
    (dict(separation="cubic", separation_param=(1.0, 0.0)), "(1.0, 0.0)"),
    (dict(separation="softmax", separation_param=2.0), "2.0"),
    (dict(separation="entmax", separation_param="1.5"), "'1.5'"),
    (dict(separation="cubic", separation_param=(0.0, 0.1, 0.2)), "(0.0, 0.1, 0.2)"),
])
def test_bad_separation_raises_one_value_error(call, bad):
  with pytest.raises(ValueError, match="allowed") as error:
    energy.separate(jnp.zeros((2, 3)), **call)
  assert bad in str(error.value)
  if call["separation"] == "relu":
    assert all(name in str(error.value) for name in energy.SEPARATIONS)


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_bad_step_count_raises(steps):
  q, k, v = random_qkv(17)
  with pytest.raises(ValueError, match=f"steps={steps!r}"):
    energy.hopfield_retrieve(q, k, v, steps=steps)


def test_a_query_with_no_allowed_key_has_zero_lagrangian_and_finite_gradients():
  q, k, _ = random_qkv(18)
  mask = np.ones((2, 1, 5, 5), bool)
  mask[0, :, 2] = False  # query 2 of example 0 may attend to nothing
  for separation, param in [("softmax", None), ("entmax", 1.5), ("cubic", (0.1, 0.2))]:
    options = dict(beta=1.0, mask=mask, separation=separation, separation_param=param)
    energies = hopfield_energy(q, k, **options)
    np.testing.assert_allclose(energies[0, 2], 0.5 * np.sum(q[0, 2] ** 2, -1), atol=1e-12)
    grad = jax.jit(jax.grad(lambda s, o=options: jnp.sum(energy.hopfield_energy(s, k, **o))))(q)
    assert np.isfinite(np.asarray(grad)).all()
