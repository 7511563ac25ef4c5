"""Data: label convention, datalists, phantom cohort, importers, validation, canonical grid."""

from lgesynth.data.labels import BACKGROUND, MYOCARDIUM, SCAR, myocardium_mask, scar_mask  # noqa: F401
from lgesynth.data.datalist import load_datalist, write_datalist  # noqa: F401
