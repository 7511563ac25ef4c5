"""EDM core (lgesynth.edm): preconditioning, loss, Heun sampler, denoiser, EMA, standardisation.

The sampler is checked against exact denoisers, for which the answer is known in closed form:
data ~ N(mu, s^2 I) has D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and its probability-flow
ODE maps x(sigma_max) to mu + (x(sigma_max) - mu) s / sqrt(s^2 + sigma_max^2).
"""

from __future__ import annotations

import math

import pytest
import torch

from lgesynth.edm import (EMA, SCAR_PATTERNS, EDMLoss, EDMPrecond, LatentDenoiser, LatentStandardizer,
                          edm_preconditioning, edm_sampler, edm_sigma_steps, ema_beta, estimate_sigma_data,
                          guided_denoise, scar_condition)
from lgesynth.errors import DataError

SIGMA_MAX = 80.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one intra-op thread is faster


# ------------------------------------------------------------------------------------------------
# Exact denoisers

class GaussianDenoiser:
    """Exact D for data ~ N(mu, s^2 I)."""

    def __init__(self, mu: torch.Tensor, s: float):
        self.mu, self.s = mu.to(torch.float64), s

    def __call__(self, x, sigma, cond=None):
        sigma = sigma.reshape(-1, 1)
        return (self.s ** 2 * x + sigma ** 2 * self.mu) / (self.s ** 2 + sigma ** 2)

    def ode_solution(self, noise: torch.Tensor) -> torch.Tensor:
        """Where the exact probability-flow ODE takes x(sigma_max) = sigma_max * noise at sigma = 0."""
        return self.mu + (SIGMA_MAX * noise.to(torch.float64) - self.mu) * self.s / math.sqrt(self.s ** 2 + SIGMA_MAX ** 2)


class TwoGaussianDenoiser:
    """Exact D for two classes N(mu_a, s^2 I) (cond 1) and N(mu_b, s^2 I) (cond 0), equally likely.

    ``cond`` (batch, 1) selects the class per row; ``cond=None`` is the exact denoiser of the mixture.
    """

    def __init__(self, mu_a: torch.Tensor, mu_b: torch.Tensor, s: float):
        self.a, self.b = GaussianDenoiser(mu_a, s), GaussianDenoiser(mu_b, s)
        self.s = s

    def __call__(self, x, sigma, cond=None):
        D_a, D_b = self.a(x, sigma), self.b(x, sigma)
        if cond is not None:
            return torch.where(cond.reshape(-1, 1) > 0.5, D_a, D_b)
        var = self.s ** 2 + sigma.reshape(-1, 1) ** 2
        logits = torch.stack([-((x - self.a.mu) ** 2).sum(1, keepdim=True), -((x - self.b.mu) ** 2).sum(1, keepdim=True)]) / (2 * var)
        w_a, w_b = torch.softmax(logits, dim=0)
        return w_a * D_a + w_b * D_b


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Preconditioning (Table 1)

def test_preconditioning_constants_match_table_1():
    # sigma = 0.5, sigma_data = 1: sigma^2 + sigma_data^2 = 1.25
    c_skip, c_out, c_in, c_noise = edm_preconditioning(torch.tensor(0.5, dtype=torch.float64), 1.0)
    assert c_skip.item() == pytest.approx(0.8, abs=1e-12)                      # 1 / 1.25
    assert c_out.item() == pytest.approx(0.4472135954999579, abs=1e-12)        # 0.5 / sqrt(1.25)
    assert c_in.item() == pytest.approx(0.8944271909999159, abs=1e-12)         # 1 / sqrt(1.25)
    assert c_noise.item() == pytest.approx(-0.17328679513998632, abs=1e-12)    # ln(0.5) / 4
    # sigma = 2, sigma_data = 0.5: sigma^2 + sigma_data^2 = 4.25
    c_skip, c_out, c_in, c_noise = edm_preconditioning(torch.tensor(2.0, dtype=torch.float64), 0.5)
    assert c_skip.item() == pytest.approx(0.25 / 4.25, abs=1e-12)
    assert c_out.item() == pytest.approx(1.0 / math.sqrt(4.25), abs=1e-12)
    assert c_in.item() == pytest.approx(1.0 / math.sqrt(4.25), abs=1e-12)
    assert c_noise.item() == pytest.approx(math.log(2.0) / 4, abs=1e-12)


class Recorder(torch.nn.Module):
    """F(x_in, c_noise) = 3 x_in + 7 (far from the identity); remembers what it was given."""

    def forward(self, x_in, c_noise, cond=None, cond_mask=None):
        self.x_in, self.c_noise, self.cond, self.cond_mask = x_in, c_noise, cond, cond_mask
        return 3 * x_in + 7


def test_precond_applies_eq_7_per_sample():
    net = EDMPrecond(Recorder(), sigma_data=0.5)
    x = torch.randn(3, 5, generator=gen(0), dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    D = net(x, sigma)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma[:, None], 0.5)
    torch.testing.assert_close(net.model.x_in, (c_in * x).float())
    torch.testing.assert_close(net.model.c_noise, c_noise.reshape(-1).float())
    torch.testing.assert_close(D, c_skip * x + c_out * (3 * (c_in * x).float() + 7).double())
    assert D.dtype == torch.float64  # the skip path keeps the sampler's precision


def test_precond_is_identity_as_sigma_goes_to_zero():
    net = EDMPrecond(Recorder(), sigma_data=1.0)
    x = torch.randn(4, 6, generator=gen(1), dtype=torch.float64)
    D = net(x, 1e-7)
    torch.testing.assert_close(D, x, atol=1e-5, rtol=0)
    c_skip, c_out, _, _ = edm_preconditioning(torch.tensor(1e-7, dtype=torch.float64), 1.0)
    assert c_skip.item() == pytest.approx(1.0, abs=1e-12) and c_out.item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------
# Loss

def test_loss_sigma_is_log_normal():
    loss_fn = EDMLoss(P_mean=-1.2, P_std=1.2)
    ln_sigma = loss_fn.sample_sigma(20000, generator=gen(0)).log()
    assert ln_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert ln_sigma.std().item() == pytest.approx(1.2, rel=0.03)


def test_loss_of_zero_network_is_one_per_element():
    # lambda(sigma) = 1 / c_out^2 makes the effective target of F unit-variant at every sigma when the
    # data has second moment sigma_data^2; a wrong weight or preconditioning breaks this.
    sigma_data = 0.5
    net = EDMPrecond(LatentDenoiser(dim=16, hidden=32, blocks=1, emb_dim=16, noise_channels=8), sigma_data)  # F = 0 at init
    y = sigma_data * torch.randn(4096, 16, generator=gen(0))
    loss_fn = EDMLoss(sigma_data=sigma_data)
    with torch.no_grad():
        per_element = loss_fn(net, y, reduction="none", generator=gen(1))
    assert per_element.shape == y.shape
    assert per_element.mean().item() == pytest.approx(1.0, abs=0.03)
    assert loss_fn.weight(torch.tensor(sigma_data)).item() == pytest.approx(2 / sigma_data ** 2)


def test_loss_drops_condition_with_probability_p_uncond():
    net = EDMPrecond(Recorder())
    y, cond = torch.zeros(8000, 2), torch.ones(8000, 1)
    EDMLoss(p_uncond=0.25)(net, y, cond, generator=gen(0))
    assert net.model.cond is cond
    assert (~net.model.cond_mask).float().mean().item() == pytest.approx(0.25, abs=0.02)
    EDMLoss(p_uncond=0.0)(net, y, cond, generator=gen(0))
    assert bool(net.model.cond_mask.all())
    EDMLoss(p_uncond=0.25)(net, y, None, generator=gen(0))
    assert net.model.cond is None and net.model.cond_mask is None


# ------------------------------------------------------------------------------------------------
# Sampler

def test_sigma_steps_follow_eq_5():
    sigma = edm_sigma_steps(18, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sigma.shape == (19,) and sigma.dtype == torch.float64
    assert sigma[0].item() == pytest.approx(80.0) and sigma[17].item() == pytest.approx(0.002) and sigma[18].item() == 0.0
    assert bool((sigma[1:] < sigma[:-1]).all())
    # sigma_i^(1/rho) is linear in i; rho = 1 spaces sigma itself linearly
    root = sigma[:-1] ** (1 / 7)
    torch.testing.assert_close(root.diff(), torch.full((17,), (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17, dtype=torch.float64))
    torch.testing.assert_close(edm_sigma_steps(5, 1.0, 5.0, rho=1.0)[:-1], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))


def test_heun_sampler_is_second_order_on_exact_gaussian_ode():
    # Deterministic Algorithm 2 integrates the ODE; against its closed-form solution the error must fall
    # ~4x per doubling of steps (Heun), not ~2x (Euler), and be small already at 18 steps.
    D = GaussianDenoiser(torch.linspace(-1, 2, 8), s=0.5)
    noise = torch.randn(500, 8, generator=gen(0))
    exact = D.ode_solution(noise)
    err = {n: (edm_sampler(D, noise, num_steps=n).double() - exact).abs().max().item() for n in (18, 36, 72)}
    assert err[18] < 0.2
    assert err[36] < err[18] / 3 and err[72] < err[36] / 3


@pytest.mark.parametrize("churn", [dict(), dict(S_churn=10.0)], ids=["deterministic", "churn"])
def test_sampler_reproduces_gaussian_mean_and_variance(churn):
    # 18-step Heun inflates the variance of a narrow Gaussian (s << sigma_max) by ~10 % (discretisation,
    # see the test above), so the distribution check uses 64 steps.
    mu, s = torch.linspace(-1, 2, 8), 0.5
    x = edm_sampler(GaussianDenoiser(mu, s), (4000, 8), num_steps=64, generator=gen(3), **churn).double()
    assert (x.mean(0) - mu).abs().max().item() < 0.05
    var_ratio = x.var(0) / s ** 2
    assert var_ratio.mean().item() == pytest.approx(1.0, abs=0.05)
    assert (var_ratio - 1).abs().max().item() < 0.1


def test_sampler_same_seed_same_samples_and_trajectory():
    D = GaussianDenoiser(torch.zeros(4), s=1.0)
    kw = dict(num_steps=8, S_churn=20.0)  # churn noise must come from the generator too
    a = edm_sampler(D, (16, 4), generator=gen(7), **kw)
    b = edm_sampler(D, (16, 4), generator=gen(7), **kw)
    c = edm_sampler(D, (16, 4), generator=gen(8), **kw)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert (a - c).abs().min().item() > 0
    noise = torch.randn(16, 4, generator=gen(7))
    d = edm_sampler(D, noise, generator=gen(9), **kw)
    e = edm_sampler(D, noise, generator=gen(10), **kw)
    assert not torch.equal(d, e)  # same initial noise, different churn noise
    x, traj = edm_sampler(D, noise, num_steps=8, return_trajectory=True)
    assert traj.shape == (9, 16, 4)
    torch.testing.assert_close(traj[0], SIGMA_MAX * noise)
    assert torch.equal(traj[-1], x)


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance

MU_A, MU_B, S_CLASS = torch.full((4,), 1.0), torch.full((4,), -1.0), 0.5


def test_guided_denoise_combines_conditional_and_unconditional_outputs():
    def net(x, sigma, cond=None):  # D_cond = 2, D_uncond = 0.5 everywhere
        return torch.full_like(x, 0.5 if cond is None else 2.0)

    x, sigma, cond = torch.zeros(3, 2), torch.ones(3), torch.ones(3, 1)
    for w in (0.0, 1.0, 3.0, -0.5):
        torch.testing.assert_close(guided_denoise(net, x, sigma, cond, w), torch.full((3, 2), 0.5 + w * 1.5, dtype=torch.float64))
    torch.testing.assert_close(guided_denoise(net, x, sigma, None, 3.0), torch.full((3, 2), 0.5, dtype=torch.float64))


def test_guidance_1_samples_the_conditional_gaussian_per_row():
    D = TwoGaussianDenoiser(MU_A, MU_B, S_CLASS)
    cond = (torch.arange(4000) % 2).float()[:, None]  # rows alternate between class a (1) and b (0)
    x = edm_sampler(D, (4000, 4), num_steps=64, cond=cond, guidance=1.0, generator=gen(0)).double()
    xa, xb = x[cond[:, 0] == 1], x[cond[:, 0] == 0]
    assert (xa.mean(0) - MU_A).abs().max().item() < 0.05
    assert (xb.mean(0) - MU_B).abs().max().item() < 0.05
    assert (xa.var(0) / S_CLASS ** 2).mean().item() == pytest.approx(1.0, abs=0.05)


def test_guidance_moves_samples_towards_the_condition():
    D = TwoGaussianDenoiser(MU_A, MU_B, S_CLASS)
    u = ((MU_A - MU_B) / (MU_A - MU_B).norm()).double()  # from class b towards class a
    ones = torch.ones(2000, 1)

    def along_u(guidance, cond=ones):
        x = edm_sampler(D, (2000, 4), num_steps=32, cond=cond, guidance=guidance, generator=gen(1)).double()
        return x @ u

    unconditional = along_u(0.0)  # the mixture: half the samples on each side
    assert (unconditional > 0).double().mean().item() == pytest.approx(0.5, abs=0.05)
    cond_a, cond_b = along_u(1.0), along_u(1.0, cond=0 * ones)
    assert (cond_a > 0).double().mean().item() > 0.99 and (cond_b < 0).double().mean().item() > 0.99
    assert along_u(3.0).mean().item() > cond_a.mean().item() + 0.1  # w > 1 pushes further away from b


# ------------------------------------------------------------------------------------------------
# Denoiser

def test_denoiser_shapes_condition_and_null_embedding():
    torch.manual_seed(0)
    model = LatentDenoiser(dim=12, hidden=32, blocks=2, cond_dim=4, emb_dim=16, noise_channels=8)
    x, c_noise = torch.randn(6, 12), torch.full((6,), -0.3)
    assert torch.equal(model(x, c_noise), torch.zeros(6, 12))  # zero-initialised output: D = c_skip x
    torch.nn.init.normal_(model.output.weight)
    for block in model.blocks:
        torch.nn.init.normal_(block.linear1.weight, std=0.1)
    cond = scar_condition(burden=torch.linspace(0, 0.5, 6), pattern=["none", "ischemic", "non_ischemic"] * 2)
    mask = torch.tensor([True, False, True, False, True, False])
    out_cond, out_uncond, out_mixed = model(x, c_noise, cond), model(x, c_noise, None), model(x, c_noise, cond, mask)
    assert out_cond.shape == (6, 12)
    torch.testing.assert_close(out_mixed[~mask], out_uncond[~mask])  # dropped rows use the null embedding
    torch.testing.assert_close(out_mixed[mask], out_cond[mask])
    assert (out_cond - out_uncond).abs().amax(1).min().item() > 1e-4  # the condition reaches the output
    assert not torch.allclose(model(x, torch.full((6,), 0.5)), model(x, c_noise))  # so does sigma
    with pytest.raises(ValueError, match="cond must have shape"):
        model(x, c_noise, cond[:, :1])
    with pytest.raises(ValueError, match="unconditional"):
        LatentDenoiser(dim=12, hidden=32, blocks=1)(x, c_noise, cond)


def test_scar_condition_layout():
    cond = scar_condition(burden=[0.0, 0.2, 0.9], pattern=["none", "ischemic", 2])
    assert SCAR_PATTERNS == ("none", "ischemic", "non_ischemic")
    torch.testing.assert_close(cond, torch.tensor([[0.0, 1, 0, 0], [0.2, 0, 1, 0], [0.9, 0, 0, 1]]))
    assert scar_condition(burden=[0.1]).shape == (1, 1) and scar_condition(pattern=[1]).shape == (1, 3)
    with pytest.raises(ValueError, match="fraction"):
        scar_condition(burden=[1.5])


def _toy_latents(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two modes (label 1 at +1.5, label 0 at -1.5) of a 2-D Gaussian mixture in a plane of R^16, offset."""
    q, _ = torch.linalg.qr(torch.randn(16, 2, generator=gen(100)))
    offset = 0.5 * torch.randn(16, generator=gen(101))
    label = torch.randint(0, 2, (n,), generator=generator)
    u = 0.3 * torch.randn(n, 2, generator=generator)
    u[:, 0] += 3.0 * label - 1.5
    return u @ q.T + offset, label


def _train(model, loss_fn, steps, cond_of=None):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g, losses = gen(5), []
    for _ in range(steps):
        y, label = _toy_latents(256, g)
        loss = loss_fn(model, y, None if cond_of is None else cond_of(label), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_training_lowers_loss_and_moves_samples_towards_data():
    data, _ = _toy_latents(4000, gen(0))
    sigma_data = estimate_sigma_data(data)
    torch.manual_seed(0)
    net = EDMPrecond(LatentDenoiser(dim=16, hidden=64, blocks=2, emb_dim=64, noise_channels=32), sigma_data)

    def distance_to_data():
        x = edm_sampler(net, (2000, 16), num_steps=24, generator=gen(1)).double()
        d = data.double()
        return (x.mean(0) - d.mean(0)).norm().item(), (torch.cov(x.T) - torch.cov(d.T)).norm().item()

    mean_before, cov_before = distance_to_data()
    losses = _train(net, EDMLoss(sigma_data=sigma_data), steps=300)
    start, end = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert end < 0.5 * start, (start, end)
    mean_after, cov_after = distance_to_data()
    assert mean_after < 0.5 * mean_before and cov_after < 0.5 * cov_before, (mean_before, mean_after, cov_before, cov_after)


def test_conditional_training_with_guidance_dropout_learns_the_condition():
    pattern = lambda label: scar_condition(pattern=label + 1)  # label 1 -> non_ischemic, 0 -> ischemic
    data, _ = _toy_latents(4000, gen(0))
    sigma_data = estimate_sigma_data(data)
    torch.manual_seed(0)
    net = EDMPrecond(LatentDenoiser(dim=16, hidden=64, blocks=2, cond_dim=3, emb_dim=64, noise_channels=32), sigma_data)
    _train(net, EDMLoss(sigma_data=sigma_data, p_uncond=0.2), steps=300, cond_of=pattern)
    q, _ = torch.linalg.qr(torch.randn(16, 2, generator=gen(100)))
    offset = 0.5 * torch.randn(16, generator=gen(101))

    def mode_coordinate(label, guidance):
        cond = pattern(torch.full((500,), label)) if label is not None else None
        x = edm_sampler(net, (500, 16), num_steps=24, cond=cond, guidance=guidance, generator=gen(2))
        return (x - offset) @ q[:, 0]  # the mode axis: +1.5 for label 1, -1.5 for label 0

    plus, minus = mode_coordinate(1, 1.0), mode_coordinate(0, 1.0)
    assert (plus > 0).float().mean().item() > 0.9 and (minus < 0).float().mean().item() > 0.9
    assert 0.1 < (mode_coordinate(None, 1.0) > 0).float().mean().item() < 0.9  # null embedding: both modes


# ------------------------------------------------------------------------------------------------
# EMA

def _linear_with_weight(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(value)
        layer.bias.fill_(value)
    return layer


def test_ema_with_fixed_decay_lies_between_initial_and_current_weights():
    model = _linear_with_weight(0.0)
    ema = EMA(model, decay=0.9)
    expected = 0.0
    for step in range(1, 11):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update_parameters(model)
        expected = 0.9 * expected + 0.1 * step
    w = ema.module.weight
    assert bool((w > 0).all() and (w < 10).all())
    torch.testing.assert_close(w, torch.full_like(w, expected))
    torch.testing.assert_close(ema.module.bias, torch.zeros(2))  # the bias never moved
    x = torch.randn(4, 3)
    torch.testing.assert_close(ema(x), ema.module(x))


def test_ema_half_life_counts_samples_and_state_round_trips():
    model = _linear_with_weight(0.0)
    ema = EMA(model, halflife_kimg=0.064, batch_size=16, rampup_ratio=None)  # 64 samples = 4 updates
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(4):
        ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, torch.full((2, 3), 0.5))  # the initial weights count half
    restored = EMA(_linear_with_weight(7.0), halflife_kimg=0.064, batch_size=16, rampup_ratio=None)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.module.weight, ema.module.weight) and int(restored.n_averaged) == 5
    # EDM's ramp-up: the half-life is at most rampup_ratio * cur_nimg, so the first update copies the model
    assert ema_beta(500, 64, cur_nimg=0, rampup_ratio=0.05) == 0.0
    assert ema_beta(500, 64, cur_nimg=10 ** 9, rampup_ratio=0.05) == pytest.approx(0.5 ** (64 / 500_000))
    # cur_nimg counts the samples before this step: with batch 1 and ratio 0.5, step 1 (cur_nimg 0) copies,
    # step 2 (cur_nimg 1, half-life 0.5 samples) keeps 0.5^2 = 1/4 of the average
    ramped = EMA(_linear_with_weight(0.0), halflife_kimg=500, batch_size=1, rampup_ratio=0.5)
    ramped.update_parameters(_linear_with_weight(1.0))
    torch.testing.assert_close(ramped.module.weight, torch.full((2, 3), 1.0))
    ramped.update_parameters(_linear_with_weight(2.0))
    torch.testing.assert_close(ramped.module.weight, torch.full((2, 3), 0.25 * 1.0 + 0.75 * 2.0))


# ------------------------------------------------------------------------------------------------
# Standardisation and sigma_data

def test_standardizer_fits_round_trips_and_saves(tmp_path):
    latents = 3.0 + 2.0 * torch.randn(50, 8, generator=gen(0))
    latents[:, 5] = 4.0  # a constant dimension: std floored at eps
    std = LatentStandardizer.fit(latents, eps=1e-6)
    z = std.standardize(latents)
    keep = torch.arange(8) != 5
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, keep].std(0), torch.ones(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(std.destandardize(z), latents, atol=1e-5, rtol=0)
    # RMS of all standardised entries: 7 unit columns (ddof 1 -> (n-1)/n each) and one zero column
    assert estimate_sigma_data(z) == pytest.approx(math.sqrt(7 / 8 * 49 / 50), rel=1e-5)
    path = std.save(tmp_path / "latent_standardizer.safetensors")
    loaded = LatentStandardizer.load(path)
    assert torch.equal(loaded.mean, std.mean) and torch.equal(loaded.std, std.std)
    with pytest.raises(DataError, match="missing.safetensors"):
        LatentStandardizer.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="n >= 2"):
        LatentStandardizer.fit(latents[:1])


def test_span_standardizer_whitens_inside_the_cohorts_span_and_maps_anything_into_it(tmp_path):
    # 12 subjects in 30 dims: they span 11 directions; the 20th dim is a copy of the 3rd (as the in-plane scale dims are)
    latents = torch.randn(12, 30, generator=gen(1)) * torch.linspace(0.5, 3.0, 30) + 1.0
    latents[:, 20] = latents[:, 3]
    std = LatentStandardizer.fit(latents, components="span")
    assert (std.dim, std.out_dim) == (30, 11)
    z = std.standardize(latents)
    torch.testing.assert_close(z.T @ z / 11, torch.eye(11), atol=1e-4, rtol=0)  # whitened, ddof 1
    torch.testing.assert_close(std.destandardize(z), latents, atol=1e-4, rtol=0)  # the cohort lies in its span
    # any model output maps to a vector in the span: it reproduces the training latents' exact relations
    w = std.destandardize(torch.randn(500, 11, generator=gen(2)))
    torch.testing.assert_close(w[:, 20], w[:, 3], atol=1e-4, rtol=0)
    u = (w - latents.mean(0)) / latents.std(0)
    coef = torch.linalg.lstsq(((latents - latents.mean(0)) / latents.std(0)).T, u.T).solution
    torch.testing.assert_close(((latents - latents.mean(0)) / latents.std(0)).T @ coef, u.T, atol=1e-3, rtol=0)
    assert LatentStandardizer.fit(latents, components=4).out_dim == 4
    assert LatentStandardizer.fit(latents, components=50).out_dim == 11
    assert LatentStandardizer.fit(latents).out_dim == 30
    loaded = LatentStandardizer.load(std.save(tmp_path / "span.safetensors"))
    torch.testing.assert_close(loaded.standardize(latents), z)
    with pytest.raises(ValueError, match="components"):
        LatentStandardizer.fit(latents, components="pca")



def test_validation_keeps_the_lowest_loss_as_best(tmp_path):
    """The EDM validator's key metric is a loss. With MONAI's default comparison (greater is better, from
    a best of -1) the first validation stayed "best" however far the loss fell afterwards."""
    from lgesynth.engines.edm import EdmData, EdmValidator
    from lgesynth.inr2vec.latents import Latents, save_latents

    subjects = [{"id": f"t{i}", "section": "training"} for i in range(16)]
    save_latents(tmp_path, Latents(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)), subjects))
    data = EdmData(str(tmp_path))
    net = EDMPrecond(LatentDenoiser(dim=4, hidden=16, blocks=1, emb_dim=8, noise_channels=8), data.sigma_data)
    ema = EMA(net, halflife_kimg=0.5, batch_size=16)
    validator = EdmValidator(data, ema, EDMLoss(sigma_data=data.sigma_data))
    losses = []
    g = torch.Generator().manual_seed(1)
    for epoch, scale in enumerate((3.0, 0.0, 1.0), start=1):  # random weights: a large loss, then ~1 (F = 0), then other
        with torch.no_grad():
            for p in ema.module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
        validator.run(global_epoch=epoch)
        losses.append(validator.state.metrics["val_loss"])
    best = min(range(3), key=losses.__getitem__)
    assert best > 0 and len({round(x, 4) for x in losses}) == 3, losses
    assert validator.state.best_metric == pytest.approx(losses[best]) and validator.state.best_metric_epoch == best + 1


class _EmpiricalDenoiser(torch.nn.Module):
    """The ideal denoiser of the training set itself (Karras et al. eq. 57 on the empirical distribution):
    a fully memorising EDM, whose samples are training points."""

    def __init__(self, y: torch.Tensor):
        super().__init__()
        self.register_buffer("y", y)

    def forward(self, x, sigma, cond=None):
        y = self.y.to(x.dtype)
        w = torch.softmax(-torch.cdist(x, y).square() / (2 * sigma.to(x.dtype).reshape(-1, 1).square()), dim=1)
        return w @ y


class _MeanDenoiser(torch.nn.Module):
    def forward(self, x, sigma, cond=None):
        return torch.zeros_like(x)  # standardised latents: every sample lands on the cohort mean


def test_validation_measures_how_much_the_ema_copies_its_training_latents(tmp_path):
    from types import SimpleNamespace

    from lgesynth.engines.edm import EdmData, EdmValidator
    from lgesynth.inr2vec.latents import Latents, save_latents

    subjects = [{"id": f"t{i}", "section": "training"} for i in range(12)]
    save_latents(tmp_path, Latents(torch.randn(12, 6, generator=torch.Generator().manual_seed(0)), subjects))
    for components in ("all", "span"):  # the measure is taken on latents, whatever space the EDM models
        data = EdmData(str(tmp_path), components=components)
        fractions = {}
        for name, net in (("memorising", _EmpiricalDenoiser(data.z)), ("mean", _MeanDenoiser())):
            validator = EdmValidator(data, SimpleNamespace(module=net), EDMLoss(sigma_data=data.sigma_data),
                                     memorisation_samples=32, memorisation_steps=16)
            validator.run()
            fractions[name] = (validator.state.metrics["val_copy_fraction"], validator.state.metrics["val_nn_ratio"])
        assert fractions["memorising"][0] > 0.9 and fractions["memorising"][1] < 0.05, (components, fractions)
        assert fractions["mean"][0] == 0.0 and fractions["mean"][1] > 0.5, (components, fractions)
    off = EdmValidator(data, SimpleNamespace(module=_MeanDenoiser()), EDMLoss(sigma_data=data.sigma_data), memorisation_samples=0)
    off.run()
    assert "val_copy_fraction" not in off.state.metrics


def test_memorisation_stop_ends_training_with_the_last_ema_below_the_copy_limit(tmp_path):
    from ignite.engine import Engine, Events

    from lgesynth.engines.edm_stop import KEPT_EMA, MemorisationStop

    model = torch.nn.Linear(3, 3)
    ema = EMA(model, decay=0.0)  # follows the model exactly
    fractions = iter([0.0, 0.02, 0.5, 0.01, 0.9, 0.9])  # the 4th validates the restored EMA
    validator = Engine(lambda e, b: None)
    validator.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(val_copy_fraction=next(fractions)))

    def step(engine, _):
        with torch.no_grad():
            model.weight.add_(1.0)  # weight = initial + iteration
        ema.update_parameters(model)

    trainer = Engine(step)
    initial = model.weight.detach().clone()
    stop = MemorisationStop(validator, ema, tmp_path, max_copy_fraction=0.05)
    stop.attach(trainer)  # before the validation, as in train.yaml
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    trainer.run(range(2), max_epochs=10)
    # validations after epochs 1, 2 (kept), 3 (0.5: asks); every rank stops at the end of epoch 4
    assert trainer.state.epoch == 4 and (tmp_path / KEPT_EMA).is_file()
    assert next(fractions) == 0.9 and next(fractions) == 0.9  # epoch 4 validated the restored EMA (0.01): the record keeps step 4
    torch.testing.assert_close(ema.module.weight, initial + 4.0)  # the EMA of iteration 4 (epoch 2) is restored
    assert trainer.state.memorisation_stop == {"max_copy_fraction": 0.05, "stopped": True, "iteration": 4,
                                               "copy_fraction": 0.02, "first_copying_iteration": 6,
                                               "first_copying_fraction": 0.5}
    with pytest.raises(ValueError, match="max_copy_fraction"):
        MemorisationStop(validator, ema, tmp_path, max_copy_fraction=1.5)


# ------------------------------------------------------------------------------------------------
# Scale: log canonical voxel size modelled after the latent

def _latents_with_spacing(folder, n: int = 12, dim: int = 4, spacing: bool = True, validation: int = 0):
    """``n`` training (+ ``validation``) toy latents; subjects alternate between two voxel sizes."""
    from lgesynth.inr2vec.latents import Latents, save_latents

    subjects = []
    for i in range(n + validation):
        s = {"id": f"t{i:02d}", "section": "training" if i < n else "validation"}
        if spacing:
            s["canonical_spacing_mm"] = [1.5, 1.5, 6.0] if i % 2 else [2.5, 2.0, 9.0]
        subjects.append(s)
    save_latents(folder, Latents(torch.randn(n + validation, dim, generator=gen(0)), subjects))
    return folder


def test_edm_data_appends_log_voxel_size_to_the_latent(tmp_path):
    from lgesynth.engines.edm import EdmData

    data = EdmData(str(_latents_with_spacing(tmp_path, validation=2)))
    assert data.scale_dims == 3 and data.dim == 4 + 3 and data.latent_dim == 4 and data.w.shape == (12, 4)
    log_size = torch.log(torch.tensor([[2.5, 2.0, 9.0], [1.5, 1.5, 6.0]])).repeat(6, 1)
    assert torch.allclose(data.x[:, 4:], log_size) and torch.equal(data.x[:, :4], data.w)
    assert data.standardizer.dim == 7 and torch.allclose(data.z.mean(0), torch.zeros(7), atol=1e-5)
    assert torch.allclose(data.z.std(0), torch.ones(7), atol=1e-4)  # per dimension, scale dims included
    assert data.z_val.shape == (2, 7)
    off = EdmData(str(tmp_path), scale=False)
    assert off.scale_dims == 0 and off.dim == 4 and off.spacing_mm is not None  # spacing kept for the reference stats


def test_latents_without_spacing_still_train_and_scale_true_refuses_them(tmp_path):
    from lgesynth.engines.edm import EdmData, EdmTrainer

    _latents_with_spacing(tmp_path, spacing=False)
    data = EdmData(str(tmp_path))  # scale: auto
    assert data.scale_dims == 0 and data.dim == 4 and data.spacing_mm is None
    net = EDMPrecond(LatentDenoiser(dim=data.dim, hidden=16, blocks=1, emb_dim=8, noise_channels=8), data.sigma_data)
    trainer = EdmTrainer(data, net, EMA(net, decay=0.9), torch.optim.Adam(net.parameters(), lr=1e-3),
                         EDMLoss(sigma_data=data.sigma_data), steps=3, epoch_length=3, batch_size=4)
    trainer.run_all()
    assert trainer.state.iteration == 3
    with pytest.raises(DataError, match="scale: true needs canonical_spacing_mm") as err:
        EdmData(str(tmp_path), scale=True)
    assert str(tmp_path / "latents.json") in str(err.value)
    with pytest.raises(ValueError, match="scale must be auto, true or false"):
        EdmData(str(tmp_path), scale="sometimes")


def test_a_bad_voxel_size_is_refused_naming_the_file(tmp_path):
    from lgesynth.engines.edm import EdmData
    from lgesynth.inr2vec.latents import load_latents, save_latents

    lat = load_latents(_latents_with_spacing(tmp_path))
    lat.subjects[3]["canonical_spacing_mm"] = [1.5, -1.0, 6.0]
    save_latents(tmp_path, lat)
    with pytest.raises(DataError, match="t03.*canonical_spacing_mm must be three positive numbers") as err:
        EdmData(str(tmp_path))
    assert str(tmp_path / "latents.json") in str(err.value)


def test_standardizer_head_keeps_the_first_dims():
    std = LatentStandardizer.fit(torch.randn(10, 5, generator=gen(2)) * 3 + 1)
    head = std.head(3)
    w = torch.randn(4, 3, generator=gen(3))
    assert head.dim == 3 and torch.allclose(head.standardize(w), std.standardize(torch.cat([w, torch.zeros(4, 2)], 1))[:, :3])
    with pytest.raises(ValueError, match="k must be in 1..5"):
        std.head(6)


def test_identical_latents_are_refused_naming_the_file(tmp_path):
    """A collapsed encoder (every latent the same) would train an EDM on sigma_data 0 (NaN losses)."""
    from lgesynth.engines.edm import EdmData
    from lgesynth.inr2vec.latents import Latents, save_latents

    same = torch.ones(4, 8)
    save_latents(tmp_path, Latents(same, [{"id": f"s{i}", "section": "training"} for i in range(4)], None, {}))
    with pytest.raises(DataError, match=r"latents.json.*all the same"):
        EdmData(str(tmp_path / "latents.json"))
