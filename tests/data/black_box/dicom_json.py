"""DICOM series in, JSON out. With $BLACK_BOX_DUMP set, also saves the HU volume and spacing it read."""

import os
import sys
from pathlib import Path

import numpy as np
import pydicom
from _common import score, write_json

slices = [pydicom.dcmread(p) for p in Path(sys.argv[1]).glob("*.dcm")]
slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
row, column = (float(v) for v in slices[0].PixelSpacing)
spacing = (float(slices[1].ImagePositionPatient[2]) - float(slices[0].ImagePositionPatient[2]), row, column)
if os.environ.get("BLACK_BOX_DUMP"):
    dump = Path(os.environ["BLACK_BOX_DUMP"]) / "dicom.npz"
    np.savez(dump, hu=hu, spacing=spacing, modality=slices[0].Modality)
write_json(sys.argv[2], {"probability": score(hu)})
