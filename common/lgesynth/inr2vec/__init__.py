"""inr2vec (De Luigi et al., ICLR 2023) on lgesynth INR banks: weights -> 512-d latent -> volume.

Modules (one job each):
    encoder   Inr2VecEncoder(spec, latent_dim=512, width=512, depth=3, pool="maxmean"):
              params [w0 (S, in, out), b0 (S, out), ...] -> (S, latent_dim); check_spec(spec),
              fit_standardization(params, per_element=False)
    decoder   ImplicitDecoder(latent_dim=512, hidden=256, layers=5, num_freqs=7):
              (coords (S, P, 3), latent (S, latent_dim)) -> (S, P, 3); decode(...) chunked;
              build_decoder(config, spec, init) for either kind
    siren_decoder SirenDecoder(spec, latent_dim=512, modulation="shift", init=bank init): functa-style
              shift modulations of the bank's SIREN, same call as ImplicitDecoder
    chunking  decode_chunked(decoder, coords, latent, chunk): either decoder over chunks of points
    augment   permute_neurons (function-preserving), add_weight_noise, augment_params
    train     Inr2VecModel(encoder, decoder).loss(params, coords, targets);
              train_step(model, optimizer, batch, augment=None, grad_clip=1.0, bf16=False),
              sample_batch, targets_from_inr, encode_bank(encoder, params | InrBank),
              evaluate(model, params, coords_full, targets_full=None) -> per-subject psnr, dice_myo, dice_scar
    probe     linear_probe_accuracy(latents_train, y_train, latents_test, y_test)
    refine    refine_latents(model, params, latents, coords_full, steps=100, lr=0.1, points=2048): test-time
              Adam on the latents alone (decoder frozen) against each subject's own INR
"""

from lgesynth.inr2vec.augment import add_weight_noise, augment_params, permute_neurons
from lgesynth.inr2vec.decoder import FourierFeatures, ImplicitDecoder, build_decoder
from lgesynth.inr2vec.encoder import Inr2VecEncoder, init_std, weight_rows
from lgesynth.inr2vec.probe import linear_probe_accuracy
from lgesynth.inr2vec.refine import refine_latents
from lgesynth.inr2vec.siren_decoder import SirenDecoder
from lgesynth.inr2vec.train import Inr2VecModel, encode_bank, evaluate, sample_batch, targets_from_inr, train_step

__all__ = [
    "FourierFeatures", "ImplicitDecoder", "Inr2VecEncoder", "Inr2VecModel", "add_weight_noise", "augment_params",
    "SirenDecoder", "build_decoder", "encode_bank", "evaluate", "init_std", "linear_probe_accuracy", "permute_neurons", "refine_latents", "sample_batch",
    "targets_from_inr", "train_step", "weight_rows",
]
