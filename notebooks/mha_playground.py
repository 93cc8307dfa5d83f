# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Modern Hopfield Attention with jit, vmap and grad
#
# MHA keeps a per-head T×T hidden state H and carries it from layer to layer:
#
#     s_n = Q_n K_nᵀ / √d,   H_n = α′ H_{n−1} + (1−α′) s_n,   A_n = softmax(mask(H_n))
#
# α′ = 0 is standard attention. Every number and plot below is computed when the
# notebook runs (CPU, about a minute). Each `assert` checks a result against an
# independent computation; CI runs this notebook (`tests/test_notebook.py`), so a
# wrong result fails the build. The source of truth is `mha_playground.py`
# (Jupytext percent format); `mha_playground.ipynb` is its pair.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from mha_jax import attention, data, energy, kinds
from mha_jax.analysis import relative_rank_residual
from mha_jax.models import build_model
from mha_jax.train import steps, tasks

print("jax", jax.__version__, "on", jax.devices()[0].platform)

# %% [markdown]
# ## 1. The pure functions under `jit`
#
# `attention.hopfield_attention(q, k, v, h_prev, alpha_hidden=...)` is one layer: it
# returns the output and H_n. Chaining L layers is a `lax.scan` over per-layer q, k, v
# (random here; a model computes them from x).

# %%
B, T, N, D, L = 2, 12, 4, 8, 3
q_L, k_L, v_L = (jax.random.normal(key, (L, B, T, N, D))
                 for key in jax.random.split(jax.random.key(0), 3))
mask = attention.causal_mask(T)


@jax.jit
def mha_chain(alpha_hidden, q_LxBxTxNxD, k_LxBxTxNxD, v_LxBxTxNxD):
  """L layers of MHA; returns (last layer's output [B, T, N, D], every H_n [L, B, N, T, T])."""
  def layer(h_prev, qkv):
    out, h = attention.hopfield_attention(*qkv, h_prev, alpha_hidden=alpha_hidden, mask=mask)
    return h, (out, h)
  _, batch, length, heads, _ = q_LxBxTxNxD.shape
  h0 = jnp.zeros((batch, heads, length, k_LxBxTxNxD.shape[2]))
  _, (out_L, h_L) = jax.lax.scan(layer, h0, (q_LxBxTxNxD, k_LxBxTxNxD, v_LxBxTxNxD))
  return out_L[-1], h_L


out, h_L = mha_chain(0.5, q_L, k_L, v_L)

# Independent check in NumPy float64: H_n = Σ_{m≤n} (1−α′) α′^{n−m} s_m.
s_L = np.einsum("lbtnd,lbsnd->lbnts", np.float64(q_L), np.float64(k_L)) / np.sqrt(D)
h_closed = np.stack([sum(0.5 * 0.5 ** (n - m) * s_L[m] for m in range(n + 1)) for n in range(L)])
print("max |H − closed form|:", np.abs(np.asarray(h_L) - h_closed).max())
assert np.allclose(h_L, h_closed, atol=1e-5)

# α′ = 0 is standard attention.
standard = attention.dot_product_attention(q_L[-1], k_L[-1], v_L[-1], mask=mask)
print("α′ = 0 vs dot_product_attention, max |Δ|:",
      jnp.abs(mha_chain(0.0, q_L, k_L, v_L)[0] - standard).max())
assert jnp.allclose(mha_chain(0.0, q_L, k_L, v_L)[0], standard, atol=1e-6)

# %% [markdown]
# ## 2. `vmap` over α′ and over heads
#
# α′ may be a traced scalar, so one `vmap` evaluates a whole α′ grid in one call.

# %%
alphas = jnp.linspace(0.0, 0.95, 20)
out_K, h_K = jax.vmap(mha_chain, in_axes=(0, None, None, None))(alphas, q_L, k_L, v_L)
for i in (0, 7, 19):
  assert jnp.allclose(out_K[i], mha_chain(alphas[i], q_L, k_L, v_L)[0], atol=1e-6)


def entropy(weights):
  return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(weights), 0.0), axis=-1)


# Mean attention entropy per layer: A_n = softmax(mask(H_n)).
entropy_KxL = entropy(attention.masked_softmax(h_K, mask)).mean(axis=(2, 3, 4))
fig, ax = plt.subplots(figsize=(5, 3))
for n in range(L):
  ax.plot(alphas, entropy_KxL[:, n], label=f"layer {n + 1}")
ax.set(xlabel="α′", ylabel="mean attention entropy (nats)", title="one vmap over 20 values of α′")
ax.legend()
plt.show()

# %% [markdown]
# Over heads: `vmap` over the head axis runs one single-head chain per head, here
# each head with its own α′.

# %%
def single_head_chain(alpha_hidden, q_LxBxTxD, k_LxBxTxD, v_LxBxTxD):
  out, h = mha_chain(alpha_hidden, q_LxBxTxD[..., None, :], k_LxBxTxD[..., None, :],
                     v_LxBxTxD[..., None, :])
  return out[..., 0, :], h[:, :, 0]


alpha_per_head = jnp.array([0.0, 0.3, 0.6, 0.9])
out_heads, h_heads = jax.vmap(single_head_chain, in_axes=(0, 3, 3, 3), out_axes=(2, 2))(
    alpha_per_head, q_L, k_L, v_L)
for n, a in enumerate(alpha_per_head):
  assert jnp.allclose(out_heads[:, :, n], mha_chain(a, q_L, k_L, v_L)[0][:, :, n], atol=1e-6)
print("per-head α′", alpha_per_head, "→ output", out_heads.shape, "H", h_heads.shape)

# %% [markdown]
# ## 3. `grad` with respect to α′
#
# A teacher chain with α′ = 0.6 makes targets; gradient descent on α′ alone, from
# 0.1, should find the teacher's value.

# %%
teacher_alpha = 0.6
target, _ = mha_chain(teacher_alpha, q_L, k_L, v_L)


def loss(alpha_hidden):
  return jnp.mean((mha_chain(alpha_hidden, q_L, k_L, v_L)[0] - target) ** 2)


grad_fn = jax.jit(jax.grad(loss))
eps = 1e-2
for a in (0.2, 0.8):
  central = (loss(a + eps) - loss(a - eps)) / (2 * eps)
  print(f"α′ = {a}: grad {float(grad_fn(a)):+.6f}, central difference {float(central):+.6f}")
  assert jnp.allclose(grad_fn(a), central, rtol=2e-2)

alpha_fit, optimizer = jnp.float32(0.1), optax.adam(0.05)
opt_state, fit_path = optimizer.init(alpha_fit), []
for _ in range(150):
  updates, opt_state = optimizer.update(grad_fn(alpha_fit), opt_state)
  alpha_fit = jnp.clip(optax.apply_updates(alpha_fit, updates), 0.0, 1.0)
  fit_path.append(float(alpha_fit))
print(f"fitted α′ = {float(alpha_fit):.4f} (teacher {teacher_alpha})")
assert abs(float(alpha_fit) - teacher_alpha) < 0.01

grid = jnp.linspace(0.0, 1.0, 41)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
ax1.plot(grid, jax.vmap(loss)(grid), label="loss")
ax1.plot(grid, jax.vmap(jax.grad(loss))(grid), label="vmap(grad(loss))")
ax1.axvline(teacher_alpha, color="gray", ls=":")
ax1.set(xlabel="α′", title="loss and its gradient")
ax1.legend()
ax2.plot(fit_path)
ax2.axhline(teacher_alpha, color="gray", ls=":")
ax2.set(xlabel="Adam step", ylabel="α′", title="fitting α′ by gradient descent")
plt.show()

# %% [markdown]
# ## 4. A tiny model on Shakespeare, kind by kind
#
# A 4-layer GPT-2 (width 32, 4 heads) on characters of Shakespeare's works (offline:
# `python -m mha_jax.data.prepare offline`), trained with the project's own
# `steps.train_step` for a few hundred AdamW steps. Every kind sees the same batches
# and the same initial weights. The energy kinds (`attention.kind="hopfield_energy"`,
# `mha_jax/energy.py`) replace softmax attention by `energy_steps` Hopfield updates
# ξ ← Kᵀ sep(β K ξ) with separation `sep`.

# %%
SEQ_LEN, BATCH, STEPS, EVAL_BATCHES = 32, 8, 300, 8
data_config = data.default_data_config("shakespeare_char", seq_len=SEQ_LEN)


def text_input(split, train):
  return data.build_input(data_config, split=split, global_batch_size=BATCH, train=train,
                          seed=0, process_index=0, process_count=1)


train_input = text_input("train", train=True)
info, tokenizer = train_input.info, data.dataset_tokenizer(data_config)
train_batches = jax.tree.map(lambda *xs: np.stack(xs), *[next(train_input) for _ in range(STEPS)])
eval_input = text_input("validation", train=False)
eval_batches = jax.tree.map(lambda *xs: np.stack(xs),
                            *[next(eval_input) for _ in range(EVAL_BATCHES)])
print(f"vocabulary {info.vocab_size} characters; a training sequence:")
print(repr(tokenizer.decode(train_batches["inputs"][0, 0].tolist())))

# %%
RUNS = {
    "standard": {"kind": "standard"},
    "MHA α=α′=0.5": {"kind": "hopfield", "alpha": 0.5, "alpha_hidden": 0.5},
    "energy softmax ×2": {"kind": "hopfield_energy", "energy_steps": 2},
    "energy entmax-1.5 ×1": {"kind": "hopfield_energy", "energy_steps": 1,
                             "separation": "entmax"},
}
task = tasks.LanguageModelling(info)
tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, STEPS), weight_decay=0.01)


def tiny_gpt(attention_options):
  return build_model("gpt2", num_layers=4, width=32, num_heads=4, mlp_dim=128,
                     vocab_size=info.vocab_size, max_len=SEQ_LEN, attention=attention_options)


def train_and_evaluate(model):
  """Init, STEPS AdamW steps and the validation sums, all in one jit (one compile)."""
  def run(train_batches, eval_batches):
    params = nn.unbox(model.init(jax.random.key(0), task.dummy_input())["params"])
    state = {"step": jnp.int32(0), "params": params, "opt": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(1))}
    state, metrics = jax.lax.scan(
        lambda s, b: steps.train_step(s, b, model=model, tx=tx, task=task), state, train_batches)
    sums = jax.lax.map(lambda b: steps.eval_step(state["params"], b, model=model, task=task),
                       eval_batches)
    return state["params"], metrics["loss"], jax.tree.map(jnp.sum, sums)
  params, train_loss, sums = jax.jit(run)(train_batches, eval_batches)
  return params, np.asarray(train_loss), task.summarize(sums, info)


results = {}
for name, options in RUNS.items():
  model = tiny_gpt(options)
  params, train_loss, eval_metrics = train_and_evaluate(model)
  results[name] = dict(model=model, params=params, train_loss=train_loss, **eval_metrics)
  assert np.all(np.isfinite(train_loss)) and train_loss[-20:].mean() < train_loss[:5].mean()

print(f"{'kind':22s} {'label':16s} {'train loss':>10s} {'val loss':>9s} {'val ppl':>8s}")
for name, r in results.items():
  label = kinds.get(RUNS[name]["kind"]).label
  print(f"{name:22s} {label:16s} {r['train_loss'][-20:].mean():10.3f} {r['loss']:9.3f} "
        f"{r['perplexity']:8.2f}")
print(f"(uniform guess: loss ln {info.vocab_size} = {np.log(info.vocab_size):.3f})")

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, r in results.items():
  smooth = np.convolve(r["train_loss"], np.ones(10) / 10, mode="valid")
  ax.plot(np.arange(len(smooth)) + 10, smooth, label=name)
ax.set(xlabel="step", ylabel="train loss (10-step mean)", title="character LM, 4 layers")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. Attention maps and H across depth
#
# `apply(..., return_intermediates=True)` returns each layer's residual stream
# `[L, B, T, D]` and, for MHA, each layer's H `[L, B, heads, T, T]`, so the trained
# model's attention maps are A_n = softmax(mask(H_n)).

# %%
tokens = jnp.asarray(eval_batches["inputs"][0, :1])
mha = results["MHA α=α′=0.5"]
logits, per_layer = mha["model"].apply({"params": mha["params"]}, tokens, return_intermediates=True)
h_LxNxTxT = per_layer["hidden_state"][:, 0]
maps = attention.masked_softmax(h_LxNxTxT, attention.causal_mask(SEQ_LEN)[0])
assert jnp.allclose(maps.sum(-1), 1.0, atol=1e-5)

shown = 24
fig, axes = plt.subplots(h_LxNxTxT.shape[0], h_LxNxTxT.shape[1], figsize=(8, 8))
for n, row in enumerate(axes):
  for head, ax in enumerate(row):
    ax.imshow(maps[n, head, :shown, :shown], cmap="viridis")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"layer {n + 1}, head {head + 1}", fontsize=8)
fig.suptitle(f"trained MHA, A_n on {tokenizer.decode(tokens[0, :shown].tolist())!r}", fontsize=9)
plt.show()

# %% [markdown]
# Across depth: how much H_n still resembles layer 1's scores, how peaked the
# attention is, and how close the residual stream is to rank collapse
# (‖X − 1x̄ᵀ‖₁,∞ / ‖X‖₁,∞, 0 = every token equal) for every trained kind.

# %%
def cosine(a, b):
  return float(jnp.sum(a * b) / jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b)))


causal = np.tril(np.ones((SEQ_LEN, SEQ_LEN), bool))
h_first = h_LxNxTxT[0][:, causal]
similarity = [cosine(h_first, h_LxNxTxT[n][:, causal]) for n in range(len(h_LxNxTxT))]
depth = np.arange(1, len(h_LxNxTxT) + 1)

fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3))
ax1.plot(depth, similarity, "o-")
ax1.set(xlabel="layer n", ylabel="cos(H_n, H_1)", title="MHA: H across depth")
ax2.plot(depth, entropy(maps).mean(axis=(1, 2)), "o-")
ax2.set(xlabel="layer n", ylabel="mean entropy of A_n (nats)", title="MHA: attention peakedness")
for name, r in results.items():
  _, outputs = r["model"].apply({"params": r["params"]}, tokens, return_intermediates=True)
  ax3.plot(depth, [float(relative_rank_residual(x)[0]) for x in outputs["residual"]], "o-",
           label=name)
ax3.set(xlabel="layer n", ylabel="relative rank residual", title="residual stream, every kind")
ax3.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 6. The energy kinds on the pure functions
#
# `energy.hopfield_retrieve` with 0 steps and softmax separation is standard attention
# exactly; the other separations give sparser or sharper weights. `energy.converge`
# iterates each query to a fixed point ("context well") and types it by how many keys
# hold 90 % of the weight. The cubic energy (c₃ > 0) is unbounded below, so its
# iteration is not expected to converge (see `mha_jax/energy.py`).

# %%
q1, k1, v1 = q_L[0], k_L[0], v_L[0]
retrieved = energy.hopfield_retrieve(q1, k1, v1, steps=0, mask=mask)
print("0 steps, softmax vs dot_product_attention, max |Δ|:",
      jnp.abs(retrieved - attention.dot_product_attention(q1, k1, v1, mask=mask)).max())
assert jnp.allclose(retrieved, attention.dot_product_attention(q1, k1, v1, mask=mask), atol=1e-6)

beta = 1.0
print(f"β = {beta}: {'separation':11s} {'zero weights':>12s} {'converged':>9s} {'steps':>6s} "
      + " ".join(f"{w:>10s}" for w in energy.WELL_TYPES))
for separation in energy.SEPARATIONS:
  scores = attention.attention_scores(q1, k1, beta)
  weights = energy.separate(scores, separation=separation, mask=mask)
  zero_fraction = float(jnp.mean(weights[jnp.broadcast_to(mask, weights.shape)] == 0))
  wells = energy.converge(q1, k1, beta=beta, mask=mask, separation=separation, max_steps=30)
  counts = [int(jnp.sum(wells.well_type == i)) for i in range(len(energy.WELL_TYPES))]
  if separation != "cubic":  # a convex Lagrangian: the energy never rises along the iteration
    trace = np.asarray(wells.energy_trace)
    rises = np.diff(trace, axis=0)[np.isfinite(np.diff(trace, axis=0))]
    assert np.all(rises <= 1e-4 * (1 + np.abs(trace[0]).max()))
  print(f"{'':8s} {separation:11s} {zero_fraction:12.2f} {float(wells.converged.mean()):9.2f} "
        f"{float(wells.steps.mean()):6.1f} "
        + " ".join(f"{c:10d}" for c in counts))

# %% [markdown]
# Where to go next: `mha_jax/models/README.md` (adding an attention kind),
# `mha_jax/sweep` (vmapped sweeps over α and α′ during training), and the configs in
# `configs/` for real runs (`python -m mha_jax.main --config=configs/demo.py`).
