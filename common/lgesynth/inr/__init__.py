"""INRs of lgesynth: SIREN, batched multi-subject fitting, meta-learned shared init, bank, rendering.

Modules (one job each):
    siren      SirenSpec, SineLayer/Siren (single subject), SIREN init, SineFn (saves cos)
    batched    batched_forward (autograd) and Workspace (hand-written, preallocated fwd/bwd)
    loss       joint loss (MSE + BCE myocardium + scar-in-myocardium BCE), decode rule, PSNR, fit metrics
    sampling   PointSampler: per-step point subsets, a share of them at the mask edges (or the myocardium)
    fit        fit(targets, coords, init, spec, config, callback) -> FitResult; BatchFitter
    meta_init  meta_learn_init (Reptile) -> shared init stored as inr_init.safetensors
    bank       InrBank, save_bank / load_bank / merge_banks, save_init / load_init
    render     render(weights, coords, chunk) -> (intensity, myo_prob, scar_prob); render_volume
"""

from lgesynth.inr.bank import InrBank, bank_from_fit, load_bank, load_init, merge_banks, save_bank, save_init, seed_init
from lgesynth.inr.batched import Workspace, batched_forward, stack_params
from lgesynth.inr.fit import BatchFitter, FitConfig, FitResult, StepInfo, fit
from lgesynth.inr.loss import LossWeights, decode, fit_metrics, joint_loss, psnr
from lgesynth.inr.meta_init import MetaConfig, meta_learn_init
from lgesynth.inr.render import forward_chunked, render, render_volume
from lgesynth.inr.siren import Siren, SineFn, SineLayer, SirenSpec, init_params, param_names

__all__ = [
    "BatchFitter", "FitConfig", "bank_from_fit", "FitResult", "InrBank", "LossWeights", "MetaConfig", "SineFn", "SineLayer", "Siren",
    "SirenSpec", "StepInfo", "Workspace", "batched_forward", "decode", "fit", "fit_metrics", "forward_chunked",
    "init_params", "joint_loss", "load_bank", "load_init", "merge_banks", "meta_learn_init", "param_names", "psnr",
    "render", "render_volume", "save_bank", "save_init", "seed_init", "stack_params",
]
