"""experiments/train_parity.py: a tiny GPT-2 and ViT, standard (HF classes) and MHA
(the exported custom-code HF model), trained 50 steps in both frameworks from one init; the
per-step losses agree to 1e-4 relative and the parameters stay together. Also the
PyTorch optimizer pieces against optax directly."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from mha_jax.interop import torch_training

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "experiments"))
import train_parity  # noqa: E402

STEPS = 50


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "vit"])
@pytest.mark.parametrize("kind", ["standard", "hopfield"])
def test_fifty_steps_agree(family, kind):
  optim = train_parity.parity_optim(STEPS, learning_rate=3e-3, warmup_steps=5,
                                    weight_decay=0.1, grad_clip=1.0)
  settings = (0.6, 0.3) if kind == "hopfield" else ()   # standard reads no α, α′
  attention = train_parity.config_util.attention_config(kind, *settings)
  run = train_parity.run_parity(family, attention, steps_=STEPS, batch_size=4, seq_len=16,
                                num_layers=2, width=32, num_heads=4, optim=optim)
  s = run["summary"]
  assert run["torch_model"] == "hf"   # HF class; the custom-code export for MHA
  assert s["max_rel_dloss"] <= 1e-4, s
  assert s["param_rel_l2"] <= 1e-3, s
  # Not vacuous: the parameters travelled far further than the frameworks drifted
  # apart, the LM's loss fell (ViT's single 4-image batches are too noisy to show it
  # in 50 steps), clipping and the warmup both acted.
  assert s["param_travelled_rel_l2"] > 100 * s["param_rel_l2"], s
  if family == "gpt2":
    assert s["loss_last"] < s["loss_first"] - 0.5, s
  assert s["clipped_steps"] > 0, s
  assert run["rows"][0]["lr"] == 0.0 and max(r["lr"] for r in run["rows"]) == pytest.approx(3e-3)


def test_matched_adamw_equals_optax():
  """Three steps of MatchedAdamW vs make_optimizer's chain on a toy tree with a
  decayed kernel and an undecayed bias, gradients large enough to clip."""
  rng = np.random.default_rng(0)
  kernel, bias = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
  module = torch.nn.Linear(3, 4)
  with torch.no_grad():
    module.weight.copy_(torch.as_tensor(kernel.T))
    module.bias.copy_(torch.as_tensor(bias))
  to_flat = lambda t: {"dense/kernel": t["weight"].detach().numpy().T,  # noqa: E731
                       "dense/bias": t["bias"].detach().numpy()}
  optim = train_parity.parity_optim(10, learning_rate=0.1, warmup_steps=2, weight_decay=0.5,
                                    grad_clip=0.5)
  tx, schedule = train_parity.optim_lib.make_optimizer(optim, 10)
  params = {"dense": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
  opt_state = tx.init(params)
  torch_opt = torch_training.MatchedAdamW(module, to_flat, optim)
  assert [len(g["params"]) for g in torch_opt.optimizer.param_groups] == [1, 1]
  for step in range(3):
    x = rng.normal(size=(5, 3)).astype(np.float32) * 3
    loss_fn = lambda p, x=x: jnp.sum((x @ p["dense"]["kernel"] + p["dense"]["bias"]) ** 2)  # noqa: E731
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    (module(torch.as_tensor(x)) ** 2).sum().backward()
    norm = torch_opt.step(float(schedule(step)))
    assert norm > optim.grad_clip  # clipping acted
  ours = to_flat(dict(module.named_parameters()))
  np.testing.assert_allclose(ours["dense/kernel"], params["dense"]["kernel"], atol=1e-6)
  np.testing.assert_allclose(ours["dense/bias"], params["dense"]["bias"], atol=1e-6)
  assert np.abs(ours["dense/kernel"] - kernel).max() > 0.05  # the steps moved it


def test_decay_groups_follow_mha_jax_names():
  """GPT-2 reference: Linear weights (kernels) decayed; embeddings, norms, biases not."""
  model = train_parity.torch_models.GPT2(2, 8, 2, 16, vocab_size=11, max_len=6)
  to_flat = lambda t: train_parity.common.flatten(model.to_jax(t))  # noqa: E731
  decayed, plain = torch_training.decay_groups(model, to_flat, {"kernel"}, 0.1)
  names = {id(p): n for n, p in model.named_parameters()}
  decayed_names = sorted(names[id(p)] for p in decayed["params"])
  assert decayed_names == sorted(n for n, p in model.named_parameters()
                                 if n.startswith("stack.") and n.endswith("weight") and p.ndim == 2)
  assert "wte.weight" in {names[id(p)] for p in plain["params"]}
  assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0


@pytest.mark.slow
def test_compare_pytorch_report(tmp_path):
  """--report: one row per run with the run's own figures; .json and .png beside it."""
  import compare_pytorch
  out = tmp_path / "report.md"
  runs = compare_pytorch.main(["--report", "--families", "llama", "--kinds", "hopfield",
                               "--steps", "3", "--out", str(out)])
  (run,) = runs
  row = out.read_text().splitlines()[2].split(" | ")
  assert row[0] == "| llama" and row[1].startswith("MHA α=0.6 α′=0.3") and row[2] == "hf"
  assert float(row[3]) == pytest.approx(run["initial"]["logits_max_abs"], rel=0.06, abs=1e-12)
  assert run["initial"]["logits_max_abs"] <= 1e-5 and run["initial"]["grad_max_rel"] <= 1e-4
  assert float(row[8].split()[0]) == pytest.approx(run["summary"]["max_abs_dloss"], rel=0.06,
                                                   abs=1e-12)
  assert (tmp_path / "report.json").exists() and (tmp_path / "report.png").stat().st_size > 5000
