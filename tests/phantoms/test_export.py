import hashlib
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from phantoms.brain_mri import BrainMRISpec, generate_brain_mri
from phantoms.chest_ct import ChestCTSpec, generate_chest_ct
from phantoms.export import MR_FULL_SCALE, body_part, case_geometry, export_dicom, export_nifti
from phantoms.population import PopulationSpec

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("pydicom")

SPEC = ChestCTSpec(shape=(12, 40, 48), spacing_mm=(10.0, 8.0, 7.0), vessel_generations=2)


@pytest.fixture(scope="module")
def batch():
    return generate_chest_ct(SPEC, PopulationSpec(prevalence=1.0), 5, [0, 1], torch.device("cpu"))


def _check_geometry(image, batch):
    geometry = case_geometry(batch)
    np.testing.assert_allclose(image.GetSpacing(), geometry["spacing"], atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), geometry["origin"], atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6)


def test_nifti_round_trip_keeps_geometry_values_and_mask(tmp_path, batch):
    folders = export_nifti(batch, tmp_path)
    image = sitk.ReadImage(str(folders[1] / "image.nii.gz"))
    _check_geometry(image, batch)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), batch.image[1, 0].numpy())
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folders[1] / "mask.nii.gz")))
    np.testing.assert_array_equal(mask.astype(bool), batch.mask[1, 0].numpy())
    # the lesion centre recorded in mm maps to a voxel inside the mask through the file's own geometry
    z, y, x = batch.lesions[1][0]["centre_mm"]
    i, j, k = image.TransformPhysicalPointToIndex((x, y, z))
    assert mask[k, j, i] == 1


def test_dicom_series_reads_back_with_geometry_and_hu(tmp_path, batch):
    folders = export_dicom(batch, tmp_path, seed=5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folders[0] / "ct")))
    image = reader.Execute()
    _check_geometry(image, batch)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    assert np.abs(hu - batch.image[0, 0].numpy()).max() <= 1.0


def test_dicom_export_is_reproducible_and_uids_are_valid(tmp_path, batch):
    import pydicom

    a = export_dicom(batch, tmp_path / "a", seed=5)[0] / "ct" / "slice-0003.dcm"
    b = export_dicom(batch, tmp_path / "b", seed=5)[0] / "ct" / "slice-0003.dcm"
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    ds = pydicom.dcmread(a)
    other = pydicom.dcmread(tmp_path / "a" / "case-000001" / "ct" / "slice-0003.dcm")
    for uid in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert ds[uid].value.is_valid and ds[uid].value != other[uid].value
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def test_lesion_segmentation_reads_back_and_is_reproducible(tmp_path, batch):
    hd = pytest.importorskip("highdicom")
    a = export_dicom(batch, tmp_path / "a", seed=5)[0] / "seg.dcm"
    b = export_dicom(batch, tmp_path / "b", seed=5)[0] / "seg.dcm"
    assert a.read_bytes() == b.read_bytes()
    seg = hd.seg.segread(a)
    assert seg.SegmentSequence[0].SegmentLabel == "nodule"
    # frames hold the mask's non-empty slices, in slice order, each tied to its CT slice by position
    mask = batch.mask[0, 0].numpy()
    slices = [k for k in range(mask.shape[0]) if mask[k].any()]
    frames = seg.pixel_array.reshape(len(slices), *mask.shape[1:]).astype(bool)
    z0 = case_geometry(batch)["origin"][2]
    positions = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    order = np.argsort(positions)
    np.testing.assert_allclose(
        np.array(positions)[order], [z0 + k * SPEC.spacing_mm[0] for k in slices], atol=1e-4
    )
    np.testing.assert_array_equal(frames[order], mask[slices])


def _check_dciodvfy(folder, series):
    """dciodvfy reports no errors on the first slices of ``series`` and on the SEG (skipped without it)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed; `make test` installs it where apt-get works")
    for path in [*sorted((folder / series).glob("*.dcm"))[:3], folder / "seg.dcm"]:
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        report = out.stdout + out.stderr
        assert "Error" not in report, report


def test_dciodvfy_reports_no_errors(tmp_path, batch):
    _check_dciodvfy(export_dicom(batch, tmp_path, seed=5)[0], "ct")


# --- MR (brain_mri) ---------------------------------------------------------------------------------

MR_SPEC = BrainMRISpec(shape=(16, 40, 40), spacing_mm=(10.0, 6.0, 6.0), sequence="FLAIR")


@pytest.fixture(scope="module")
def mr_batch():
    pop = PopulationSpec(
        prevalence=1.0, attributes={"lesion_type": {"tumour": 1.0}, "lesion_size": {"large": 1.0}}
    )
    return generate_brain_mri(MR_SPEC, pop, 5, [0, 1], torch.device("cpu"))


def test_mr_dicom_series_reads_back_with_geometry_and_signal(tmp_path, mr_batch):
    import pydicom

    folder = export_dicom(mr_batch, tmp_path, seed=5)[1]
    assert not (folder / "ct").exists()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder / "mr")))
    image = reader.Execute()
    _check_geometry(image, mr_batch)
    signal = mr_batch.image[1, 0].numpy()
    slope = float(pydicom.dcmread(folder / "mr" / "slice-0000.dcm").RescaleSlope)
    assert slope == pytest.approx(signal.max() / MR_FULL_SCALE, rel=1e-3)
    # stored = round(signal / slope): the read-back signal is within half a quantisation step
    assert np.abs(sitk.GetArrayFromImage(image) - signal).max() <= 0.5 * slope + 1e-7


def test_mr_dicom_carries_the_acquisition(tmp_path, mr_batch):
    import pydicom

    ds = pydicom.dcmread(export_dicom(mr_batch, tmp_path, seed=5)[0] / "mr" / "slice-0004.dcm")
    acq = mr_batch.acquisition[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert ds.Modality == "MR" and ds.BodyPartExamined == "HEAD" and ds.PatientPosition == "HFS"
    assert list(ds.ScanningSequence) == ["IR", "SE"] and ds.SequenceVariant == "NONE"
    assert ds.MRAcquisitionType == "2D" and ds.ImagedNucleus == "1H" and ds.EchoTrainLength == 1
    assert float(ds.RepetitionTime) == acq["tr_ms"] and float(ds.EchoTime) == acq["te_ms"]
    assert float(ds.InversionTime) == acq["ti_ms"] and float(ds.FlipAngle) == acq["flip_deg"]
    assert float(ds.MagneticFieldStrength) == acq["field_strength_t"]
    assert float(ds.ImagingFrequency) == pytest.approx(42.577478 * acq["field_strength_t"], abs=1e-5)
    assert ds.SeriesDescription == "phantom-stress synthetic brain MRI"
    assert float(ds.SpacingBetweenSlices) == MR_SPEC.spacing_mm[0]


def test_mr_dicom_export_and_segmentation_are_reproducible(tmp_path, mr_batch):
    hd = pytest.importorskip("highdicom")
    a = export_dicom(mr_batch, tmp_path / "a", seed=5)[0]
    b = export_dicom(mr_batch, tmp_path / "b", seed=5)[0]
    for name in ("mr/slice-0003.dcm", "seg.dcm"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    seg = hd.seg.segread(a / "seg.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "tumour"
    mask = mr_batch.mask[0, 0].numpy()
    slices = [k for k in range(mask.shape[0]) if mask[k].any()]
    frames = seg.pixel_array.reshape(len(slices), *mask.shape[1:]).astype(bool)
    positions = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in seg.PerFrameFunctionalGroupsSequence
    ]
    z0 = case_geometry(mr_batch)["origin"][2]
    np.testing.assert_allclose(
        np.sort(positions), [z0 + k * MR_SPEC.spacing_mm[0] for k in slices], atol=1e-4
    )
    np.testing.assert_array_equal(frames[np.argsort(positions)], mask[slices])
    referenced = {
        item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert len(referenced) == mask.shape[0]


def test_mr_dciodvfy_reports_no_errors(tmp_path, mr_batch):
    # MR slices carry Rescale Slope/Intercept (not in the MR IOD): warnings only, no errors
    _check_dciodvfy(export_dicom(mr_batch, tmp_path, seed=5)[0], "mr")


def test_nifti_writes_organ_map_and_acquisition(tmp_path, mr_batch):
    folder = export_nifti(mr_batch, tmp_path)[0]
    organs = sitk.ReadImage(str(folder / "organs.nii.gz"))
    _check_geometry(organs, mr_batch)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(organs), mr_batch.organs[0, 0].numpy())
    record = json.loads((folder / "case.json").read_text())
    assert record["organ_names"] == list(mr_batch.organ_names)
    assert record["acquisition"] == mr_batch.acquisition[0] and record["generator"] == "brain_mri"


def test_body_part_follows_the_generator():
    assert [body_part(g) for g in ("chest_ct", "brain_mri", "liver_ct", "head_ct", "knee_mri")] == [
        "CHEST",
        "HEAD",
        "ABDOMEN",
        "HEAD",
        "",
    ]
