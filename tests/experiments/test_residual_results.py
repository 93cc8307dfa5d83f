"""Row (k): the paper's α pattern per residual form, judged from synthetic
summarised rows whose answer is known by construction."""

import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import residual_results  # noqa: E402


def row(kind, residual, alpha, depth, mean, verdict=None):
  return dict(kind=kind, residual=residual, alpha=alpha, depth=depth, mean=mean, std=0.01,
              verdict=verdict)


def rows_at(depth):
  return [row("standard", None, None, depth, 0.95),
          # convex: the paper's pattern (α = 1 at chance, 0 < 0.5, 0.5 not worse)
          row("hopfield", "convex", 0.0, depth, 0.80, "worse"),
          row("hopfield", "convex", 0.5, depth, 0.94, "no difference at this scale"),
          row("hopfield", "convex", 1.0, depth, 0.11, "worse"),
          # scaled branch: α = 0 is x + u, best of the three: part (2) fails
          row("hopfield", "scaled_branch", 0.0, depth, 0.95, "no difference at this scale"),
          row("hopfield", "scaled_branch", 0.5, depth, 0.94, "no difference at this scale"),
          row("hopfield", "scaled_branch", 1.0, depth, 0.10, "worse"),
          row("hopfield", "standard", None, depth, 0.95, "no difference at this scale")]


def test_pattern_names_the_forms_that_show_it_at_every_depth():
  note, word = residual_results.pattern(rows_at(12) + rows_at(24))
  assert word == "convex reproduces the paper's pattern (depths trained: 12, 24)"
  assert "| convex | 12 | 0.800 ± 0.010 | 0.940 ± 0.010 | 0.110 ± 0.010 | 0.950 ± 0.010 | " \
         "yes | yes | yes |" in note
  assert "| scaled_branch | 24 |" in note and "| yes | no | yes |" in note
  assert "| standard | 12 | 0.950 ± 0.010 | 0.950 ± 0.010 | 0.950 ± 0.010 |" in note


def test_a_form_failing_at_one_depth_does_not_reproduce_it():
  deep = rows_at(24)
  deep[2]["verdict"] = "worse"   # convex α = 0.5 worse than standard at depth 24
  _, word = residual_results.pattern(rows_at(12) + deep)
  assert word.startswith("no residual form reproduces")


def test_missing_settings_leave_the_row_not_yet_run():
  assert residual_results.pattern([row("standard", None, None, 12, 0.9)]) == ("", "not yet run")
  assert math.isclose(residual_results.CHANCE, 0.1)


def test_recipe_note_pairs_the_same_setting_across_recipes():
  short = [row("hopfield", "convex", 0.5, 12, 0.078), row("hopfield", "convex", 0.7, 12, 0.7)]
  for r in short:
    r.update(alpha_hidden=r["alpha"], h0="zeros")
  long = [dict(row("hopfield", "convex", 0.5, 12, 0.903), alpha_hidden=0.5, h0="zeros"),
          dict(row("hopfield", "convex", 0.0, 12, 0.861), alpha_hidden=0.5, h0="zeros")]
  note = residual_results.recipe_note(short, long)
  assert "convex, α = α′ = 0.5, depth 12: 0.078 ± 0.010 with row (a)'s recipe, " \
         "0.903 ± 0.010 with this one" in note
  assert "α = α′ = 0.0" not in note and residual_results.recipe_note(short, []) == ""


def test_the_readme_quotes_row_k_from_its_artefact():
  """Every figure in the README's row-k bullet is a mean, std or median of RESULTS.md's
  row (k) (rendered from the cells) or one seed's accuracy in the row's results.csv,
  at the digits quoted."""
  import csv
  import re
  readme = (ROOT / "README.md").read_text()
  bullet = readme[readme.index("- Which residual reading (row k"):]
  bullet = bullet[:bullet.index("\n- ")]
  results = (ROOT / "RESULTS.md").read_text()
  row_k = results[results.index("## (k)"):]
  row_k = row_k.split("\n## ")[0]
  with open(ROOT / "sweeps" / "residual_reading" / "results.csv") as f:
    seeds = [float(r["accuracy"]) for r in csv.DictReader(f)]
  reported = [float(x) for x in re.findall(r"\d+\.\d+", row_k)]
  quoted = re.findall(r"\b0\.\d+", bullet)
  assert len(quoted) >= 4
  for figure in quoted:
    digits = len(figure) - 2
    assert any(round(x, digits) == float(figure) for x in reported + seeds), figure
