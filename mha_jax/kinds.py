"""The one table of attention-kind facts (`attention.kind`).

Every module that needs a fact about a kind — what it carries from layer to layer,
which config fields it reads, how it is computed, how its residual works, what it
costs, whether decoding, the PyTorch reference or the Hugging Face export support
it — reads it here. Adding a kind: mha_jax/models/README.md, "How to add an
attention kind".

The bytes a kind carries are not stated here but measured: `layers.carry_bytes`
takes `jax.eval_shape` of the real initial state.
"""

from __future__ import annotations

import dataclasses

# Fields of AttentionConfig that every kind reads.
COMMON_FIELDS = ("kind", "score_scale", "implementation")
# The fields MHA's H chain reads (hopfield and the kinds built on its H).
_HIDDEN_CHAIN = ("alpha_hidden", "h0", "h0_noise_std", "h0_noise_seed", "reset_every")
_MHA_KERNEL_FIELDS = ("hidden_window", "hidden_dtype", "hidden_budget_bytes",
                      "layerwise_keep_outputs")
_RETRIEVAL = ("energy_steps", "separation", "separation_param")
# How each residual rule is written in results and config summaries.
RESIDUAL_RULES = {
    "form": "attention.residual_update(x, u, α, residual)",
    "x+u": "x ← x + u",
    "x+g·u": "x ← x + g·u, g learnable, init 0",
    "depth softmax": "h ← Σ_i softmax_i(w·RMSNorm v_i) v_i before each sublayer, w learnable, "
                     "init 0; no additive skip",
    "x+u, then DWA": "x ← x + u, then x_l ← Σ_{j≤l} a_{l,j} x_j, a learnable, init identity",
    "streams": "n streams x_i ← Σ_j R_ij x_j + P_i·F(Σ_j A_j x_j) around each sublayer F, "
               "A = σ(·), P = 2σ(·), R doubly stochastic (Sinkhorn–Knopp); init x ← x + F(x)",
}


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """Facts about one attention kind."""
  name: str
  label: str                      # its name in tables and plots
  carries: str                    # the state it passes from layer to layer
  reads: tuple[str, ...]          # AttentionConfig fields beyond COMMON_FIELDS
  implementations: tuple[str, ...]   # allowed `attention.implementation`s; first = default
  residual: str                   # a key of RESIDUAL_RULES
  score_update_flops: int         # forward FLOPs per T×S score entry beyond attention's
  rival: bool                     # a published cross-layer remedy compared with MHA
  decode: bool                    # KV-cache decoding (mha_jax.decode)
  torch_reference: bool           # interop/torch_reference.py implements it
  hf_export: bool                 # interop export writes it (stock class or hf_code)
  citation: str = ""

  @property
  def all_fields(self):
    return COMMON_FIELDS + self.reads

  def score_flops_per_entry(self, att, head_dim):
    """Forward FLOPs per T×S score entry beyond attention's QKᵀ and PV: the state
    update, plus 4·D per retrieval step (β K ξ and Kᵀ p) for kinds that iterate."""
    steps = att.energy_steps if "energy_steps" in self.reads else 0
    return self.score_update_flops + 4 * head_dim * steps

  @property
  def carries_hidden(self):
    """True where a T×S hidden state (or its factorised form) rides the carry."""
    return "H" in self.carries


KINDS = {kind.name: kind for kind in (
    AttentionKind(
        name="standard", label="standard", carries="nothing", reads=(),
        implementations=("naive", "xla", "cudnn", "flash"), residual="x+u",
        score_update_flops=0, rival=False, decode=True, torch_reference=True, hf_export=True),
    AttentionKind(
        name="hopfield", label="MHA",
        carries="H [B, N, T, S] (naive, fused, cudnn), stacked Q̃, K̃ [B, T, N, W, D] "
                "(factorized), or every layer's q, k [L, B, N, T, D] once (layerwise)",
        reads=("alpha", "residual") + _HIDDEN_CHAIN + _MHA_KERNEL_FIELDS + _RETRIEVAL,
        implementations=("naive", "factorized", "fused", "layerwise", "cudnn", "auto"),
        residual="form",
        score_update_flops=3,   # α′·H + (1−α′)·s
        rival=False, decode=True, torch_reference=True, hf_export=True,
        citation="Masumura & Taki, NeurIPS 2025"),
    AttentionKind(
        name="realformer", label="RealFormer", carries="H [B, N, T, S]",
        reads=("reset_every",), implementations=("naive",), residual="x+u",
        score_update_flops=1,   # H + s
        rival=True, decode=True, torch_reference=False, hf_export=True,
        citation="He et al., 2021, residual attention"),
    AttentionKind(
        name="value_residual", label="value residual", carries="V_1 [B, T, N, D]",
        reads=("value_residual_lambda",), implementations=("naive",), residual="x+u",
        score_update_flops=0, rival=True, decode=True, torch_reference=False,
        hf_export=False, citation="Zhou et al., 2024, ResFormer"),
    AttentionKind(
        name="rezero", label="ReZero", carries="nothing", reads=(),
        implementations=("naive", "xla", "cudnn", "flash"), residual="x+g·u",
        score_update_flops=0,
        rival=True, decode=True, torch_reference=False, hf_export=False,
        citation="Bachlechner et al., 2021"),
    AttentionKind(
        name="hopfield_energy", label="Hopfield energy", carries="nothing",
        reads=_RETRIEVAL, implementations=("naive",), residual="x+u", score_update_flops=0,
        rival=False, decode=True, torch_reference=True, hf_export=False,
        citation="this codebase's reading of Farooq, arXiv 2506.11043 (mha_jax/energy.py)"),
    # Cross-layer rivals that carry a history of earlier outputs (mha_jax/depth_mixing.py).
    # Their mixing costs ~2·D FLOPs per history entry and token, not per score entry.
    AttentionKind(
        name="attention_residuals", label="AttnRes",
        carries="history [2L+1, B, T, D]: embedding, every sublayer's output; layer index",
        reads=(), implementations=("naive",), residual="depth softmax", score_update_flops=0,
        rival=True, decode=False, torch_reference=False, hf_export=False,
        citation="Kimi Team, arXiv 2603.15031 (Full AttnRes; 2 new [D] vectors per sublayer)"),
    AttentionKind(
        name="denseformer", label="DenseFormer",
        carries="history [L+1, B, T, D]: embedding, every block's output; layer index",
        reads=(), implementations=("naive",), residual="x+u, then DWA", score_update_flops=0,
        rival=True, decode=False, torch_reference=False, hf_export=False,
        citation="Pagliardini et al., 2024 (DWA every block; L+1 new weights per block)"),
    # n = 4 residual streams mixed around every sublayer (mha_jax/hyper_connections.py);
    # ~(n² + 2n)·2 FLOPs per feature and token per sublayer, not per score entry.
    AttentionKind(
        name="hyper_connections", label="mHC",
        carries="streams [4, B, T, D]: n = 4 residual streams; layer index",
        reads=("hyper_connections_dynamic",), implementations=("naive",), residual="streams",
        score_update_flops=0, rival=True, decode=False, torch_reference=False,
        hf_export=False,
        citation="Xie et al. (DeepSeek-AI), arXiv 2512.24880: mHC on the hyper-connections "
                 "of Zhu et al., ICLR 2025 (static: 2n + n² = 24 weights per sublayer; "
                 "hyper_connections_dynamic adds n·D·24 + 3)"),
)}


def get(name):
  """The row of kind `name`; one ValueError naming the allowed kinds otherwise."""
  if name not in KINDS:
    raise ValueError(f"attention.kind={name!r} is not allowed; choose one of {tuple(KINDS)}")
  return KINDS[name]


def names(*, carries_hidden=None, rival=None, decode=None, hf_export=None,
          torch_reference=None):
  """Kind names in table order, filtered by the given facts."""
  wanted = dict(carries_hidden=carries_hidden, rival=rival, decode=decode,
                hf_export=hf_export, torch_reference=torch_reference)
  return tuple(name for name, kind in KINDS.items()
               if all(getattr(kind, fact) == value for fact, value in wanted.items()
                      if value is not None))
