"""Export phantom cases as NIfTI volumes (SimpleITK) or DICOM CT series (pydicom).

Geometry. A case's voxel ``(k, j, i)`` (axes D, H, W) has its centre at ``z = (k - (D-1)/2) sz``,
``y = (j - (H-1)/2) sy``, ``x = (i - (W-1)/2) sx`` mm. The phantom's axes are the DICOM patient
axes (LPS): +x towards the patient's left, +y posterior, +z superior, so the direction cosines
are the identity and the origin is the centre of voxel ``(0, 0, 0)``. NIfTI files written by
SimpleITK store the same geometry (converted to RAS in the header by ITK).

DICOM. One CT Image Storage object per axial slice, with Image Position/Orientation (Patient),
Pixel Spacing (row, column), Slice Thickness, Rescale Intercept -1024 / Slope 1 (stored values are
HU + 1024, rounded, clipped to [0, 4095]). Every UID is derived from ``(scenario seed, case index,
role, slice)`` with :func:`pydicom.uid.generate_uid`'s entropy sources, so an export is
reproducible byte for byte. A positive case's lesion mask is also written as a binary DICOM
Segmentation (highdicom) referencing the CT slices; its segment is labelled as produced by the
phantom generator (a private coding scheme, ``99PHSTRS``), since it is the reference standard by
construction rather than the output of a segmentation algorithm.

SimpleITK, pydicom and highdicom are imported on use, so the rest of the package does not need them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from phantoms.base import CaseBatch

HU_OFFSET = 1024  # stored value = HU + 1024 (Rescale Intercept -1024)
STUDY_DATE = "20000101"  # synthetic data: a fixed, obviously artificial date keeps exports reproducible


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
    }


def export_nifti(batch: CaseBatch, out_dir: Path) -> list[Path]:
    """Write ``case-NNNNNN/{image,mask}.nii.gz`` and ``case.json`` per case; return the case folders."""
    import SimpleITK as sitk

    folders = []
    for b in range(batch.image.shape[0]):
        folder = out_dir / f"case-{batch.case_index[b]:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        image = batch.image[b, 0].detach().cpu().numpy().astype(np.float32)
        mask = batch.mask[b, 0].detach().cpu().numpy().astype(np.uint8)
        sitk.WriteImage(_sitk_image(image, batch), str(folder / "image.nii.gz"), useCompression=True)
        sitk.WriteImage(_sitk_image(mask, batch), str(folder / "mask.nii.gz"), useCompression=True)
        (folder / "case.json").write_text(json.dumps(_case_record(batch, b), indent=2, sort_keys=True) + "\n")
        folders.append(folder)
    return folders


def _uid(seed: int, case_index: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["phantom-stress", str(seed), str(case_index), *map(str, parts)])


def _ct_slice(batch: CaseBatch, b: int, k: int, stored: np.ndarray, seed: int) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    case = batch.case_index[b]
    geometry = case_geometry(batch)
    sx, sy, sz = geometry["spacing"]
    x0, y0, z0 = geometry["origin"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(seed, case, "ct", k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"Phantom^{case:06d}"
    ds.PatientID = f"PS-{seed}-{case:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = {"female": "F", "male": "M"}.get(batch.attributes[b].get("sex", ""), "O")
    ds.StudyInstanceUID = _uid(seed, case, "study")
    ds.SeriesInstanceUID = _uid(seed, case, "ct-series")
    ds.FrameOfReferenceUID = _uid(seed, case, "frame")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = STUDY_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "phantom-stress synthetic chest CT"
    ds.Manufacturer = "phantom-stress"
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = k + 1
    ds.PatientPosition = "FFS"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
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
    ds.RescaleIntercept = str(-HU_OFFSET)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _segmentation(batch: CaseBatch, b: int, slices: list[Any], seed: int) -> Any:
    """Binary DICOM SEG of case ``b``'s lesion mask over its CT ``slices`` (fixed dates, seeded UIDs)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    case = batch.case_index[b]
    generator = hd.sr.CodedConcept("PHANTOM", "99PHSTRS", "Synthetic phantom reference standard")
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="phantom-stress chest_ct", family=generator, version="1"
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
        manufacturer_model_name="chest_ct",
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
    """Write each case's CT series, its lesion SEG (positive cases) and ``case.json``.

    Layout: ``case-NNNNNN/ct/slice-NNNN.dcm`` (one CT object per axial slice), ``case-NNNNNN/seg.dcm``.
    """
    folders = []
    for b in range(batch.image.shape[0]):
        folder = out_dir / f"case-{batch.case_index[b]:06d}"
        (folder / "ct").mkdir(parents=True, exist_ok=True)
        hu = batch.image[b, 0].detach().cpu().numpy()
        stored = np.clip(np.rint(hu + HU_OFFSET), 0, 4095).astype(np.uint16)
        slices = []
        for k in range(stored.shape[0]):
            ds = _ct_slice(batch, b, k, stored[k], seed)
            ds.save_as(folder / "ct" / f"slice-{k:04d}.dcm", enforce_file_format=True)
            slices.append(ds)
        if bool(batch.mask[b].any()):
            _segmentation(batch, b, slices, seed).save_as(folder / "seg.dcm", enforce_file_format=True)
        (folder / "case.json").write_text(json.dumps(_case_record(batch, b), indent=2, sort_keys=True) + "\n")
        folders.append(folder)
    return folders
