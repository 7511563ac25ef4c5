"""Linear probe on latents: how linearly separable is a label (e.g. scar / no scar) in latent space.

Multinomial logistic regression in torch on standardised latents (train statistics), small L2,
full-batch L-BFGS; returns the test accuracy.
"""

from __future__ import annotations

import torch


def linear_probe_accuracy(latents_train: torch.Tensor, y_train: torch.Tensor, latents_test: torch.Tensor,
                          y_test: torch.Tensor, l2: float = 1e-3, max_iter: int = 200) -> float:
    """Accuracy on the test set of a logistic regression fitted on the train set.

    Args:
        latents_train: ``(n_train, latent)``; ``y_train: (n_train,)`` integer class labels.
        latents_test: ``(n_test, latent)``; ``y_test: (n_test,)``.
        l2: weight decay on the weights (not the bias), per sample.
    """
    x_tr, x_te = latents_train.detach().double(), latents_test.detach().double()
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-8) if len(x_tr) > 1 else torch.ones(x_tr.shape[1], dtype=x_tr.dtype)
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    y_tr, y_te = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    classes = int(max(y_tr.max(), y_te.max())) + 1
    W = torch.zeros(x_tr.shape[1], classes, dtype=x_tr.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=x_tr.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_tr @ W + b, y_tr) + l2 * W.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x_te @ W + b).argmax(1) == y_te).double().mean())
