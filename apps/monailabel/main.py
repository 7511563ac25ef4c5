"""lgesynth's MONAI Label app: scar_seg segments an uploaded LGE volume, edm_synth adds synthetic pairs.

    monailabel start_server --app apps/monailabel --studies DATASTORE \
        --conf scar_seg_train_dir runs/scar_seg_real --conf edm_synth bundles/edm_synth

``--conf`` keys (paths relative to the working directory; defaults relative to this repository):

    scar_seg            scar_seg bundle folder (configs/)                    default bundles/scar_seg
    scar_seg_train_dir  models/{model.pt,plan.json}: the bundle or a run    default <scar_seg> (a packed bundle)
    edm_synth           edm_synth bundle folder with a trained models/       default bundles/edm_synth
    synthetic_samples   samples per generator request without num_samples    default 8

Tasks: infer model ``scar_seg`` (``lib.infers.ScarSegInfer``) and scoring method ``edm_synth``
(``lib.synthesis.SyntheticPairs``). A task whose files are missing is left out with a warning naming
them, so the app also serves one of the two.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lib.infers import ScarSegInfer
from lib.synthesis import SyntheticPairs

import lgesynth
from monailabel.interfaces.app import MONAILabelApp

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SCAR_SEG, EDM_SYNTH = "scar_seg", "edm_synth"


def _ready(task: str, needed: list[Path], what_to_do: str) -> bool:
    """Whether every file a task needs is there; if not, a warning that names the missing ones."""
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        logger.warning(f"{task} left out, missing: {missing}; {what_to_do}")
    return not missing


class LgesynthApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.scar_seg = Path(conf.get("scar_seg", REPO / "bundles" / SCAR_SEG)).resolve()
        self.train_dir = Path(conf.get("scar_seg_train_dir", self.scar_seg)).resolve()
        self.edm_synth = Path(conf.get("edm_synth", REPO / "bundles" / EDM_SYNTH)).resolve()
        self.synthetic_samples = int(conf.get("synthetic_samples", 8))
        self.scoring_names: list[str] = []  # set by init_scoring_methods (MONAI Label may not call it)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="lgesynth",
                         description="LGE scar segmentation (scar_seg) and synthetic LGE image + label pairs (edm_synth)",
                         version=lgesynth.__version__)

    def init_infers(self) -> dict:
        needed = [self.scar_seg / "configs" / "inference.yaml", self.train_dir / "models" / "plan.json",
                  self.train_dir / "models" / "model.pt"]
        if not _ready(f"infer model {SCAR_SEG}", needed,
                      "train the scar_seg bundle and pass its output_dir with --conf scar_seg_train_dir DIR"):
            return {}
        return {SCAR_SEG: ScarSegInfer(self.scar_seg, self.train_dir)}

    def init_scoring_methods(self) -> dict:
        """The scoring methods (their names are kept in ``scoring_names``)."""
        needed = [self.edm_synth / "configs" / "inference.yaml", self.edm_synth / "models" / "generator.json"]
        methods = {}
        if _ready(f"scoring method {EDM_SYNTH}", needed, "train the edm_synth bundle (or download a packed "
                  "one) and pass its folder with --conf edm_synth DIR"):
            methods[EDM_SYNTH] = SyntheticPairs(self.edm_synth, self.synthetic_samples)
        self.scoring_names = list(methods)
        return methods

    def async_scoring(self, method, params=None):
        """MONAI Label runs every scoring method by itself (at start, after training, after next-sample);
        the generator runs only when asked for by name (``POST /scoring/edm_synth``)."""
        if method:
            return super().async_scoring(method, params)
        return {m: super().async_scoring(m, params) for m in self.scoring_names if m != EDM_SYNTH}
