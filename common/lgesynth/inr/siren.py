"""SIREN (Sitzmann et al. 2020): sine layers whose initialisation is part of the method.

f(x, y, z) -> (intensity, myocardium logit, scar logit).

Weight convention (shared by the single and batched models and the bank file): a layer maps
``h (points, in) -> h @ weight + bias`` with ``weight: (in, out)`` and ``bias: (out,)``; a sine layer
applies ``sin(omega_0 * (h @ weight + bias))``.

Architecture (``SirenSpec``): ``in_features -> hidden_features`` (first sine layer), then
``hidden_layers`` sine layers ``hidden -> hidden``, then a linear head ``hidden -> out_features``
(the layout of vsitzmann/siren's ``Siren(in, hidden, hidden_layers, out)``).

Initialisation (SIREN, sec. 3.2), kept beside the layer in ``siren_init_``:
    first layer:  W ~ U(-1/in, 1/in)
    other layers: W ~ U(-sqrt(6/in)/omega_0, sqrt(6/in)/omega_0)
    biases:       b ~ U(-1/sqrt(in), 1/sqrt(in))   (torch.nn.Linear's default, as in the reference)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

#: output channels of every lgesynth INR
CHANNELS = ("intensity", "myocardium_logit", "scar_logit")


@dataclass(frozen=True)
class SirenSpec:
    """The architecture of one INR; a bank holds INRs of exactly one spec."""

    in_features: int = 3
    hidden_features: int = 128
    hidden_layers: int = 4
    out_features: int = 3
    omega_0: float = 30.0
    first_omega_0: float = 30.0

    @property
    def layer_dims(self) -> list[tuple[int, int]]:
        """(in, out) of every layer, first to last; all but the last are sine layers."""
        h = self.hidden_features
        return [(self.in_features, h)] + [(h, h)] * self.hidden_layers + [(h, self.out_features)]

    @property
    def omegas(self) -> list[float]:
        """omega_0 of each sine layer (the last, linear layer has none)."""
        return [self.first_omega_0] + [self.omega_0] * self.hidden_layers

    @property
    def num_params(self) -> int:
        return sum(i * o + o for i, o in self.layer_dims)

    def flops_per_point(self, backward: bool = True) -> int:
        """Multiply-adds x 2 of the GEMMs for one point (forward, or forward + backward).

        Backward costs two GEMMs per layer (weight and input gradients) except the first layer,
        whose input gradient is not needed.
        """
        fwd = sum(2 * i * o for i, o in self.layer_dims)
        if not backward:
            return fwd
        i0, o0 = self.layer_dims[0]
        return 3 * fwd - 2 * i0 * o0

    def to_dict(self) -> dict:
        return {"name": "siren", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "SirenSpec":
        return cls(**{k: v for k, v in d.items() if k != "name"})


def siren_init_(weight: torch.Tensor, bias: torch.Tensor, omega_0: float, is_first: bool,
                generator: torch.Generator | None = None) -> None:
    """SIREN initialisation in place. ``weight: (..., in, out)``, ``bias: (..., out)``."""
    fan_in = weight.shape[-2]
    bound = 1.0 / fan_in if is_first else math.sqrt(6.0 / fan_in) / omega_0
    with torch.no_grad():
        weight.uniform_(-bound, bound, generator=generator)
        bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in), generator=generator)


def init_params(spec: SirenSpec, seed: int) -> list[torch.Tensor]:
    """One subject's initial parameters from ``seed``: ``[w0, b0, w1, b1, ...]`` (float32).

    The same seed gives bit-identical parameters on every machine (CPU generator), which is what a
    bank records so that every subject of the bank starts from the same point.
    """
    g = torch.Generator().manual_seed(int(seed))
    params = []
    for layer, (fan_in, fan_out) in enumerate(spec.layer_dims):
        w = torch.empty(fan_in, fan_out)
        b = torch.empty(fan_out)
        omega = spec.omegas[layer] if layer < len(spec.omegas) else spec.omega_0
        siren_init_(w, b, omega, is_first=layer == 0, generator=g)
        params += [w, b]
    return params


def param_names(spec: SirenSpec) -> list[str]:
    """Names of the parameters in ``init_params`` order: ``layers.0.weight``, ``layers.0.bias``, ..."""
    return [f"layers.{i}.{kind}" for i in range(len(spec.layer_dims)) for kind in ("weight", "bias")]


class SineFn(torch.autograd.Function):
    """y = sin(omega * z), saving omega * cos(omega * z) for the backward instead of z.

    The backward is then one multiply (no recomputation of a transcendental), and ``z`` can be freed.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, omega: float) -> torch.Tensor:
        wz = z * omega
        y = torch.sin(wz)
        ctx.save_for_backward(torch.cos_(wz).mul_(omega))
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (dydz,) = ctx.saved_tensors
        return grad_y * dydz, None


def sine(z: torch.Tensor, omega: float) -> torch.Tensor:
    """sin(omega * z) through ``SineFn``."""
    return SineFn.apply(z, omega)


class SineLayer(nn.Module):
    """``sin(omega_0 * (x @ weight + bias))`` with SIREN's initialisation.

    Args:
        in_features, out_features: layer size; ``weight: (in, out)``.
        omega_0: frequency factor (30 in the paper).
        is_first: first layer of the network (uses the U(-1/in, 1/in) init).
    """

    def __init__(self, in_features: int, out_features: int, omega_0: float = 30.0, is_first: bool = False):
        super().__init__()
        self.omega_0 = float(omega_0)
        self.is_first = is_first
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        siren_init_(self.weight, self.bias, self.omega_0, is_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sine(torch.addmm(self.bias, x, self.weight), self.omega_0)


class Siren(nn.Module):
    """One subject's INR: ``coords (points, 3) -> (points, 3)`` = (intensity, myo logit, scar logit)."""

    def __init__(self, spec: SirenSpec = SirenSpec(), seed: int | None = None):
        super().__init__()
        self.spec = spec
        dims = spec.layer_dims
        self.sines = nn.ModuleList(
            SineLayer(i, o, omega, is_first=k == 0) for k, ((i, o), omega) in enumerate(zip(dims[:-1], spec.omegas))
        )
        self.head_weight = nn.Parameter(torch.empty(*dims[-1]))
        self.head_bias = nn.Parameter(torch.empty(dims[-1][1]))
        siren_init_(self.head_weight, self.head_bias, spec.omega_0, is_first=False)
        if seed is not None:
            self.load_params(init_params(spec, seed))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = coords
        for layer in self.sines:
            h = layer(h)
        return torch.addmm(self.head_bias, h, self.head_weight)

    def params(self) -> list[nn.Parameter]:
        """Parameters in ``init_params`` / bank order."""
        out = []
        for layer in self.sines:
            out += [layer.weight, layer.bias]
        return out + [self.head_weight, self.head_bias]

    @torch.no_grad()
    def load_params(self, params: list[torch.Tensor]) -> "Siren":
        for p, v in zip(self.params(), params, strict=True):
            p.copy_(v)
        return self
