"""Batched multi-subject SIREN: B subjects' INRs evaluated with one batched GEMM per layer.

Parameters are a list in ``siren.param_names`` order with a leading subject dim:
``weights: (subjects, in, out)``, ``biases: (subjects, out)``.

Two paths:
- ``batched_forward``: functional, autograd-capable (``baddbmm`` + ``SineFn``); used for rendering,
  evaluation and as the reference in tests.
- ``Workspace``: the fitting path. Forward and backward are written out by hand into buffers that are
  allocated once for the largest batch, so a training step allocates (almost) nothing: no autograd
  graph, no allocator churn (which showed up as ~40 % system time in the autograd version). The sine
  layers save ``cos`` in the buffer that held the pre-activation, and ``omega_0`` is folded into the
  GEMMs' ``alpha`` so that the backward of a sine layer is a single elementwise multiply; sin and cos
  come from one fused pass (``fastsin``; torch's sin/cos if no compiler).
  ``compute_dtype=torch.bfloat16`` runs the hidden GEMMs and activations in bf16 (fp32 accumulation in
  oneDNN/cuBLAS; fp32 master weights, first layer and loss in fp32).
"""

from __future__ import annotations

import torch

from lgesynth.inr.fastsin import sincos
from lgesynth.inr.siren import SirenSpec, sine


def stack_params(params: list[torch.Tensor], subjects: int) -> list[torch.Tensor]:
    """Repeat one subject's ``[w0, b0, ...]`` into a batch: ``(subjects, ...)``, contiguous copies."""
    return [p.detach().unsqueeze(0).repeat(subjects, *([1] * p.dim())).contiguous() for p in params]


def batched_forward(params: list[torch.Tensor], coords: torch.Tensor, spec: SirenSpec) -> torch.Tensor:
    """``coords: (subjects, points, in)`` (or ``(points, in)`` shared) -> ``(subjects, points, out)``."""
    subjects = params[0].shape[0]
    h = coords if coords.dim() == 3 else coords.unsqueeze(0).expand(subjects, -1, -1)
    n_sine = len(spec.omegas)
    for layer in range(n_sine):
        w, b = params[2 * layer], params[2 * layer + 1]
        h = sine(torch.baddbmm(b.unsqueeze(1), h, w), spec.omegas[layer])
    w, b = params[-2], params[-1]
    return torch.baddbmm(b.unsqueeze(1), h, w)


class Workspace:
    """Preallocated buffers for the hand-written forward/backward of a batched SIREN.

    Per sine layer l: ``z = omega * (h @ W)`` (GEMM, ``alpha = omega``), then one fused pass
    ``h' = sin(z + omega * b)``, ``z <- cos(z + omega * b)`` (``fastsin.sincos``; the bias is added there, so no
    GEMM has to broadcast-copy it). Backward of a sine layer: ``g <- g * cos`` (one multiply), then
    ``grad_W = omega h^T g``, ``grad_b = omega 1^T g`` and ``g_prev = omega g W^T``, all GEMMs.

    Args:
        spec: architecture.
        max_subjects: the largest batch; any smaller batch uses leading slices of the buffers.
        points: points per subject per step.
        compute_dtype: dtype of hidden activations and hidden GEMMs (float32 or bfloat16).
    """

    def __init__(self, spec: SirenSpec, max_subjects: int, points: int, compute_dtype=torch.float32, device="cpu"):
        self.spec, self.max_subjects, self.points = spec, max_subjects, points
        self.dtype = compute_dtype
        self.device = torch.device(device)
        B, P, H = max_subjects, points, spec.hidden_features
        n_sine = len(spec.omegas)
        lp = dict(dtype=compute_dtype, device=self.device)
        f32 = dict(dtype=torch.float32, device=self.device)
        # h[l]: input of layer l (h[0] = coords); c[l]: pre-activation of sine layer l, then its cos
        self.h = [None] + [torch.empty(B, P, H, **lp) for _ in range(n_sine)]
        self.c = [torch.empty(B, P, H, **lp) for _ in range(n_sine)]
        self.z0 = torch.empty(B, P, H, **f32) if compute_dtype != torch.float32 else self.c[0]  # layer 0 is fp32
        self.g = [torch.empty(B, P, H, **lp) for _ in range(2)]  # ping-pong input gradients
        self.out = torch.empty(B, P, spec.out_features, **f32)
        self.ones = torch.ones(B, 1, P, **lp)  # bias gradients as GEMMs: 1^T g
        self.lowp = compute_dtype != torch.float32
        if self.lowp:
            self.out_lp = torch.empty(B, P, spec.out_features, **lp)
            self.dout_lp = torch.empty(B, P, spec.out_features, **lp)
            self.coords_lp = torch.empty(B, P, spec.in_features, **lp)
            self.gw_lp = [torch.empty(B, i, o, **lp) for i, o in spec.layer_dims]
            self.w_lp = [torch.empty(B, i, o, **lp) for i, o in spec.layer_dims]
        self.gb = [torch.empty(B, 1, o, **lp) for _, o in spec.layer_dims]

    def nbytes(self) -> int:
        bufs = self.h[1:] + self.c + self.g + [self.out] + ([self.z0] if self.lowp else [])
        return sum(t.numel() * t.element_size() for t in bufs)

    def _weights(self, params: list[torch.Tensor], b: int) -> list[torch.Tensor]:
        """Weight matrices in the compute dtype (layer 0 and fp32 mode: the fp32 params themselves)."""
        ws = params[0::2]
        if not self.lowp:
            return ws
        return [ws[0]] + [buf[:b].copy_(w) for buf, w in zip(self.w_lp[1:], ws[1:])]

    @torch.no_grad()
    def forward(self, params: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
        """``coords: (b, points, in)`` fp32 -> output ``(b, points, out)`` fp32 (a view of a buffer).

        Keeps what ``backward`` needs; valid until the next call.
        """
        spec = self.spec
        b, P = coords.shape[0], coords.shape[1]
        assert b <= self.max_subjects and P == self.points, (b, P)
        ws = self._weights(params, b)
        self._b, self._coords, self._ws = b, coords, ws
        n_sine = len(spec.omegas)
        for layer in range(n_sine):
            om = spec.omegas[layer]
            z, h = (self.z0[:b], coords) if layer == 0 else (self.c[layer][:b], self.h[layer][:b])
            torch.baddbmm(z, h, ws[layer], beta=0, alpha=om, out=z)  # omega * h @ W (layer 0 in fp32: omega*x needs it)
            sincos(z, self.h[layer + 1][:b], self.c[layer][:b], params[2 * layer + 1].contiguous(), om)
        hl, out = self.h[n_sine][:b], self.out[:b]
        if self.lowp:
            torch.baddbmm(params[-1].to(self.dtype).unsqueeze(1), hl, ws[-1], out=self.out_lp[:b])
            out.copy_(self.out_lp[:b])
        else:
            torch.baddbmm(params[-1].unsqueeze(1), hl, ws[-1], out=out)
        return out

    @torch.no_grad()
    def backward(self, dout: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """Gradients of ``sum(dout * output)`` w.r.t. the params into ``grads`` (same shapes, fp32).

        ``dout: (b, points, out)`` fp32, the loss gradient w.r.t. the last ``forward``'s output.
        """
        spec, b, ws = self.spec, self._b, self._ws
        n_sine = len(spec.omegas)
        d = self.dout_lp[:b].copy_(dout) if self.lowp else dout
        last = len(spec.layer_dims) - 1
        self._param_grads(grads, last, self.h[n_sine][:b], d, 1.0)
        g = self.g[0][:b]
        torch.bmm(d, ws[-1].transpose(1, 2), out=g)
        for layer in range(n_sine - 1, -1, -1):
            om = spec.omegas[layer]
            g.mul_(self.c[layer][:b])  # dL/d(pre-activation) / omega
            if layer == 0:
                x = self.coords_lp[:b].copy_(self._coords) if self.lowp else self._coords
                self._param_grads(grads, 0, x, g, om)
                break
            self._param_grads(grads, layer, self.h[layer][:b], g, om)
            g_next = self.g[(n_sine - layer) % 2][:b]
            torch.baddbmm(g_next, g, ws[layer].transpose(1, 2), beta=0, alpha=om, out=g_next)
            g = g_next

    def _param_grads(self, grads: list[torch.Tensor], layer: int, h: torch.Tensor, g: torch.Tensor, alpha: float) -> None:
        """grad_W = alpha h^T g and grad_b = alpha 1^T g of ``layer`` (GEMMs) into the fp32 ``grads``."""
        b = g.shape[0]
        gw, gb = grads[2 * layer], grads[2 * layer + 1]
        buf_b = self.gb[layer][:b]
        torch.baddbmm(buf_b, self.ones[:b, :, : g.shape[1]], g, beta=0, alpha=alpha, out=buf_b)
        gb.copy_(buf_b.squeeze(1))
        if self.lowp:
            buf = self.gw_lp[layer][:b]
            torch.baddbmm(buf, h.transpose(1, 2), g, beta=0, alpha=alpha, out=buf)
            gw.copy_(buf)
        elif gw.is_contiguous():
            torch.baddbmm(gw, h.transpose(1, 2), g, beta=0, alpha=alpha, out=gw)
        else:
            gw.copy_(torch.baddbmm(gw, h.transpose(1, 2), g, beta=0, alpha=alpha))
