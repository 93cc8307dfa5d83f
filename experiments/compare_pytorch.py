"""PyTorch vs mha_jax on the same batch: logits, loss and gradients, standard and MHA.

    python experiments/compare_pytorch.py --report --out report.md      # every family, N steps
    python experiments/compare_pytorch.py --family gpt2                  # small random HF GPT-2
    python experiments/compare_pytorch.py --checkpoint ~/hf/gpt2 --length 64
    python experiments/compare_pytorch.py --family vit --alpha 0.7 --h0 first_scores

With --checkpoint, the HF model is read from that local directory (never
downloaded); without it a small HF model with random weights is built and saved to
a temporary directory. Rows:
  standard  the HF PyTorch model vs mha_jax with the converted weights;
  mha       the literal PyTorch MHA reference (mha_jax/interop/torch_reference.py),
            loaded from the same HF model, vs mha_jax with attention.kind="hopfield"
            (and a "standard" row for the reference itself).
Loss: next-token cross-entropy (GPT-2, LLaMA) or cross-entropy on random labels (ViT).
Gradient diff: max |∂loss/∂θ| difference over all parameters, in mha_jax's layout.

--report runs, for GPT-2, LLaMA and ViT with standard attention (the HF class) and
MHA (the PyTorch reference), the forward, gradient, one-step and N-step checks on
one mha_jax init exported to PyTorch, through experiments/train_parity.py (its
flags: --steps, --width, --alpha, ...), and writes a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers

from mha_jax import config_util, interop, kinds
from mha_jax.interop import checkpoint_io, common, torch_models, torch_reference
from mha_jax.models import param_layout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_parity  # noqa: E402  (experiments/ is not a package)

HF_CLASSES = train_parity.HF_CLASSES


def small_hf_model(family, seed):
  """A 3-layer HF model with odd sizes and random weights (norms and biases too)."""
  torch.manual_seed(seed)
  if family == "gpt2":
    config = transformers.GPT2Config(n_layer=3, n_embd=40, n_head=5, n_inner=56, vocab_size=97,
                                     n_positions=64, bos_token_id=0, eos_token_id=0)
  elif family == "llama":
    config = transformers.LlamaConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=3,
                                      num_key_value_heads=3, intermediate_size=37, vocab_size=91,
                                      max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=0)
  else:
    config = transformers.ViTConfig(num_hidden_layers=3, hidden_size=36, num_attention_heads=3,
                                    intermediate_size=50, image_size=20, patch_size=5,
                                    num_labels=7)
  model = HF_CLASSES[family](config)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  return model


def make_batch(family, model, batch, length, seed):
  rng = np.random.RandomState(seed)
  if family == "vit":
    images = rng.randn(batch, 3, model.image_size, model.image_size).astype(np.float32)
    return images, rng.randint(0, model.num_classes, batch)
  return rng.randint(0, model.vocab_size, (batch, length)), None


def torch_loss(family, logits, x, labels):
  if family == "vit":
    return F.cross_entropy(logits, torch.as_tensor(labels))
  return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                         torch.as_tensor(x[:, 1:]).reshape(-1))


def jax_loss(family, logits, x, labels):
  if family == "vit":
    targets, logits = jnp.asarray(labels), logits
  else:
    targets, logits = jnp.asarray(x[:, 1:]), logits[:, :-1]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


def run_torch(family, module, x, labels, grads_to_flat):
  """(logits, loss, {mha_jax path: grad}) from a PyTorch module."""
  module.zero_grad()
  inp = torch.as_tensor(x)
  out = module(inp)
  logits = out.logits if hasattr(out, "logits") else out
  loss = torch_loss(family, logits, x, labels)
  loss.backward()
  grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
  return logits.detach().numpy(), loss.item(), grads_to_flat(grads)


def run_jax(family, model, params, x, labels):
  inp = jnp.asarray(x.transpose(0, 2, 3, 1) if family == "vit" else x)  # NCHW → NHWC

  def loss_fn(p):
    logits, _ = model.apply({"params": p}, inp)
    return jax_loss(family, logits, x, labels), logits

  (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  return np.asarray(logits), float(loss), common.flatten(param_layout.unstack_layer_params(grads))


def diff_row(name, ours, theirs):
  (lj, loss_j, gj), (lt, loss_t, gt) = ours, theirs
  missing = sorted(set(gj) ^ set(gt))
  if missing:
    raise ValueError(f"{name}: gradient paths differ between frameworks: {missing[:4]}")
  grad_diff = max(float(np.abs(gj[k] - gt[k]).max()) for k in gj)
  grad_scale = max(float(np.abs(gt[k]).max()) for k in gt)
  return dict(row=name, logits=lj, logits_max_abs=float(np.abs(lj - lt).max()),
              logits_mean_abs=float(np.abs(lj - lt).mean()), loss_jax=loss_j, loss_torch=loss_t,
              loss_diff=abs(loss_j - loss_t), grad_max_abs=grad_diff,
              grad_max_rel=grad_diff / max(grad_scale, 1e-30))


def hf_grads_to_flat(family, num_layers, num_heads):
  converter = interop.pretrained.CONVERTERS[family]

  def convert(grads):  # gradients transform like the weights: reuse the importer
    sd = {k: v.detach().numpy() for k, v in grads.items()}
    flat, _ = converter.TABLE.import_state_dict(sd, num_layers, num_heads, "torch grads")
    return flat
  return convert


def compare(args):
  directory = args.checkpoint
  if directory is None:
    directory = tempfile.mkdtemp(prefix=f"compare_{args.family}_")
    small_hf_model(args.family, args.seed).save_pretrained(directory)
  family, options = interop.model_options_from_pretrained(directory)
  if "architecture" in checkpoint_io.read_config(directory):
    raise SystemExit(f"{directory} is a timm checkpoint; this script runs HF models "
                     f"(timm is not a dependency)")
  hf = HF_CLASSES[family].from_pretrained(directory, attn_implementation="eager").eval()
  model = interop.model_from_pretrained(directory)
  params = interop.load_pretrained(directory, model)
  x, labels = make_batch(family, model, args.batch, args.length, args.seed)
  rows = [diff_row("standard: HF torch vs mha_jax",
                   run_jax(family, model, params, x, labels),
                   run_torch(family, hf, x, labels,
                             hf_grads_to_flat(family, options["num_layers"],
                                              options["num_heads"])))]
  reference_cls = {"gpt2": torch_models.GPT2, "llama": torch_models.Llama,
                   "vit": torch_models.ViT}[family]
  for kind in ("standard", "hopfield"):
    settings = dict(alpha=args.alpha, alpha_hidden=args.alpha_hidden, residual=args.residual,
                    h0=args.h0)
    att = dict(kind=kind, **{k: v for k, v in settings.items() if k in kinds.get(kind).reads})
    ref = reference_cls.from_hf(hf, torch_reference.Attention(**att))
    mha_model = interop.model_from_pretrained(directory, attention=att)
    flat_grads = lambda g, ref=ref: common.flatten(ref.to_jax(g))  # noqa: E731
    label = "mha" if kind == "hopfield" else "standard"
    rows.append(diff_row(f"{label}: torch reference vs mha_jax",
                         run_jax(family, mha_model, params, x, labels),
                         run_torch(family, ref, x, labels, flat_grads)))
  # How far MHA moves the logits, same weights: the parity above is not vacuous.
  effect = float(np.abs(rows[2].pop("logits") - rows[1].pop("logits")).max())
  rows[0].pop("logits")
  return dict(family=family, checkpoint=directory, options=options, args=vars(args),
              rows=rows, mha_vs_standard_logits_max_abs=effect)


REPORT_HEADER = ("family", "attention", "PyTorch side", "max abs Δlogit", "max abs Δgrad (rel.)",
                 "max abs Δθ after step 1", "abs Δloss after step 1", "N", "max abs Δloss over N (rel.)",
                 "final ‖Δθ‖/‖θ‖")


def report_table(runs):
  """Markdown: the forward, gradient, one-step and N-step checks of each run."""
  lines = ["| " + " | ".join(REPORT_HEADER) + " |", "|" + "---|" * len(REPORT_HEADER)]
  for run in runs:
    first, s, rows = run["initial"], run["summary"], run["rows"]
    # Step 1 is the first update with lr > 0 (step 0 has lr 0 after a warmup from 0).
    k = next((i for i, r in enumerate(rows) if r["lr"] > 0), len(rows) - 1)
    after = rows[min(k + 1, len(rows) - 1)]
    lines.append(
        f"| {run['family']} | {stack_config_label(run['attention'])} | {run['torch_model']} | "
        f"{first['logits_max_abs']:.1e} | {first['grad_max_abs']:.1e} "
        f"({first['grad_max_rel']:.1e}) | {rows[k]['param_max_abs']:.1e} | "
        f"{abs(after['loss_jax'] - after['loss_torch']):.1e} | {s['steps']} | {s['max_abs_dloss']:.1e} "
        f"({s['max_rel_dloss']:.1e}) | {s['param_rel_l2']:.1e} |")
  return "\n".join(lines)


def stack_config_label(attention):
  if attention["kind"] == "standard":
    return "standard"
  return (f"MHA α={attention['alpha']:g} α′={attention['alpha_hidden']:g} "
          f"h0={attention['h0']}")


def report_main(argv):
  parser = argparse.ArgumentParser(description="compare_pytorch.py --report: " +
                                   __doc__.splitlines()[0])
  parser.add_argument("--families", default="gpt2,llama,vit")
  parser.add_argument("--kinds", default="standard,hopfield")
  parser.add_argument("--out", help="write the Markdown table here (with .json and .png "
                      "of the per-step losses beside it)")
  train_parity.add_model_flags(parser)
  parser.set_defaults(steps=50, batch=4, length=16)
  args = parser.parse_args(argv)
  transformers.logging.set_verbosity_error()
  runs = train_parity.run_all(
      args, train_parity.parse_list(args.families, train_parity.FAMILIES, "--families"),
      train_parity.parse_list(args.kinds, train_parity.KINDS, "--kinds"))
  table = report_table(runs)
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
      json.dump(dict(args=vars(args), runs=runs), f, indent=1)
    train_parity.plot(runs, os.path.splitext(args.out)[0] + ".png")
  return runs


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  if "--report" in argv:
    return report_main([a for a in argv if a != "--report"])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--family", choices=sorted(HF_CLASSES), default="gpt2",
                      help="model built with random weights when no --checkpoint is given")
  parser.add_argument("--checkpoint", help="local HF directory (config.json + weights)")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--length", type=int, default=13, help="tokens per sequence (LMs)")
  parser.add_argument("--alpha", type=float, default=0.5)
  parser.add_argument("--alpha_hidden", type=float, default=0.5)
  parser.add_argument("--residual", default=config_util.DEFAULT_RESIDUAL,
                      choices=("convex", "scaled_branch", "standard"))
  parser.add_argument("--h0", default="zeros", choices=("zeros", "first_scores"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the report here")
  args = parser.parse_args(argv)
  report = compare(args)
  print(f"{report['family']} from {report['checkpoint']} (fp32, batch {args.batch}; "
        f"MHA α={args.alpha} α′={args.alpha_hidden} residual={args.residual} h0={args.h0})")
  header = ("row", "logits max|Δ|", "logits mean|Δ|", "loss |Δ|", "grad max|Δ|", "grad rel")
  print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for r in report["rows"]:
    print(f"| {r['row']} | {r['logits_max_abs']:.2e} | {r['logits_mean_abs']:.2e} | "
          f"{r['loss_diff']:.2e} | {r['grad_max_abs']:.2e} | {r['grad_max_rel']:.2e} |")
  print(f"MHA vs standard attention, same weights: logits max|Δ| = "
        f"{report['mha_vs_standard_logits_max_abs']:.2e}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
