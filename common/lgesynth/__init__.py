"""lgesynth: synthetic cardiac LGE MRI volumes with myocardium and scar masks.

Pipeline: ``inr_fit`` (one SIREN per subject) -> ``inr2vec`` (weights -> 512-d
latent) -> ``edm_synth`` (EDM on latents, decoded to image + label) -> ``scar_seg`` (DynUNet,
real +/- synthetic). Shared components live in the sub-packages; the bundles under ``bundles/``
wire them together by ``_target_``.
"""

__version__ = "0.1.0"

from lgesynth.errors import DataError  # noqa: F401  (re-exported for configs: $lgesynth.DataError)
