"""DICOM series in, DICOM SEG out (highdicom): one binary segment of the voxels above 0 HU."""

import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

slices = [pydicom.dcmread(p) for p in Path(sys.argv[1]).glob("*.dcm")]
slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
segment = hd.seg.SegmentDescription(
    segment_number=1,
    segment_label="dense",
    segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
    segmented_property_type=codes.SCT.Lesion,
    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    algorithm_identification=hd.AlgorithmIdentificationSequence(
        name="threshold", family=codes.cid7162.ArtificialIntelligence, version="1"
    ),
)
seg = hd.seg.Segmentation(
    source_images=slices,
    pixel_array=hu > 0,
    segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
    segment_descriptions=[segment],
    series_instance_uid=hd.UID(),
    series_number=2,
    sop_instance_uid=hd.UID(),
    instance_number=1,
    manufacturer="test",
    manufacturer_model_name="threshold",
    software_versions="1",
    device_serial_number="0",
)
seg.save_as(sys.argv[2])
