"""The app's tasks: ``infers.ScarSegInfer`` (scar_seg's inference.yaml) and ``synthesis.SyntheticPairs``
(edm_synth's inference.yaml into the datastore). MONAI Label puts the app folder on ``sys.path`` and
imports ``lib`` from there, as in its sample apps."""
