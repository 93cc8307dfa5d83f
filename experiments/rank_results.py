"""Row (f), random weights: the rank-collapse run of experiments/rank_collapse.py,
read from its JSON and Markdown table (results.py places it in RESULTS.md)."""

import os

import _artefact

RANK = ("python experiments/rank_collapse.py --layers=12 --seeds=5 --float64 "
        "--alpha_hidden=0,0.5,0.9 --h0=zeros,first_scores --weight_scale=1,2 "
        "--json={o}/rank_collapse/rank.json --plot={o}/rank_collapse/rank.png")


def rank_verdict(data):
  """MHA (h0 = first_scores, the theorem's chain) vs standard attention, median over
  seeds at layers 4, 8, …, L: how often MHA's residual is higher (slower collapse)."""
  floor = data["floor"]
  rows = [r for r in data["rows"] if r["h0"] == "first_scores"]
  higher = lower = same = 0
  for row in rows:
    if row["alpha_hidden"] == 0:
      continue
    base = next(r for r in rows if r["alpha_hidden"] == 0
                and r["weight_scale"] == row["weight_scale"])
    for n in range(3, len(row["quantiles"]["50"]), 4):
      mha, std = (max(r["quantiles"]["50"][n], floor) for r in (row, base))
      higher, lower, same = (higher + (mha > std), lower + (mha < std),
                             same + (mha == std))
  counts = f"MHA higher in {higher}, lower in {lower}, equal (both at the floor) in {same} " \
           "of the (scale, α′, layer 4/8/12) medians"
  if higher and not lower:
    return f"supports — {counts}"
  if lower and not higher:
    return f"contradicts — {counts}"
  return f"mixed — {counts}"


def section(outdir):
  """(markdown, verdict) of the rank-collapse run."""
  data, command, path, pending = _artefact.read(RANK, outdir, "rank_collapse", "rank.json")
  if pending:
    return pending
  with open(os.path.splitext(path)[0] + ".md", encoding="utf-8") as f:
    table = f.read()
  verdict = rank_verdict(data)
  return (f"**Verdict:** {verdict}\n\n```\n{command}\n```\n{table}"
          f"\n![rank collapse]({outdir}/rank_collapse/rank.png)\n"), verdict
