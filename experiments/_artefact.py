"""What the RESULTS.md sections built from one experiment's JSON share: the command
that makes the artefact, the artefact if it has run, else the section that names the
command to run."""

from __future__ import annotations

import json
import os
import typing


class Artefact(typing.NamedTuple):
  data: dict | None       # the JSON, None before the command has run
  command: str            # the command that writes it
  path: str
  pending: tuple | None   # (markdown, verdict) of a section not yet run, else None


def read(command_template, outdir, *parts):
  """The artefact `outdir/parts…` that `command_template.format(o=outdir)` writes."""
  command, path = command_template.format(o=outdir), os.path.join(outdir, *parts)
  if not os.path.exists(path):
    return Artefact(None, command, path, (f"```\n{command}\n```\nnot yet run.\n", "not yet run"))
  with open(path, encoding="utf-8") as f:
    return Artefact(json.load(f), command, path, None)
