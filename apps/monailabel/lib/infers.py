"""scar_seg as a MONAI Label infer task: one LGE volume in, its label (0 / 1 myocardium / 2 scar) out.

The task runs the bundle's own ``configs/inference.yaml``: its ``preprocessing``, ``network_def`` (built
from the training run's ``plan.json``), ``inferer`` and ``postprocessing`` (softmax, ``Invertd`` back
through the resampling and the slice-last reorientation onto the input's grid, argmax), without the
``SaveImaged``: MONAI Label's writer saves the label and the server sends it back.

Why ``BasicInferTask`` and not MONAI Label's ``BundleInferTask``: the bundle task's module imports
``monailabel.transform.post``, which imports torchvision, which this project does not install (it would
replace the CPU torch); and scar_seg's network needs the ``models/plan.json`` beside ``models/model.pt``
to be built. This class does what ``BundleInferTask`` does for these keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import CastToTyped, SaveImaged, SqueezeDimd

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from lgesynth.io import read_json


class ScarSegInfer(BasicInferTask):
    """The scar_seg bundle's ``inference.yaml`` for MONAI Label.

    Args:
        bundle_dir: the scar_seg bundle folder (``configs/inference.yaml``, ``configs/metadata.json``).
        train_dir: the scar_seg bundle folder itself or a training ``output_dir``: ``models/model.pt`` and
            ``models/plan.json`` (written at the end of training); the other ``models/model_*.pt`` of a
            training run (``model_best.pt``, ``model_final.pt``) can be picked per request (``model_filename``).
    """

    def __init__(self, bundle_dir: str | Path, train_dir: str | Path):
        configs = Path(bundle_dir) / "configs"
        self.parser = ConfigParser()
        self.parser.read_config(str(configs / "inference.yaml"))
        self.parser.update({"bundle_root": str(bundle_dir), "train_dir": str(train_dir)})
        meta = read_json(configs / "metadata.json")
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        weights = Path(self.parser.get_parsed_content("ckpt_path"))
        super().__init__(
            path=str(weights),
            network=self.parser.get_parsed_content("network_def"),
            type=InferType.SEGMENTATION,
            labels={name: int(k) for k, name in channels.items() if int(k) > 0},
            dimension=3,
            description=meta["description"],
            # MONAI Label's per-request choice of weights file; the first one is the default
            config={"model_filename": [weights.name, *sorted(p.name for p in weights.parent.glob("model_*.pt")
                                                             if p.name != weights.name)]},
        )
        self.version = meta["version"]

    def info(self) -> dict:
        return {**super().info(), "version": self.version}

    def pre_transforms(self, data=None) -> list:
        # the same instances as in the config's postprocessing, whose Invertd undoes them
        return list(self.parser.get_parsed_content("preprocessing").transforms)

    def run_pre_transforms(self, data: dict, transforms) -> dict:
        # MONAI 1.6's Spacingd copies the image's metadata into every "image_*" key of a NIfTI's dict, and
        # MONAI Label keeps the input's path there as the string "image_path" (its writer reads the
        # extension from it): keep the path aside while the transforms run
        path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if path is not None:
            data["image_path"] = path
        return data

    def inferer(self, data=None):
        return self.parser.get_parsed_content("inferer")

    def post_transforms(self, data=None) -> list:
        post = [t for t in self.parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)]
        # (1, H, W, D) -> (H, W, D) uint8 for MONAI Label's writer
        return post + [SqueezeDimd(keys="pred", dim=0), CastToTyped(keys="pred", dtype=np.uint8)]
