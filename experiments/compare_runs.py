"""Compare training runs by their metrics.jsonl, against a baseline run.

Prints one row per run: its attention (kind, α, α′, residual form), steps
trained, the final eval loss and accuracy (and perplexity, perplexity_original
for text), the best eval value of the main metric, and the signed difference to
the baseline in that metric and in loss, with a word saying whether the run is
better or worse. Runs are sorted best first by the final main metric (accuracy
for images, perplexity for text).

    python experiments/compare_runs.py --workdirs=runs/demo_std,runs/demo_mha \\
        --baseline=runs/demo_std --plot=curves.png

The baseline defaults to the first run with standard attention. A worse run says
"worse": a negative result reads as plainly as a positive one.
"""

import json
import os

from absl import app, flags
import ml_collections

from mha_jax import script_cli
from mha_jax.models import stack_config

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", [], "training workdirs (metrics.jsonl + config.json)")
flags.DEFINE_string("baseline", None, "workdir to compare against; default: the first "
                    "standard-attention run")
flags.DEFINE_string("plot", None, "save eval curves (loss and the main metric) here")


def attention_label(model_config):
  """The model's own description, with its defaults filled in."""
  attention = stack_config.AttentionConfig(**dict(model_config.get("attention", {})))
  return stack_config.describe_attention(attention, model_config.get("skip_connections", True))


def load_run(workdir):
  """{name, workdir, dataset, kind, label, steps, evals}: eval rows by step; where a resumed
  run evaluated a step again, its later row."""
  script_cli.check_workdir(workdir, ("config.json", "metrics.jsonl"))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  by_step = {row["step"]: row for row in rows if row["split"] == "eval"}
  return dict(name=os.path.basename(os.path.normpath(workdir)), workdir=workdir,
              dataset=config.get("data", {}).get("name", "?"),
              kind=config.model.get("attention", {}).get("kind", "standard"),
              label=attention_label(config.model),
              steps=max((row["step"] for row in rows), default=0),
              evals=[by_step[step] for step in sorted(by_step)])


def main_metric(run):
  """(name, higher is better): perplexity for text runs, accuracy otherwise."""
  if run["evals"] and "perplexity" in run["evals"][-1]:
    return "perplexity", False
  return "accuracy", True


def choose_baseline(runs, baseline_dir):
  if baseline_dir:
    name = os.path.basename(os.path.normpath(baseline_dir))
    matches = [run for run in runs if run["name"] == name]
    if not matches:
      raise app.UsageError(f"--baseline={baseline_dir} is not one of --workdirs")
    return matches[0]
  return next((run for run in runs if run["kind"] == "standard"), runs[0])


def summarize(run, baseline):
  """The numbers of one table row; None where a run has no such value."""
  metric, higher_better = main_metric(baseline)
  final = run["evals"][-1] if run["evals"] else {}
  values = [row[metric] for row in run["evals"] if metric in row]
  best = (max if higher_better else min)(values) if values else None
  base_final = baseline["evals"][-1] if baseline["evals"] else {}
  delta = delta_loss = verdict = None
  if run["dataset"] != baseline["dataset"]:   # a difference across tasks means nothing
    verdict = f"not comparable: data {run['dataset']}"
  elif metric in final and metric in base_final:
    delta = final[metric] - base_final[metric]
    delta_loss = final.get("loss", float("nan")) - base_final.get("loss", float("nan"))
    verdict = ("baseline" if run is baseline else "equal" if delta == 0
               else "better" if (delta > 0) == higher_better else "worse")
  return dict(metric=metric, higher_better=higher_better, final=final, best=best,
              delta=delta, delta_loss=delta_loss, verdict=verdict)


def fmt(value, spec, scale=1, missing="—"):
  return missing if value is None else format(scale * value, spec)


def row_text(run, s, name_w, label_w):
  final, text = s["final"], s["metric"] == "perplexity"
  scale = 1 if text else 100   # accuracy in percent
  line = (f"{run['name']:<{name_w}}  {run['label']:<{label_w}}  {run['steps']:>6} "
          f"{fmt(final.get('loss'), '9.4f', missing='no eval'):>9} "
          f"{fmt(final.get('accuracy'), '7.2f', 100):>7}%")
  if text:
    line += (f" {fmt(final.get('perplexity'), '9.3f'):>9}"
             f" {fmt(final.get('perplexity_original'), '9.3f'):>9}")
  return line + (f" {fmt(s['best'], '10.3f', scale):>10}"
                 f" {fmt(s['delta'], '+9.3f', scale):>9}"
                 f" {fmt(s['delta_loss'], '+8.4f'):>8}  {s['verdict'] or '—'}")


def table(runs, baseline):
  metric, higher_better = main_metric(baseline)
  summaries = [(run, summarize(run, baseline)) for run in runs]
  # Best first; runs without the metric go last.
  summaries.sort(key=lambda rs: (metric not in rs[1]["final"],
                                 -rs[1]["final"].get(metric, 0) if higher_better
                                 else rs[1]["final"].get(metric, 0)))
  name_w = max(len("run"), *(len(run["name"]) for run in runs))
  label_w = max(len(run["label"]) for run in runs)
  short = "ppl" if metric == "perplexity" else "acc %"
  head = (f"{'run':<{name_w}}  {'attention':<{label_w}}  {'steps':>6} {'eval loss':>9} "
          f"{'accuracy':>8}" + (f" {'ppl':>9} {'ppl orig':>9}" if short == "ppl" else "")
          + f" {'best ' + short:>10} {'Δ ' + short:>9} {'Δ loss':>8}  vs baseline")
  lines = [f"baseline: {baseline['name']} ({baseline['label']}); Δ = run − baseline, "
           f"{metric} {'higher' if higher_better else 'lower'} is better", head]
  return "\n".join(lines + [row_text(run, s, name_w, label_w) for run, s in summaries])


def plot(runs, baseline, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metric, _ = main_metric(baseline)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for run in runs:
    label = f"{run['name']}: {run['label']}" + (" (baseline)" if run is baseline else "")
    for ax, key in zip(axes, ("loss", metric)):
      points = [(row["step"], row[key]) for row in run["evals"] if key in row]
      if points:
        ax.plot(*zip(*points), "-o", markersize=3, label=label,
                linewidth=2.5 if run is baseline else 1.5)
  for ax, key in zip(axes, ("loss", metric)):
    ax.set(xlabel="step", ylabel=f"eval {key}")
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdirs:
    raise app.UsageError("give --workdirs=runs/a,runs/b")
  runs = [load_run(workdir) for workdir in FLAGS.workdirs]
  baseline = choose_baseline(runs, FLAGS.baseline)
  print(table(runs, baseline))
  if FLAGS.plot:
    plot(runs, baseline, FLAGS.plot)
    print("saved", FLAGS.plot)


if __name__ == "__main__":
  script_cli.run(main)
