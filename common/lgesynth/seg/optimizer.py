"""The optimiser of a plan: which one it names (``plan["training"]["optimizer"]``), and the torch object.

nnU-Net's SGD for the unbudgeted paper plan; AdamW under a CPU budget (``OPTIMIZER_REASONS`` says why).
"""

from __future__ import annotations

NNUNET_SGD = {"name": "SGD", "lr": 0.01, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5}
BUDGET_ADAMW = {"name": "AdamW", "lr": 2e-3, "weight_decay": 3e-5}
OPTIMIZER_REASONS = {
    "SGD": "optimizer: nnU-Net's SGD (lr 0.01, momentum 0.99, Nesterov), poly LR over 250k iterations",
    "AdamW": ("optimizer: AdamW lr 2e-3, poly LR: nnU-Net's SGD (lr 0.01, momentum 0.99) is tuned for 250k iterations; "
              "under a CPU budget of hundreds of iterations it stays on the all-background plateau (one EMIDEC batch "
              "of 6 slices, 120 steps: SGD predicted no foreground, AdamW reached Dice 0.94)"),
}


def optimizer_for(preset: str, budget_minutes: float | None) -> dict:
    """nnU-Net's SGD for the unbudgeted paper plan; AdamW for CPU budgets (``OPTIMIZER_REASONS`` says why)."""
    return dict(NNUNET_SGD if preset == "paper" and budget_minutes is None else BUDGET_ADAMW)


def build_optimizer(plan: dict, params):
    """The torch optimiser that ``plan["training"]["optimizer"]`` names (``name`` plus its keyword args)."""
    import torch

    settings = dict(plan["training"]["optimizer"])
    name = settings.pop("name")
    if not hasattr(torch.optim, name):
        raise ValueError(f"plan optimizer {name!r} is not in torch.optim; edit plan.json")
    return getattr(torch.optim, name)(params, **settings)
