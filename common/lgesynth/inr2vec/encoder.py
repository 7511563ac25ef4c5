"""inr2vec encoder (De Luigi et al., ICLR 2023): the weights of one SIREN -> one latent vector.

Rows. A layer ``h @ weight + bias`` with ``weight: (subjects, in, out)``, ``bias: (subjects, out)`` has
``out`` neurons; neuron j is described by its incoming weights and its bias, one row

    r_j = [weight[:, j], bias[j]]  in R^(in + 1),   rows_k = cat(weight^T, bias[:, None]): (subjects, out, in + 1)

Every hidden layer and the linear head have ``in = hidden`` (rows of length hidden + 1); the first
layer has ``in = 3`` (rows of length 4). Rows of equal length share one input projection (so there
are two: first layer, and all others), and a learned per-layer embedding is added so that the
shared MLP knows which layer a row came from:

    e_j = P_len(r_j) + E[layer(j)]                      (width)
    f_j = MLP(e_j)                                      (width)      shared over all rows and layers
    g   = [max_j f_j, mean_j f_j]                       (2 width)    over all rows of one INR
    z   = head(g)                                       (latent_dim)

inr2vec pools with max only; the mean is added (``pool="maxmean"``, default) because a max-pool is
blind to rows that win no channel: a weight there could change without changing the latent. The
MLP uses LayerNorm (inr2vec: BatchNorm) so that a subject's latent never depends on its batch.

Standardisation: before the rows are built, every parameter tensor is mapped to
``(p - center_k) / scale_k``. By default ``center_k = 0`` and ``scale_k`` is the std of SIREN's init
distribution for that tensor (so raw banks are already O(1)); ``fit_standardization(params)``
replaces them by the bank's statistics (per tensor scalars, or ``per_element=True``: the bank mean of
every entry, i.e. ~the shared init, is subtracted; this sharpens subject differences but breaks the
meaning of permutation augmentation, see augment.py). They are buffers, saved with the state dict.

Per-element centres sharpen the subject but blind the pooled MLP to which neuron a deviation belongs
(after the pool, "neuron 5 moved by x" and "neuron 7 moved by x" look alike); ``center_rows=True``
gives it back by appending the centre's row (the shared init, roughly) to every standardised row:

    r_j = [(theta_j - c_j) / s,  c_j / std(c)]  in R^(2 (in + 1))

In a bank fitted from one meta-learned init the subject-to-subject spread of the first layer's
weights and of all biases is 0.5-3 % of their size (hidden weights: ~40 %), so a per-tensor
standardisation leaves those parts nearly constant across subjects.

The encoder is NOT permutation invariant: a permutation of hidden neurons permutes rows of layer k
(invisible to the pool) and the columns of layer k+1's rows (visible). All INRs of a bank share one
init, which aligns their neurons; ``augment.permute_neurons`` teaches the rest if wanted.

The encoder records the ``SirenSpec`` it was built for; ``check_spec`` and ``forward`` refuse another
architecture with a ``DataError`` naming the differences.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lgesynth.errors import DataError
from lgesynth.inr.siren import SirenSpec


def init_std(spec: SirenSpec) -> list[float]:
    """Std of SIREN's init distribution of every tensor ``[w0, b0, w1, b1, ...]`` (uniform: bound / sqrt(3))."""
    out = []
    for layer, (fan_in, _) in enumerate(spec.layer_dims):
        omega = spec.omegas[layer] if layer < len(spec.omegas) else spec.omega_0
        w_bound = 1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / omega
        out += [w_bound / math.sqrt(3.0), 1.0 / math.sqrt(fan_in) / math.sqrt(3.0)]
    return out


def spec_differences(expected: SirenSpec, got: SirenSpec) -> list[str]:
    """Human-readable ``field got (expected e)`` for every field that differs."""
    a, b = expected.to_dict(), got.to_dict()
    return [f"{k} {b.get(k)} (encoder: {a[k]})" for k in a if a[k] != b.get(k)]


def weight_rows(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One row per output neuron: ``weight (S, in, out), bias (S, out) -> (S, out, in + 1)``."""
    return torch.cat([weight.transpose(1, 2), bias.unsqueeze(-1)], dim=-1)


class Inr2VecEncoder(nn.Module):
    """INR weights -> latent.

    Args:
        spec: the SIREN architecture of the bank (recorded; another one is refused).
        latent_dim: size of the latent (512 in the pipeline).
        width: per-row feature size of the shared MLP.
        depth: Linear layers in the shared MLP after the input projection.
        pool: ``"maxmean"`` (max and mean over rows, default) or ``"max"`` (as inr2vec).
        center_rows: append to every row the neuron's row of the standardisation centre (scaled to
            unit std per tensor): with ``per_element`` centres the standardised row is the subject's
            deviation from the bank mean and the centre row says which neuron it belongs to (see doc).
    """

    def __init__(self, spec: SirenSpec, latent_dim: int = 512, width: int = 512, depth: int = 3,
                 pool: str = "maxmean", center_rows: bool = False):
        super().__init__()
        if pool not in ("max", "maxmean"):
            raise ValueError(f"pool must be 'max' or 'maxmean', got {pool!r}")
        self.spec, self.latent_dim, self.width, self.pool = spec, latent_dim, width, pool
        self.center_rows = bool(center_rows)
        dims = spec.layer_dims
        # one input projection per distinct row length (first layer: in=3; hidden and head: in=hidden)
        self.row_lengths = sorted({(i + 1) * (2 if center_rows else 1) for i, _ in dims})
        self.proj = nn.ModuleDict({str(n): nn.Linear(n, width) for n in self.row_lengths})
        self.layer_embedding = nn.Parameter(torch.randn(len(dims), width) * 0.02)
        blocks = []
        for _ in range(depth):
            blocks += [nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width)]
        self.mlp = nn.Sequential(*blocks)
        pooled = width * (2 if pool == "maxmean" else 1)
        self.head = nn.Sequential(nn.LayerNorm(pooled), nn.Linear(pooled, width), nn.ReLU(), nn.Linear(width, latent_dim))
        shapes = [s for i, o in dims for s in ((i, o), (o,))]
        for k, (shape, std) in enumerate(zip(shapes, init_std(spec))):
            self.register_buffer(f"center_{k}", torch.zeros(shape))
            self.register_buffer(f"scale_{k}", torch.tensor(std))

    # -- architecture record ---------------------------------------------------------------------
    def check_spec(self, spec: SirenSpec, source: str | None = None) -> None:
        """Raise ``DataError`` (naming ``source``, e.g. the bank file) if ``spec`` is not the encoder's."""
        diff = spec_differences(self.spec, spec)
        if diff:
            raise DataError(source, "INR architecture differs from the one this encoder was built for: "
                            + ", ".join(diff) + "; encode banks of the encoder's architecture or train a new encoder")

    def check_params(self, params: list[torch.Tensor], source: str | None = None) -> None:
        """Raise ``DataError`` if the stacked tensors do not have the shapes of the encoder's spec."""
        want = [s for i, o in self.spec.layer_dims for s in ((i, o), (o,))]
        got = [tuple(p.shape[1:]) for p in params]
        if len(got) != len(want) or any(tuple(w) != g for w, g in zip(want, got)):
            raise DataError(source, f"INR parameter shapes {got} (without the subject dim) differ from the encoder's "
                            f"architecture {self.spec.to_dict()} which needs {want}; encode banks of that architecture "
                            "or train a new encoder")
        if len({p.shape[0] for p in params}) != 1:
            raise DataError(source, f"INR tensors disagree on the number of subjects: {[p.shape[0] for p in params]}")

    def get_extra_state(self) -> dict:
        return {"spec": self.spec.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.check_spec(SirenSpec.from_dict(state["spec"]), "encoder checkpoint")

    # -- standardisation -------------------------------------------------------------------------
    def centers(self) -> list[torch.Tensor]:
        return [getattr(self, f"center_{k}") for k in range(2 * len(self.spec.layer_dims))]

    def scales(self) -> list[torch.Tensor]:
        return [getattr(self, f"scale_{k}") for k in range(2 * len(self.spec.layer_dims))]

    @torch.no_grad()
    def fit_standardization(self, params: list[torch.Tensor], per_element: bool = False) -> "Inr2VecEncoder":
        """Set centre and scale of every tensor from a bank ``[w0 (N, in, out), b0 (N, out), ...]``.

        ``per_element=False``: scalar mean and std per tensor. ``True``: the bank mean of each entry
        (needs N >= 2) and the scalar std of the centred values.
        """
        self.check_params(params)
        for c, s, p in zip(self.centers(), self.scales(), params):
            p = p.to(c)
            mean = p.mean(0) if per_element else p.mean().expand_as(c)
            c.copy_(mean)
            s.copy_((p - mean).std().clamp_min(1e-8))
        return self

    def standardize(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(p - c) / s for p, c, s in zip(params, self.centers(), self.scales())]

    # -- forward ---------------------------------------------------------------------------------
    def rows(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standardised rows per layer: ``[(subjects, out_k, in_k + 1)]`` (``2 (in_k + 1)`` with ``center_rows``)."""
        p = self.standardize(params)
        rows = [weight_rows(p[2 * k], p[2 * k + 1]) for k in range(len(self.spec.layer_dims))]
        if not self.center_rows:
            return rows
        c = [t / t.std().clamp_min(1e-8) if t.numel() > 1 else t for t in self.centers()]
        S = params[0].shape[0]
        return [torch.cat([r, weight_rows(c[2 * k][None], c[2 * k + 1][None]).expand(S, -1, -1).to(r)], dim=-1)
                for k, r in enumerate(rows)]

    def forward(self, params: list[torch.Tensor]) -> torch.Tensor:
        """``params``: stacked ``[w0 (subjects, in, out), b0 (subjects, out), ...]`` -> ``(subjects, latent_dim)``."""
        self.check_params(params)
        feats = []
        for k, r in enumerate(self.rows(params)):
            feats.append(self.proj[str(r.shape[-1])](r) + self.layer_embedding[k])
        f = self.mlp(torch.cat(feats, dim=1))  # (subjects, rows, width)
        g = f.amax(1)
        if self.pool == "maxmean":
            g = torch.cat([g, f.mean(1)], dim=-1)
        return self.head(g)
