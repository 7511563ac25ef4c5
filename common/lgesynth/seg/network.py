"""The DynUNet a plan describes: its keyword arguments from a topology, and the MONAI network.

Filters: 32 doubling per stage, capped at 320 (3D) / 512 (2D), all scaled by the width factor
(base filters / 32); instance norm, leaky ReLU (0.01), no residual blocks (nnU-Net's default;
``res_block`` to change). Deep supervision on every decoder resolution but the lowest (nnU-Net gives
the lowest weight 0): ``deep_supr_num`` = stages − 3 (at least 1).
"""

from __future__ import annotations

BASE_FILTERS, MAX_FILTERS = 32, {2: 512, 3: 320}
N_CLASSES, IN_CHANNELS = 3, 1


def network_spec(topo: dict, dims: int, base_filters: int, res_block: bool) -> dict:
    """``DynUNet`` keyword arguments (JSON-ready) for a topology of :func:`lgesynth.seg.topology.pool_and_kernels`."""
    n_stages = len(topo["strides"])
    cap = MAX_FILTERS[dims] * base_filters // BASE_FILTERS
    return {
        "spatial_dims": dims, "in_channels": IN_CHANNELS, "out_channels": N_CLASSES,  # + the cavity: seg/cavity.py
        "kernel_size": topo["kernel_size"], "strides": topo["strides"], "upsample_kernel_size": topo["strides"][1:],
        "filters": [min(base_filters * 2 ** i, cap) for i in range(n_stages)],
        "norm_name": ["INSTANCE", {"affine": True}], "act_name": ["leakyrelu", {"inplace": True, "negative_slope": 0.01}],
        "deep_supervision": True, "deep_supr_num": max(1, n_stages - 3), "res_block": bool(res_block),
    }


def build_dynunet(plan: dict):
    """MONAI ``DynUNet`` from ``plan["network"]`` (deep supervision on, instance norm, leaky ReLU)."""
    from monai.networks.nets import DynUNet

    kwargs = dict(plan["network"])
    for key in ("norm_name", "act_name"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = (kwargs[key][0], dict(kwargs[key][1]))
    return DynUNet(**kwargs)
