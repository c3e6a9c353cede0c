"""NIfTI in, a NIfTI mask of half the input's slices out: the wrong shape."""

import sys

import numpy as np
import SimpleITK as sitk

array = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[1]))
half = np.zeros((array.shape[0] // 2, *array.shape[1:]), dtype=np.uint8)
sitk.WriteImage(sitk.GetImageFromArray(half), sys.argv[2])
