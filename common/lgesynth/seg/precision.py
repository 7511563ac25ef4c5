"""bf16 autocast for scar_seg's training forward pass, where the CPU or GPU computes bf16 natively.

MONAI's ``SupervisedTrainer(amp=True)`` autocasts on CUDA only; :class:`AutocastInferer` is the trainer's
``inferer`` instead, so the same config runs the DynUNet's forward pass (and hence its backward) in bf16
on a CPU with AVX512-BF16 / AMX or a bf16 GPU. Weights, optimiser state and the loss stay float32: the
logits leave the inferer as float32 ``(batch, heads, classes, *patch)``. Where bf16 would be emulated
(slower than float32), ``"auto"`` keeps float32 (:func:`lgesynth.inr.fit.resolve_dtype`).
"""

from __future__ import annotations

import torch
from monai.inferers import Inferer, SimpleInferer

from lgesynth.inr.fit import resolve_dtype

PRECISIONS = ("fp32", "bf16", "auto")


def training_dtype(precision: str, device) -> torch.dtype:
    """``"fp32"`` -> float32, ``"bf16"`` -> bfloat16, ``"auto"`` -> bfloat16 where the device computes it natively."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return resolve_dtype("auto", device)
    return torch.bfloat16 if precision == "bf16" else torch.float32


class AutocastInferer(Inferer):
    """``inferer(inputs, network)`` under ``torch.autocast`` in ``dtype`` (float32: no autocast); logits float32."""

    def __init__(self, precision: str = "fp32", device="cpu", inferer: Inferer | None = None):
        super().__init__()
        self.dtype = training_dtype(precision, device)
        self.inferer = inferer or SimpleInferer()

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if self.dtype == torch.float32:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float()
