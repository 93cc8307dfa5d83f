"""Training-curve parity: one model trained in mha_jax and in PyTorch, step by step.

    python experiments/train_parity.py                                # GPT-2 and ViT, standard and MHA
    python experiments/train_parity.py --families gpt2,llama,vit --steps 300 --width 64
    python experiments/train_parity.py --kinds hopfield --alpha 0.6 --alpha_hidden 0.3 --h0 first_scores

For each (family, attention) pair the model is initialised once in mha_jax, exported
with `interop.export_pretrained`, and loaded into PyTorch: by default
(`--torch_model hf`) the export itself through transformers' Auto classes with
trust_remote_code=True — the stock HF class for standard attention, the exported
custom-code model for MHA — or (`--torch_model reference`) the literal PyTorch MHA
of `interop.torch_models` built from the same weights. Both then take N AdamW steps on the same batches of our own
offline data (Shakespeare characters for the LMs, sklearn digits for ViT) in fp32
with dropout off: the JAX side is the training loop's own `steps.train_step` with
`optim.make_optimizer`, the PyTorch side `interop.torch_training.MatchedAdamW`.
Written to --out: parity.json (per-step loss, grad norm, lr and max |Δθ| for both,
and the summary: max and final |Δloss|, relative too, and the final parameter
distance) and curves.png.

Where the frameworks differ by default, and what this script does about it:

  AdamW epsilon   Same placement in both: m̂ / (√v̂ + eps), eps outside the square root
                  and after bias correction (optax `scale_by_adam` with eps_root=0;
                  torch.optim.AdamW). TF1 / Keras-1 Adam instead adds epŝ before bias
                  correction; neither does here. Both take optim.eps (1e-8).
  bias correction Both divide by 1 − βᵗ with t counted from 1. Nothing to align.
  weight decay    Both decoupled, θ ← θ − lr·(u + wd·θ), but optax's default wd is
                  1e-4 and torch's 1e-2; both get optim.weight_decay. optax masks by
                  leaf name (kernels only); torch decays whole parameter groups, so
                  `decay_groups` builds a decayed and a non-decayed group from the
                  mha_jax names each torch tensor maps to (embeddings, position
                  tables, class token, norms and biases: no decay).
  clipping        optax scales by max/‖g‖ only when ‖g‖ ≥ max; torch's
                  clip_grad_norm_ always scales by min(1, max/(‖g‖ + 1e-6)). The
                  PyTorch side uses optax's rule (`clip_by_global_norm_`).
  LR schedule     optax evaluates the schedule at the pre-increment step count, so
                  step 0 runs at lr = schedule(0) = 0 after a warmup from 0. The
                  PyTorch side sets each group's lr to that same optax value.
  GELU flavour    flax `nn.gelu` is the tanh approximation by default, torch
                  `F.gelu` is exact. mha_jax names it (mlp="gelu_tanh" for GPT-2,
                  "gelu" for ViT) and the export writes HF's hidden_act
                  ("gelu_new"/"gelu_pytorch_tanh" or "gelu").
  LayerNorm eps   flax 1e-6, torch 1e-5, HF GPT-2 1e-5, HF ViT 1e-12. mha_jax's
                  stack carries norm_eps and the export writes it to config.json.
  LayerNorm maths flax computes var = E[x²] − E[x]² (use_fast_variance), torch
                  two-pass: not aligned, a ~1e-7 relative difference per call.
  init            flax Dense lecun-normal, torch Linear kaiming-uniform, HF its
                  own; mha_jax uses normal(0.02) with 1/√(2L) on output projections
                  (GPT-2), xavier-uniform and a zero head (ViT). Aligned by
                  initialising once in mha_jax and exporting the weights.
  dropout         flax: `deterministic`; torch: module.train(). Dropout 0 and the
                  torch modules stay in eval() mode while their gradients train.
  loss            mha_jax: Σ(CE · mask) / max(Σ mask, 1); the PyTorch side weights
                  by the same mask (F.cross_entropy's mean would count padding).
  layout          images NHWC in mha_jax, NCHW in torch; Linear weights [out, in]
                  vs kernels [in, out], heads split in mha_jax: the interop
                  converters map parameters and gradients.
  matmul          fp32 on CPU in both. On GPU set `jax_default_matmul_precision`
                  to "highest" and torch.backends.cuda.matmul.allow_tf32 = False.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
import transformers

from mha_jax import config_util, data, interop, kinds
from mha_jax.interop import common, torch_models, torch_reference, torch_training
from mha_jax.models import build_model, param_layout
from mha_jax.train import steps, tasks
from mha_jax.train import optim as optim_lib

HF_CLASSES = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
              "vit": transformers.ViTForImageClassification}
AUTO_CLASSES = {"gpt2": transformers.AutoModelForCausalLM,
                "llama": transformers.AutoModelForCausalLM,
                "vit": transformers.AutoModelForImageClassification}
REFERENCE_CLASSES = {"gpt2": torch_models.GPT2, "llama": torch_models.Llama,
                     "vit": torch_models.ViT}
DATASETS = {"gpt2": "shakespeare_char", "llama": "shakespeare_char", "vit": "digits"}
FAMILIES, KINDS = tuple(HF_CLASSES), kinds.names(hf_export=True)
# The fields of AttentionConfig that the PyTorch reference implements.
REFERENCE_FIELDS = tuple(f.name for f in dataclasses.fields(torch_reference.Attention))


@dataclasses.dataclass
class Pair:
  """One model in both frameworks, with the same weights at construction."""
  family: str
  model: nn.Module            # mha_jax
  params: dict                # mha_jax, unboxed
  module: torch.nn.Module     # PyTorch
  torch_name: str             # "hf" or "reference"
  task: object                # mha_jax.train.tasks: inputs and loss of the data's kind

  def to_flat(self, named_tensors):
    """{torch name: tensor} (parameters or gradients) → {mha_jax loop-layout path: array}."""
    if self.torch_name == "reference":
      return common.flatten(self.module.to_jax(named_tensors))
    cfg = self.model.stack
    state_dict = {k: v.detach().numpy() for k, v in named_tensors.items()}
    flat, _ = interop.pretrained.table_for(self.family).import_state_dict(
        state_dict, cfg.num_layers, cfg.num_heads, "torch tensors")
    return flat

  @property
  def modality(self):
    return self.task.info.modality

  def torch_logits(self, batch):
    if self.modality == "image":
      images = torch.as_tensor(np.asarray(batch["image"]).transpose(0, 3, 1, 2))  # NHWC → NCHW
      return self.module(pixel_values=images).logits if self.torch_name == "hf" \
          else self.module(images)
    tokens = torch.as_tensor(np.asarray(batch["inputs"]), dtype=torch.long)
    return self.module(tokens).logits if self.torch_name == "hf" else self.module(tokens)

  def torch_loss(self, batch):
    """(loss, logits): mha_jax's Σ(CE · mask) / max(Σ mask, 1)."""
    logits = self.torch_logits(batch)
    mask = torch.as_tensor(np.asarray(batch["mask"]))
    labels = torch.as_tensor(np.asarray(batch["label" if self.modality == "image" else "targets"]),
                             dtype=torch.long)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                         reduction="none").reshape(mask.shape)
    return (ce * mask).sum() / mask.sum().clamp(min=1.0), logits

  def jax_flat_params(self, params):
    # device_get first: slicing the scanned layout in NumPy compiles nothing.
    return common.flatten(param_layout.unstack_layer_params(jax.device_get(params)))

  def torch_flat_params(self):
    return self.to_flat(dict(self.module.named_parameters()))


def model_options(family, info, *, num_layers, width, num_heads, seq_len):
  """Tiny build_model options for `family` on the dataset described by `info`."""
  sizes = dict(num_layers=num_layers, width=width, num_heads=num_heads, mlp_dim=2 * width,
               dropout=0.0, attention_dropout=0.0, dtype="float32", param_dtype="float32")
  if family == "vit":
    image_size = info.image_shape[0]
    return dict(sizes, image_size=image_size, patch_size=max(image_size // 4, 1),
                num_classes=info.num_classes)
  return dict(sizes, vocab_size=info.vocab_size, max_len=seq_len)


def make_batches(family, *, batch_size, seq_len, steps_, seed):
  """`steps_` training batches of our offline data, and the split's DatasetInfo."""
  cfg = data.default_data_config(DATASETS[family])
  if "seq_len" in cfg:   # text
    cfg.seq_len = seq_len
  cfg.update(read_threads=1, prefetch_batches=1)
  source = data.build_input(cfg, split=cfg.train_split, global_batch_size=batch_size,
                            train=True, seed=seed, process_index=0, process_count=1)
  return [next(source) for _ in range(steps_)], source.info


def torch_side(family, directory, attention, torch_model):
  """The PyTorch module for the export in `directory`: "hf" (transformers, custom
  code for MHA) or "reference" (interop.torch_models)."""
  hf = AUTO_CLASSES[family].from_pretrained(directory, attn_implementation="eager",
                                            trust_remote_code=True)
  if torch_model == "hf":
    return hf.eval()
  unsupported = {k: v for k, v in attention.items()
                 if k not in REFERENCE_FIELDS and v != config_util.attention_config("standard")[k]}
  supported = kinds.names(torch_reference=True)
  if attention["kind"] not in supported or unsupported:
    raise ValueError(f"the PyTorch reference implements kinds {supported} with "
                     f"{REFERENCE_FIELDS}; got kind={attention['kind']!r} and {unsupported}")
  reference = torch_reference.Attention(**{k: attention[k] for k in REFERENCE_FIELDS})
  return REFERENCE_CLASSES[family].from_hf(hf, reference).eval()


def build_pair(family, attention, options, *, info, seed=0, torch_model="hf", workdir=None):
  """Initialise in mha_jax, export, load into PyTorch (see the module docstring)."""
  model = build_model(family, **options, attention=attention)
  task = tasks.make_task({}, info)
  params = nn.unbox(model.init(jax.random.key(seed), task.dummy_input())["params"])
  directory = workdir or tempfile.mkdtemp(prefix=f"parity_{family}_")
  interop.export_pretrained(params, model, directory)
  module = torch_side(family, directory, attention, torch_model)
  return Pair(family, model, params, module, torch_model, task)


def flat_distance(ours, theirs):
  """(max |Δ|, ‖Δ‖ / ‖ours‖) over every parameter; the two trees must have one layout."""
  if set(ours) != set(theirs):
    raise ValueError(f"parameter paths differ: {sorted(set(ours) ^ set(theirs))[:4]}")
  diff = {k: np.asarray(ours[k], np.float64) - np.asarray(theirs[k], np.float64) for k in ours}
  max_abs = max(float(np.abs(d).max()) for d in diff.values())
  norm = lambda tree: np.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64))))  # noqa: E731
                                  for v in tree.values()))
  return max_abs, norm(diff) / max(norm(ours), 1e-30)


def initial_diffs(pair, batch):
  """Logits and gradients of the loss at the shared init, both frameworks, one batch."""
  x, kwargs = pair.task.model_inputs(batch)

  def loss_fn(params):
    logits, _ = pair.model.apply({"params": params}, x, **kwargs)
    loss, _, weight = pair.task.weighted_losses(logits, batch, train=False)
    return loss.sum() / jnp.maximum(weight.sum(), 1.0), logits

  (loss_jax, logits_jax), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(pair.params)
  loss_torch, logits_torch = pair.torch_loss(batch)
  loss_torch.backward()
  torch_grads = pair.to_flat({n: p.grad for n, p in pair.module.named_parameters()})
  pair.module.zero_grad()
  grad_max_abs, _ = flat_distance(pair.jax_flat_params(grads), torch_grads)
  grad_scale = max(float(np.abs(g).max()) for g in torch_grads.values())
  return dict(loss_abs=abs(float(loss_jax) - loss_torch.item()),
              logits_max_abs=float(np.abs(np.asarray(logits_jax)
                                          - logits_torch.detach().numpy()).max()),
              grad_max_abs=grad_max_abs, grad_max_rel=grad_max_abs / max(grad_scale, 1e-30))


def train_both(pair, batches, optim):
  """len(batches) steps in both frameworks, in lock step. Returns the per-step rows
  and both final parameter trees (flat, mha_jax layout)."""
  tx, schedule = optim_lib.make_optimizer(optim, len(batches))
  # One compile each for the optimizer state and all learning rates (eager ops compile per op).
  learning_rates = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(len(batches))))
  state = dict(step=jnp.int32(0), params=pair.params, opt=jax.jit(tx.init)(pair.params),
               rng=jax.random.key_data(jax.random.key(0)))
  jax_step = jax.jit(functools.partial(steps.train_step, model=pair.model, tx=tx, task=pair.task))
  torch_optimizer = torch_training.MatchedAdamW(pair.module, pair.to_flat, optim)
  rows = []
  for i, batch in enumerate(batches):
    state, metrics = jax_step(state, batch)
    loss, _ = pair.torch_loss(batch)
    loss.backward()
    lr = float(learning_rates[i])
    torch_norm = torch_optimizer.step(lr)
    param_max_abs, _ = flat_distance(pair.jax_flat_params(state["params"]),
                                     pair.torch_flat_params())
    rows.append(dict(step=i, lr=lr, loss_jax=float(metrics["loss"]), loss_torch=loss.item(),
                     grad_norm_jax=float(metrics["grad_norm"]), grad_norm_torch=torch_norm,
                     param_max_abs=param_max_abs))
  return rows, pair.jax_flat_params(state["params"]), pair.torch_flat_params()


def summarize(rows, jax_params, torch_params, grad_clip, initial_params):
  loss_j = np.array([r["loss_jax"] for r in rows])
  delta = np.abs(loss_j - np.array([r["loss_torch"] for r in rows]))
  rel = delta / np.abs(loss_j)
  param_max_abs, param_rel = flat_distance(jax_params, torch_params)
  _, travelled_rel = flat_distance(jax_params, initial_params)
  return dict(steps=len(rows), loss_first=float(loss_j[0]), loss_last=float(loss_j[-1]),
              max_abs_dloss=float(delta.max()), max_rel_dloss=float(rel.max()),
              final_abs_dloss=float(delta[-1]), final_rel_dloss=float(rel[-1]),
              param_max_abs=param_max_abs, param_rel_l2=param_rel,
              param_travelled_rel_l2=travelled_rel,  # ‖θ_N − θ_0‖ / ‖θ_N‖, mha_jax
              clipped_steps=int(sum(r["grad_norm_jax"] >= grad_clip for r in rows))
              if grad_clip else 0)


def parity_optim(steps_, *, learning_rate, warmup_steps, weight_decay, grad_clip):
  """The loop's default optimizer fields, with the given overrides."""
  optim = config_util.base_config().optim
  optim.update(learning_rate=learning_rate, warmup_steps=min(warmup_steps, steps_),
               weight_decay=weight_decay, grad_clip=grad_clip, schedule="cosine")
  return optim


def run_parity(family, attention, *, steps_, batch_size, seq_len, num_layers, width,
               num_heads, optim, seed=0, torch_model="hf"):
  """One parity run: {"family", "attention", "torch_model", "rows", "summary"}."""
  batches, info = make_batches(family, batch_size=batch_size, seq_len=seq_len, steps_=steps_,
                               seed=seed)
  options = model_options(family, info, num_layers=num_layers, width=width,
                          num_heads=num_heads, seq_len=seq_len)
  with tempfile.TemporaryDirectory(prefix=f"parity_{family}_") as directory:
    pair = build_pair(family, attention, options, info=info, seed=seed,
                      torch_model=torch_model, workdir=directory)
  initial = initial_diffs(pair, batches[0])
  rows, jax_params, torch_params = train_both(pair, batches, optim)
  return dict(family=family, attention=dict(attention), torch_model=pair.torch_name,
              model=options, initial=initial, rows=rows,
              summary=summarize(rows, jax_params, torch_params, optim.grad_clip,
                                pair.jax_flat_params(pair.params)))


def plot(runs, path):
  """Both loss curves per run (top) and the relative |Δloss| (bottom, log scale)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, len(runs), figsize=(2.6 * len(runs), 3.6), squeeze=False,
                           sharex=True, gridspec_kw=dict(height_ratios=(2, 1)))
  for (top, bottom), run in zip(axes.T, runs):
    steps_ = [r["step"] for r in run["rows"]]
    loss_j = np.array([r["loss_jax"] for r in run["rows"]])
    loss_t = np.array([r["loss_torch"] for r in run["rows"]])
    top.plot(steps_, loss_j, lw=2.5, alpha=0.5, label="mha_jax")
    top.plot(steps_, loss_t, "k--", lw=0.8, label="PyTorch")
    top.set_title(f"{run['family']} {run['attention']['kind']}", fontsize=8)
    bottom.semilogy(steps_, np.maximum(np.abs(loss_j - loss_t) / np.abs(loss_j), 1e-10), lw=0.8)
    bottom.set_xlabel("step", fontsize=7)
    for ax in (top, bottom):
      ax.tick_params(labelsize=6)
  axes[0, 0].set_ylabel("train loss", fontsize=7)
  axes[1, 0].set_ylabel("|Δloss| / loss", fontsize=7)
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


def attention_from_args(kind, args):
  """The attention settings of `kind` from the command line: the fields it reads."""
  given = dict(alpha=args.alpha, alpha_hidden=args.alpha_hidden, residual=args.residual,
               h0=args.h0, reset_every=args.reset_every)
  reads = kinds.get(kind).reads
  return config_util.attention_config(kind, **{k: v for k, v in given.items() if k in reads})


def markdown_summary(runs):
  lines = ["| family | attention | PyTorch side | steps | loss first → last | max abs Δloss "
           "(rel.) | final abs Δloss (rel.) | final max abs Δθ | ‖Δθ‖/‖θ‖ |",
           "|" + "---|" * 9]
  for run in runs:
    s = run["summary"]
    lines.append(f"| {run['family']} | {run['attention']['kind']} | {run['torch_model']} | "
                 f"{s['steps']} | {s['loss_first']:.3f} → {s['loss_last']:.3f} | "
                 f"{s['max_abs_dloss']:.1e} ({s['max_rel_dloss']:.1e}) | "
                 f"{s['final_abs_dloss']:.1e} ({s['final_rel_dloss']:.1e}) | "
                 f"{s['param_max_abs']:.1e} | {s['param_rel_l2']:.1e} |")
  return "\n".join(lines)


def add_model_flags(parser):
  """Flags shared with compare_pytorch.py --report."""
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=32, help="tokens per sequence (LMs)")
  parser.add_argument("--num_layers", type=int, default=2)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--num_heads", type=int, default=4)
  parser.add_argument("--learning_rate", type=float, default=3e-3)
  parser.add_argument("--warmup_steps", type=int, default=10)
  parser.add_argument("--weight_decay", type=float, default=0.1)
  parser.add_argument("--grad_clip", type=float, default=1.0)
  parser.add_argument("--alpha", type=float, default=0.6)
  parser.add_argument("--alpha_hidden", type=float, default=0.3)
  parser.add_argument("--residual", default=config_util.DEFAULT_RESIDUAL,
                      choices=("convex", "scaled_branch", "standard"))
  parser.add_argument("--h0", default="zeros", choices=("zeros", "first_scores"))
  parser.add_argument("--reset_every", type=int, default=0, help="restart H every N layers")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch_model", default="hf", choices=("hf", "reference"),
                      help="hf: the export in transformers (custom code for MHA); "
                           "reference: interop.torch_models")


def run_all(args, families, kinds):
  optim = parity_optim(args.steps, learning_rate=args.learning_rate,
                       warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
                       grad_clip=args.grad_clip)
  return [run_parity(family, attention_from_args(kind, args), steps_=args.steps,
                     batch_size=args.batch, seq_len=args.length, num_layers=args.num_layers,
                     width=args.width, num_heads=args.num_heads, optim=optim, seed=args.seed,
                     torch_model=args.torch_model)
          for family in families for kind in kinds]


def parse_list(text, allowed, flag):
  items = [item for item in text.split(",") if item]
  for item in items:
    if item not in allowed:
      raise SystemExit(f"{flag}: {item!r} is not allowed; choose from {allowed}")
  return items


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--families", default="gpt2,vit", help=f"comma list of {FAMILIES}")
  parser.add_argument("--kinds", default="standard,hopfield", help=f"comma list of {KINDS}")
  parser.add_argument("--out", default="runs/train_parity")
  add_model_flags(parser)
  args = parser.parse_args(argv)
  transformers.logging.set_verbosity_error()  # the GPT-2 export's bos/eos id warnings
  runs = run_all(args, parse_list(args.families, FAMILIES, "--families"),
                 parse_list(args.kinds, KINDS, "--kinds"))
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "parity.json").write_text(json.dumps(dict(args=vars(args), runs=runs), indent=1))
  plot(runs, out / "curves.png")
  print(markdown_summary(runs))
  print(f"wrote {out / 'parity.json'} and {out / 'curves.png'}")
  return runs


if __name__ == "__main__":
  main()
