"""Sweeps: many training runs of small models, vmapped into one compiled step
where they share a program (`vmapped`), a resumable grid of cells (`grid`), and
mean ± std / paired intervals over seeds (`aggregate`). Imports train; nothing
below imports it."""
