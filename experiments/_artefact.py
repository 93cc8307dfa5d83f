"""What the RESULTS.md sections built from one experiment's JSON share: the artefact
if its command has run, else the section that names the command to run."""

from __future__ import annotations

import json
import os


def load_or_pending(path, command):
  """(data, None) where `path` exists; else (None, (markdown, verdict)) saying which
  command makes it."""
  if not os.path.exists(path):
    return None, (f"```\n{command}\n```\nnot yet run.\n", "not yet run")
  with open(path, encoding="utf-8") as f:
    return json.load(f), None
