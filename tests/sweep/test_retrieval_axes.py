"""The Hopfield-retrieval sweep axes (energy_steps, separation, separation_param):
values equal to the AttentionConfig default collapse so existing cell ids (and the
committed cell store) are unchanged, and the `energy_heads` presets list the
settings issue 20 §5 (j) asks for."""

import itertools
import pathlib

from mha_jax.models import stack_config
from mha_jax.sweep import grid
from mha_jax import config_util

ROOT = pathlib.Path(__file__).resolve().parents[2]
GRID = dict(kind=("standard", "hopfield"), alpha=(0.5,), alpha_hidden=(-1.0,),
            residual=("convex",), h0=("zeros",), reset_every=(0,), depth=(2,), seed=(0, 1))


def test_defaults_collapse_so_old_cell_ids_do_not_change():
  old = [grid.cell_id(c) for c in grid.cells(GRID)]
  defaults = dict(GRID, energy_steps=(stack_config.AttentionConfig.energy_steps,),
                  separation=(stack_config.AttentionConfig.separation,),
                  separation_param=(stack_config.AttentionConfig.separation_param,))
  assert [grid.cell_id(c) for c in grid.cells(defaults)] == old
  assert all(c[a] is None for c in grid.cells(defaults) for a in grid.RETRIEVAL_DEFAULTS)


def test_committed_cells_of_an_old_preset_are_still_found():
  sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset=vit_depth,seeds=3")
  store = grid.ResultStore(str(ROOT / "sweeps" / "cells"), grid.sweep_setup(sweep))
  cells = grid.cells(sweep.grid)
  assert len(cells) == 42 and all(store.done(c) for c in cells)


def test_separation_param_collapses_to_the_separations_default_or_is_refused():
  axes = dict(GRID, kind=("hopfield_energy",), seed=(0,), energy_steps=(1,),
              separation=("softmax", "entmax"), separation_param=(None, 1.5, 1.2))
  ids = sorted(grid.cell_id(c) for c in grid.cells(axes))
  # softmax takes no parameter (1.5, 1.2 are not settings); entmax 1.5 is its default
  assert [c.split("-")[0] for c in ids] == [
      "kindhopfield_energy_energy_steps1_depth2_seed0",
      "kindhopfield_energy_energy_steps1_separationentmax_depth2_seed0",
      "kindhopfield_energy_energy_steps1_separationentmax_separation_param1.2_depth2_seed0"]


def test_energy_heads_presets_list_the_asked_settings():
  for preset in ("energy_heads", "energy_heads_char", "energy_heads_recall"):
    sweep = config_util.load_config(f"{ROOT}/configs/sweep.py:preset={preset}")
    cells = grid.cells(sweep.grid)
    settings = {(c["kind"], c["energy_steps"], c["separation"]) for c in cells}
    expected = {("standard", None, None), ("hopfield", None, None)} | {
        ("hopfield_energy", steps, None if sep == "softmax" else sep)
        for steps, sep in itertools.product((1, 3), ("softmax", "entmax", "sparsemax", "cubic"))}
    assert settings == expected and len(cells) == 3 * len(expected)
    energy_cell = next(c for c in cells if c["separation"] == "cubic" and c["energy_steps"] == 3)
    attention = grid.cell_config(grid.base_config(sweep), energy_cell).model.attention
    assert (attention.kind, attention.energy_steps, attention.separation) == (
        "hopfield_energy", 3, "cubic")


def test_a_preset_names_its_own_seed_count_and_seeds_overrides_it():
  def seeds(arg):
    return config_util.load_config(f"{ROOT}/configs/sweep.py:{arg}").grid.seed
  assert seeds("preset=vit_depth") == (0, 1, 2, 3, 4)
  assert seeds("preset=gpt_char") == (0, 1, 2, 3, 4)
  assert seeds("preset=recall") == (0, 1, 2)
  assert seeds("preset=vit_depth,seeds=2") == (0, 1)
