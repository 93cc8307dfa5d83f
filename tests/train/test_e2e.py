"""End to end: the ViT and GPT smoke configs train, evaluate, checkpoint; the GPT
run resumes, the ViT run seeds a linear probe through `init_from`."""

import pathlib

import jax
import numpy as np
import pytest

from mha_jax.train import ConfigError, checkpoint, train_and_evaluate

pytestmark = pytest.mark.slow


def check_smoke_run(workdir, final, helpers, text):
  losses = [row["loss"] for row in helpers.read_metrics(workdir, "train")]
  assert min(losses[1:]) < losses[0] - 0.1, losses
  eval_losses = [row["loss"] for row in helpers.read_metrics(workdir, "eval")]
  assert eval_losses[-1] < eval_losses[0], eval_losses
  assert [row["step"] for row in helpers.read_metrics(workdir, "eval")] == [10, 20]
  assert {"loss", "accuracy"} <= set(final) and ("perplexity" in final) == text
  assert helpers.checkpoint_steps(workdir) == [10, 20]
  assert (workdir / "config.json").exists()
  assert list(pathlib.Path(workdir, "tb").glob("events.out.tfevents.*"))


def test_gpt_smoke_bf16_trains_and_resumes(tmp_path, helpers, capsys):
  config = helpers.smoke_config("gpt2_wikitext103", **{"model.attention.kind": "hopfield",
                                                       "model.dtype": "bfloat16"})
  final = train_and_evaluate(config, str(tmp_path))
  check_smoke_run(tmp_path, final, helpers, text=True)
  out = capsys.readouterr().out
  assert "1 process(es), mesh data=8 fsdp=1 tensor=1;" in out and out.count("; fresh\n") == 1
  assert "compiling the train step…" in out
  assert f"done at step 20: loss={final['loss']:.4g}" in out
  assert str(tmp_path / "checkpoints") in out

  config.total_steps = 25   # a second call resumes from step 20
  train_and_evaluate(config, str(tmp_path))
  assert [row["step"] for row in helpers.read_metrics(tmp_path, "train")][-1] == 25
  assert helpers.checkpoint_steps(tmp_path)[-1] == 25
  assert "; resumed from step 20\n" in capsys.readouterr().out

  # Issue 9 case 2: another attention kind used to continue the old weights silently.
  config.model.attention.kind = "standard"
  config.total_steps = 30
  with pytest.raises(ConfigError, match=r"changed: model\.attention\.kind \('hopfield' → "
                                        r"'standard'\); a resumed run may change only "
                                        r"total_steps, ") as error:
    train_and_evaluate(config, str(tmp_path))
  assert "\n" not in str(error.value) and helpers.checkpoint_steps(tmp_path)[-1] == 25
  assert '"kind": "hopfield"' in (tmp_path / "config.json").read_text()   # not overwritten


def test_vit_smoke_trains_then_seeds_a_linear_probe(tmp_path, helpers):
  source, probe = tmp_path / "source", tmp_path / "probe"
  config = helpers.smoke_config("vit_cifar", **{"model.attention.kind": "hopfield"})
  final = train_and_evaluate(config, str(source))
  check_smoke_run(source, final, helpers, text=False)

  config.update(total_steps=3, eval_every=0, init_from=str(source))
  config.optim.trainable = "^head/"
  train_and_evaluate(config, str(probe))
  before = checkpoint.load_params(str(source))
  after = checkpoint.load_params(str(probe))
  frozen = {k: v for k, v in before.items() if k != "head"}
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves({k: after[k] for k in frozen})):
    np.testing.assert_array_equal(a, b)   # loaded, then left alone
  assert not np.array_equal(before["head"]["kernel"], after["head"]["kernel"])
