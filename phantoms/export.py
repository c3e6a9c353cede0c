"""Export phantom cases as NIfTI volumes (SimpleITK) or DICOM CT / MR series (pydicom).

Geometry. A case's voxel ``(k, j, i)`` (axes D, H, W) has its centre at ``z = (k - (D-1)/2) sz``,
``y = (j - (H-1)/2) sy``, ``x = (i - (W-1)/2) sx`` mm. The phantom's axes are the DICOM patient
axes (LPS): +x towards the patient's left, +y posterior, +z superior, so the direction cosines
are the identity and the origin is the centre of voxel ``(0, 0, 0)``. NIfTI files written by
SimpleITK store the same geometry (converted to RAS in the header by ITK).

DICOM. One image object per axial slice: CT Image Storage for CT (stored value = HU + 1024, rounded,
clipped to [0, 4095]; Rescale Intercept -1024, Slope 1), MR Image Storage for MR (stored value =
``round(signal / slope)`` in 12 bits with a per-case ``slope`` = the case's largest signal / 4000
rounded up to 4 significant digits, written as Rescale Slope with Intercept 0, so that the signal is
``slope * stored``; plus the acquisition: sequence, TR, TE, TI, flip angle, field strength and
imaging frequency). Both carry Image Position/Orientation (Patient), Pixel Spacing (row, column) and
Slice Thickness. Every UID is derived from ``(scenario seed, case index, role, slice)`` with
:func:`pydicom.uid.generate_uid`'s entropy sources and dates are fixed, so an export is reproducible
byte for byte. A positive case's lesion mask is also written as a binary DICOM Segmentation
(highdicom) referencing the slices; its segment is labelled as produced by the phantom generator (a
private coding scheme, ``99PHSTRS``), since it is the reference standard by construction rather than
the output of a segmentation algorithm.

SimpleITK, pydicom and highdicom are imported on use, so the rest of the package does not need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from phantoms.base import CaseBatch

HU_OFFSET = 1024  # CT: stored value = HU + 1024 (Rescale Intercept -1024)
MR_FULL_SCALE = 4000  # MR: the case's largest signal is stored as about this value (12 bits: <= 4095)
STUDY_DATE = "20000101"  # synthetic data: a fixed, obviously artificial date keeps exports reproducible
GAMMA_MHZ_PER_T = 42.577478  # proton gyromagnetic ratio / 2 pi, MHz/T
BODY_PARTS = {"chest_ct": "CHEST", "brain_mri": "HEAD", "liver_ct": "ABDOMEN"}
BODY_PART_WORDS = {"chest": "CHEST", "lung": "CHEST", "brain": "HEAD", "head": "HEAD", "liver": "ABDOMEN"}
SEGMENTS = {  # lesion type -> segment label and SNOMED-CT property type (pydicom codes.SCT name)
    "solid": ("nodule", "Nodule"),
    "part_solid": ("nodule", "Nodule"),
    "ground_glass": ("nodule", "Nodule"),
    "wmh": ("white matter hyperintensity", "Lesion"),
    "tumour": ("tumour", "Neoplasm"),
}


def body_part(generator: str) -> str:
    """DICOM Body Part Examined of a generator: its table entry, else a keyword of its name, else ``""``."""
    if generator in BODY_PARTS:
        return BODY_PARTS[generator]
    words = generator.lower().split("_")
    return next((part for word, part in BODY_PART_WORDS.items() if word in words), "")


def case_geometry(batch: CaseBatch) -> dict[str, tuple[float, float, float]]:
    """Origin (centre of the first voxel) and spacing in (x, y, z) order, mm."""
    d, h, w = batch.image.shape[2:]
    sz, sy, sx = batch.spacing_mm
    origin = (-(w - 1) / 2 * sx, -(h - 1) / 2 * sy, -(d - 1) / 2 * sz)
    return {"origin": origin, "spacing": (sx, sy, sz)}


def _sitk_image(array: np.ndarray, batch: CaseBatch) -> Any:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)  # numpy (D, H, W) -> ITK (x=W, y=H, z=D)
    geometry = case_geometry(batch)
    image.SetSpacing(geometry["spacing"])
    image.SetOrigin(geometry["origin"])
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _case_record(batch: CaseBatch, b: int) -> dict[str, Any]:
    return {
        "case_index": batch.case_index[b],
        "label": batch.label[b],
        "attributes": batch.attributes[b],
        "lesions": list(batch.lesions[b]) if batch.lesions else [],
        "spacing_mm_zyx": list(batch.spacing_mm),
        "modality": batch.modality,
        "generator": batch.generator,
        "organ_names": list(batch.organ_names),
        "acquisition": batch.acquisition[b] if batch.acquisition else None,
    }


def _write_record(folder: Path, batch: CaseBatch, b: int) -> None:
    (folder / "case.json").write_text(json.dumps(_case_record(batch, b), indent=2, sort_keys=True) + "\n")


def export_nifti(batch: CaseBatch, out_dir: Path) -> list[Path]:
    """Write ``case-NNNNNN/{image,mask,organs}.nii.gz`` and ``case.json`` per case; return the case folders.

    ``organs.nii.gz`` (uint8 label map, names in ``case.json``) is written when the batch has one.
    """
    import SimpleITK as sitk

    folders = []
    for b in range(batch.image.shape[0]):
        folder = out_dir / f"case-{batch.case_index[b]:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        volumes = {
            "image": batch.image[b, 0].detach().cpu().numpy().astype(np.float32),
            "mask": batch.mask[b, 0].detach().cpu().numpy().astype(np.uint8),
        }
        if batch.organs is not None:
            volumes["organs"] = batch.organs[b, 0].detach().cpu().numpy().astype(np.uint8)
        for name, array in volumes.items():
            sitk.WriteImage(_sitk_image(array, batch), str(folder / f"{name}.nii.gz"), useCompression=True)
        _write_record(folder, batch, b)
        folders.append(folder)
    return folders


def _uid(seed: int, case_index: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["phantom-stress", str(seed), str(case_index), *map(str, parts)])


def _series_name(batch: CaseBatch) -> str:
    """``chest_ct`` -> ``chest CT``: the generator's name as a series description."""
    words = batch.generator.split("_") if batch.generator else [batch.modality]
    return " ".join(w.upper() if w in ("ct", "mr", "mri") else w for w in words)


def _image_slice(batch: CaseBatch, b: int, k: int, stored: np.ndarray, seed: int, sop_class: str) -> Any:
    """A slice's patient, study, series, frame of reference, equipment, image plane and pixel attributes.

    Shared by CT and MR; the modality's own attributes are added by :func:`_ct_slice` / :func:`_mr_slice`.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    case, role = batch.case_index[b], batch.modality.lower()
    geometry = case_geometry(batch)
    sx, sy, sz = geometry["spacing"]
    x0, y0, z0 = geometry["origin"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(seed, case, role, k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"Phantom^{case:06d}"
    ds.PatientID = f"PS-{seed}-{case:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = {"female": "F", "male": "M"}.get(batch.attributes[b].get("sex", ""), "O")
    ds.StudyInstanceUID = _uid(seed, case, "study")
    ds.SeriesInstanceUID = _uid(seed, case, f"{role}-series")
    ds.FrameOfReferenceUID = _uid(seed, case, "frame")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = batch.modality
    part = body_part(batch.generator)
    if part:
        ds.BodyPartExamined = part
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"phantom-stress synthetic {_series_name(batch)}"
    ds.Manufacturer = "phantom-stress"
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = k + 1
    ds.PatientPosition = "HFS" if part == "HEAD" else "FFS"
    ds.ImagePositionPatient = [f"{x0:.6f}", f"{y0:.6f}", f"{z0 + k * sz:.6f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (between rows, along y), column spacing
    ds.SliceThickness = f"{sz:.6f}"
    ds.SliceLocation = f"{z0 + k * sz:.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.AcquisitionNumber = 1
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _ct_slice(batch: CaseBatch, b: int, k: int, stored: np.ndarray, seed: int) -> Any:
    from pydicom.uid import CTImageStorage

    ds = _image_slice(batch, b, k, stored, seed, CTImageStorage)
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ""
    return ds


def mr_scale(signal: np.ndarray) -> str:
    """Rescale Slope (DS string) of an MR case: its largest signal / :data:`MR_FULL_SCALE`, 4 digits.

    Rounding to 4 significant digits moves the slope by at most 0.05%, so stored values stay below 4095.
    """
    return f"{max(float(signal.max()), 1e-12) / MR_FULL_SCALE:.4g}"


def _mr_slice(batch: CaseBatch, b: int, k: int, stored: np.ndarray, seed: int, slope: str) -> Any:
    from pydicom.uid import MRImageStorage

    acq = batch.acquisition[b]
    family = acq["family"]
    ds = _image_slice(batch, b, k, stored, seed, MRImageStorage)
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.ScanningSequence = {"SE": "SE", "GRE": "GR", "IR": ["IR", "SE"]}[family]
    ds.SequenceVariant = "SP" if family == "GRE" else "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D" if family == "GRE" else "2D"
    ds.SequenceName = f"phantom_{acq['sequence']}_{family}"
    ds.AngioFlag = "N"
    ds.RepetitionTime = f"{acq['tr_ms']:g}"
    ds.EchoTime = f"{acq['te_ms']:g}"
    if family == "IR":
        ds.InversionTime = f"{acq['ti_ms']:g}"
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = "1"
    ds.FlipAngle = f"{acq['flip_deg']:g}"
    ds.MagneticFieldStrength = f"{acq['field_strength_t']:g}"
    ds.ImagingFrequency = f"{GAMMA_MHZ_PER_T * acq['field_strength_t']:.6f}"
    ds.ImagedNucleus = "1H"
    ds.SpacingBetweenSlices = ds.SliceThickness
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = slope
    return ds


def _segmentation(batch: CaseBatch, b: int, slices: list[Any], seed: int) -> Any:
    """Binary DICOM SEG of case ``b``'s lesion mask over its image ``slices`` (fixed dates, seeded UIDs)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    case = batch.case_index[b]
    kind = batch.lesions[b][0].get("type", "") if batch.lesions and batch.lesions[b] else ""
    label, code = SEGMENTS.get(kind, ("lesion", "Lesion"))
    generator = hd.sr.CodedConcept("PHANTOM", "99PHSTRS", "Synthetic phantom reference standard")
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=getattr(codes.SCT, code),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"phantom-stress {batch.generator}", family=generator, version="1"
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=batch.mask[b, 0].detach().cpu().numpy().astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=_uid(seed, case, "seg-series"),
        series_number=2,
        sop_instance_uid=_uid(seed, case, "seg"),
        instance_number=1,
        manufacturer="phantom-stress",
        manufacturer_model_name=batch.generator or batch.modality,
        software_versions="phantom-stress",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    # highdicom draws a random dimension-organisation UID and stamps its contribution with the time:
    # replace both so that the same case exports to the same bytes.
    dimension_uid = _uid(seed, case, "seg-dimensions")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = STUDY_DATE + "000000"
    for keyword in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if keyword in seg:
            setattr(seg, keyword, STUDY_DATE)
    for keyword in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if keyword in seg:
            setattr(seg, keyword, "000000")
    return seg


def export_dicom(batch: CaseBatch, out_dir: Path, seed: int) -> list[Path]:
    """Write each case's image series, its lesion SEG (positive cases) and ``case.json``.

    Layout: ``case-NNNNNN/ct/slice-NNNN.dcm`` (CT) or ``case-NNNNNN/mr/slice-NNNN.dcm`` (MR), one object
    per axial slice, and ``case-NNNNNN/seg.dcm``.
    """
    if batch.modality not in ("CT", "MR"):
        raise ValueError(
            f"modality is not supported for DICOM export (expected CT or MR, got {batch.modality!r})"
        )
    folders = []
    for b in range(batch.image.shape[0]):
        folder = out_dir / f"case-{batch.case_index[b]:06d}"
        series = folder / batch.modality.lower()
        series.mkdir(parents=True, exist_ok=True)
        values = batch.image[b, 0].detach().cpu().numpy()
        if batch.modality == "CT":
            stored = np.clip(np.rint(values + HU_OFFSET), 0, 4095).astype(np.uint16)
            slices = [_ct_slice(batch, b, k, stored[k], seed) for k in range(stored.shape[0])]
        else:
            slope = mr_scale(values)
            stored = np.clip(np.rint(values / float(slope)), 0, 4095).astype(np.uint16)
            slices = [_mr_slice(batch, b, k, stored[k], seed, slope) for k in range(stored.shape[0])]
        for k, ds in enumerate(slices):
            ds.save_as(series / f"slice-{k:04d}.dcm", enforce_file_format=True)
        if bool(batch.mask[b].any()):
            _segmentation(batch, b, slices, seed).save_as(folder / "seg.dcm", enforce_file_format=True)
        _write_record(folder, batch, b)
        folders.append(folder)
    return folders
