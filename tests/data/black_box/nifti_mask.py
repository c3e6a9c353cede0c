"""NIfTI in, NIfTI mask out (voxels above 0 HU), same geometry; a batch folder gives one mask per case."""

import sys
from pathlib import Path

import SimpleITK as sitk


def mask(source: Path, target: Path) -> None:
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(sitk.Cast(image > 0, sitk.sitkUInt8), str(target))


source, output = Path(sys.argv[1]), Path(sys.argv[2])
if source.is_dir():
    for path in sorted(source.iterdir()):
        mask(path, output / path.name)
else:
    mask(source, output)
