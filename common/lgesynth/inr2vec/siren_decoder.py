"""functa-style decoder: the bank's own SIREN, shared by all subjects, modulated per subject by the latent.

Dupont et al. 2022 ("From data to functa", sec. 3) represent every datum as shift modulations of one
meta-learned SIREN. Here the base SIREN has the bank's architecture and starts FROM THE BANK'S SHARED
INIT (so at step 0 the decoder renders the init, a plausible average subject), and its weights keep
training; the latent sets, per subject, a phase shift (and optionally a scale) of every sine layer:

    (beta, gamma) = M(z)                              (sine layers, hidden) each; M linear or an MLP, zero at init
    h_0     = x
    h_{l+1} = sin(omega_l (h_l W_l + b_l) (1 + gamma_l) + beta_l)      l < sine layers            (functa eq. 3)
    f(x, z) = h_L W_L + b_L

``beta`` is a phase in radians (functa adds it inside ``omega (...)``; dividing by omega keeps the map's
outputs O(1) for Adam); ``gamma`` (``modulation="scale_shift"``) scales the pre-activation. With
``beta = gamma = 0`` (the zero-initialised last layer of ``M``) ``f(., z)`` is exactly the base SIREN.

The sine is ``inr.fastsin``'s fused sin + cos pass wrapped for autograd (``ShiftedSine``); parameters are
kept in the bank's layout (``weight: (in, out)``), so ``load_base`` takes a bank init as it is stored.
"""

from __future__ import annotations

import torch
from torch import nn

from lgesynth.inr.fastsin import sincos
from lgesynth.inr.siren import SirenSpec, init_params
from lgesynth.inr2vec.chunking import decode_chunked
from lgesynth.inr2vec.tissue import tissue_head


class ShiftedSine(torch.autograd.Function):
    """``y = sin(omega (z + bias))`` with a per-subject bias; ``z: (subjects, points, width)``, ``bias: (subjects, width)``.

    Forward is one fused sin + cos pass (``fastsin.sincos``); the backward multiplies by the saved
    ``omega cos`` (like ``siren.SineFn``) and sums it over points for the bias.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, bias: torch.Tensor, omega: float) -> torch.Tensor:
        wz = z.float().mul(omega).contiguous()
        y = torch.empty_like(wz)
        sincos(wz, y, wz, bias.float().contiguous(), omega)  # y = sin(wz + omega b), wz <- cos(...)
        ctx.omega = omega
        ctx.save_for_backward(wz)
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (cos,) = ctx.saved_tensors
        grad_z = (grad_y * cos).mul_(ctx.omega)
        return grad_z, grad_z.sum(1), None


class SirenDecoder(nn.Module):
    """``f(coords (subjects, points, 3), latent (subjects, latent_dim)) -> (subjects, points, out_features)``.

    Args:
        spec: the bank's SIREN architecture (``SirenSpec`` or its dict); the decoder has exactly its layers.
        latent_dim: size of the latent.
        modulation: ``"shift"`` (functa) or ``"scale_shift"``.
        mapping_hidden: 0: ``M`` is one linear map; > 0: Linear-ReLU-Linear with this width.
        intensity: ``"field"`` (the last layer's channel 0) or ``"tissue"`` (the myocardium rendered from its
            decoded tissue classes, ``inr2vec.tissue``).
        tissue_sharpness: k of the tissue mix ``sigmoid(k * scar logit)`` (``inr2vec.tissue``; 1: the scar
            mask's own probability).
        init: base weights ``[w0 (in, out), b0 (out,), ...]`` (the bank's init); default: SIREN's init of
            seed 0 (what ``load_trained`` builds before the checkpoint overwrites it).
    """

    kind = "siren"

    def __init__(self, spec: SirenSpec | dict = SirenSpec(), latent_dim: int = 512, modulation: str = "shift",
                 mapping_hidden: int = 0, init: list[torch.Tensor] | None = None, intensity: str = "field",
                 tissue_sharpness: float = 1.0):
        super().__init__()
        if modulation not in ("shift", "scale_shift"):
            raise ValueError(f"modulation must be 'shift' or 'scale_shift', got {modulation!r}")
        self.spec = spec if isinstance(spec, SirenSpec) else SirenSpec.from_dict(spec)
        self.latent_dim, self.modulation, self.mapping_hidden = latent_dim, modulation, int(mapping_hidden)
        self.base = nn.ParameterList([nn.Parameter(p.clone()) for p in init_params(self.spec, 0)])
        if init is not None:
            self.load_base(init)
        self.sine_layers, width = len(self.spec.omegas), self.spec.hidden_features
        n_mod = self.sine_layers * width * (2 if modulation == "scale_shift" else 1)
        if self.mapping_hidden > 0:
            self.mapping = nn.Sequential(nn.Linear(latent_dim, self.mapping_hidden), nn.ReLU(),
                                         nn.Linear(self.mapping_hidden, n_mod))
        else:
            self.mapping = nn.Sequential(nn.Linear(latent_dim, n_mod))
        with torch.no_grad():  # zero modulations at step 0: the decoder renders the base SIREN
            self.mapping[-1].weight.zero_()
            self.mapping[-1].bias.zero_()
        self.intensity, self.tissue_sharpness = intensity, float(tissue_sharpness)
        self.tissue = tissue_head(intensity, latent_dim, self.spec.in_features, self.tissue_sharpness)

    @property
    def out_features(self) -> int:
        return self.spec.out_features

    def config(self) -> dict:
        """Constructor arguments (without ``init``: the base weights travel in the state dict)."""
        return {"kind": self.kind, "spec": self.spec.to_dict(), "latent_dim": self.latent_dim,
                "modulation": self.modulation, "mapping_hidden": self.mapping_hidden, "intensity": self.intensity,
                "tissue_sharpness": self.tissue_sharpness}

    @torch.no_grad()
    def load_base(self, params: list[torch.Tensor]) -> "SirenDecoder":
        """Copy one SIREN's ``[w0, b0, ...]`` (bank layout) into the base."""
        for p, v in zip(self.base, params, strict=True):
            assert p.shape == v.shape, (p.shape, v.shape)
            p.copy_(v)
        return self

    def modulations(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``latent (subjects, latent_dim)`` -> ``beta, gamma: (sine layers, subjects, hidden)`` (gamma None for shift)."""
        m = self.mapping(latent).view(latent.shape[0], -1, self.sine_layers, self.spec.hidden_features).permute(1, 2, 0, 3)
        return m[0], (m[1] if self.modulation == "scale_shift" else None)

    def forward(self, coords: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        assert coords.dim() == 3 and latent.dim() == 2 and coords.shape[0] == latent.shape[0], (coords.shape, latent.shape)
        beta, gamma = self.modulations(latent)
        h = coords
        for layer, omega in enumerate(self.spec.omegas):
            w, b = self.base[2 * layer], self.base[2 * layer + 1]
            z = torch.matmul(h, w)  # (subjects, points, hidden): one GEMM over all subjects' points
            if gamma is None:
                bias = b + beta[layer] / omega  # omega (z + b) + beta
            else:
                scale = 1.0 + gamma[layer]
                z = z * scale.unsqueeze(1)
                bias = b * scale + beta[layer] / omega  # omega (z + b)(1 + gamma) + beta
            h = ShiftedSine.apply(z, bias, omega)
        raw = torch.matmul(h, self.base[-2]) + self.base[-1]
        return raw if self.tissue is None else self.tissue(raw, coords, latent)

    @torch.no_grad()
    def decode(self, coords: torch.Tensor, latent: torch.Tensor, chunk: int = 32768) -> torch.Tensor:
        """``forward`` chunked over points; ``coords (points, 3)`` shared or ``(subjects, points, 3)``."""
        return decode_chunked(self, coords, latent, chunk)
