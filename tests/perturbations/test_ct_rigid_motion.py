"""Physics checks of ``ct_rigid_motion``: identity without motion, artefacts growing with the amplitude,
motion before the scan = the moved image, z motion, and the contract (batching, replay, no host reads)."""

import json
import math

import numpy as np
import pytest
import torch
from host_reads import apply_path_functions, assert_no_host_reads

from perturbations import PERTURBATIONS, ct_beam, ct_rigid_motion
from perturbations.chain import AppliedPerturbation, apply_chain, steps_from_records
from perturbations.ct_geometry import inplane_coordinates_mm, inplane_radius_mm
from perturbations.ct_rigid_motion import (
    RigidMotionParams,
    RigidMotionSpec,
    apply_rigid_motion,
    motion_weights,
    sample_rigid_motion,
)

N = 80
SPACING = (1.0, 1.0, 1.0)


def _motion(
    amplitude: float = 0.0,
    start: float = 0.5,
    profile: str = "step",
    direction_rad: float = 0.0,
    rotation_deg: float = 0.0,
    tz_mm: float = 0.0,
) -> RigidMotionParams:
    return RigidMotionParams(
        amplitude_mm=amplitude,
        tx_mm=amplitude * math.cos(direction_rad),
        ty_mm=amplitude * math.sin(direction_rad),
        tz_mm=tz_mm,
        rotation_deg=rotation_deg,
        start_fraction=start,
        profile=profile,
    )


def _coords() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.zeros(1, 1, 1, N, N)
    y_mm, x_mm = inplane_coordinates_mm(x, SPACING)
    return y_mm, x_mm, inplane_radius_mm(x, SPACING)


def _disk_phantom() -> torch.Tensor:
    """A water disk (r 30 mm) in air with a 400 HU insert (r 6 mm) at x = 12 mm."""
    y_mm, x_mm, r = _coords()
    x = torch.full((1, 1, 1, N, N), -1000.0)
    x[..., r <= 30.0] = 0.0
    x[..., ((x_mm - 12.0) ** 2 + y_mm**2) <= 36.0] = 400.0
    return x


def _smooth(x0: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """A smooth phantom at source coordinates: soft-edged water disk (r 34 mm) + Gaussian blob (500 HU)."""
    sigma = 12.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    body = 1000.0 * torch.sigmoid((34.0 - torch.sqrt(x0**2 + y0**2)) / 1.5) - 1000.0
    blob = 500.0 * torch.exp(-((x0 - 5.0) ** 2 + (y0 + 3.0) ** 2) / (2.0 * sigma**2))
    return (body + blob).float().view(1, 1, 1, N, N)


def _energy(p: RigidMotionParams) -> float:
    x = _disk_phantom()
    return float(((apply_rigid_motion(x, SPACING, [p]) - x) ** 2).sum())


def test_no_motion_is_the_identity():
    x = torch.from_numpy(np.random.default_rng(0).normal(0.0, 100.0, (2, 1, 3, 20, 20)).astype(np.float32))
    assert torch.equal(apply_rigid_motion(x, SPACING, [_motion(0.0), _motion(0.0)]), x)
    assert torch.equal(
        apply_rigid_motion(x, SPACING, [_motion(5.0, start=1.0), _motion(0.0)]), x
    )  # after the scan
    y = apply_rigid_motion(x, SPACING, [_motion(0.0), _motion(3.0)])
    assert torch.equal(y[0], x[0]) and not torch.equal(y[1], x[1])


def test_artefact_energy_grows_with_the_amplitude_and_vanishes_for_a_late_step():
    energies = [_energy(_motion(d)) for d in (1.0, 2.0, 4.0)]  # a step half-way through the rotation
    # Measured 2.3e7, 7.2e7, 1.8e8 HU^2: doubled edges and streaks grow with the amplitude.
    assert energies[0] < energies[1] < energies[2]
    assert energies[2] > 4.0 * energies[0]
    # The later the step, the fewer views see the moved pose (measured 2.5 % at t0 0.98, 0.2 % at 0.995).
    assert _energy(_motion(4.0, start=0.98)) < 0.05 * energies[2]
    assert _energy(_motion(4.0, start=0.995)) < 0.005 * energies[2]
    # A drift from t0 to the end moves less on average than a step at t0 (measured 58 %).
    assert _energy(_motion(4.0, profile="drift")) < 0.8 * energies[2]


@pytest.mark.parametrize(
    ("amplitude", "direction_rad", "rotation_deg"),
    [(4.0, 0.0, 0.0), (4.0, math.pi / 2, 0.0), (5.0, 0.7, 0.0), (0.0, 0.0, 15.0), (3.0, 0.3, 10.0)],
)
def test_motion_before_the_scan_gives_the_moved_image(amplitude, direction_rad, rotation_deg):
    y_mm, x_mm, r = _coords()
    x = _smooth(x_mm, y_mm)
    p = _motion(amplitude, start=0.0, direction_rad=direction_rad, rotation_deg=rotation_deg)
    y = apply_rigid_motion(x, SPACING, [p])
    # Expected: the object rotated by alpha about the isocentre, then translated by T: f(R^-1 (r - T)).
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    xs, ys = x_mm - p.tx_mm, y_mm - p.ty_mm
    expected = _smooth(c * xs + s * ys, -s * xs + c * ys)
    inside = r < 36.0
    change = float((expected - x)[..., inside].abs().max())  # 90 to 680 HU
    err = (y - expected)[..., inside].abs()
    # Measured max 2.4-15 HU (the residual x - FBP(x) of the soft edge stays where it was), mean < 3 HU.
    assert float(err.max()) < 0.04 * change and float(err.mean()) < 4.0


def test_z_motion_before_the_scan_shows_the_neighbouring_slices():
    _, _, r = _coords()
    depth = 10
    x = torch.full((1, 1, depth, N, N), -1000.0)
    for k in range(depth):
        x[0, 0, k][r <= 30.0] = 10.0 * k  # a z ramp of 10 HU per slice inside the disk
    y = apply_rigid_motion(x, SPACING, [_motion(0.0, start=0.0, tz_mm=2.0)])
    change = (y - x)[0, 0][:, r < 25.0]
    # The anatomy moves +2 mm: slice k shows what was at k - 2 (-20 HU); the first slices repeat slice 0.
    torch.testing.assert_close(change[2:].mean(dim=1), torch.full((depth - 2,), -20.0), atol=0.05, rtol=0)
    assert float(change[2:].std()) < 0.5
    torch.testing.assert_close(change[:2].mean(dim=1), torch.tensor([0.0, -10.0]), atol=0.05, rtol=0)


def test_weights_and_sampling():
    w = motion_weights([_motion(1.0, 0.5), _motion(1.0, 0.5, "drift"), _motion(0.0, 0.1)], 10)
    assert w[0].tolist() == [0.0] * 5 + [1.0] * 5
    np.testing.assert_allclose(w[1], np.clip((np.arange(10) + 0.5) / 10 - 0.5, 0, None) / 0.5)
    assert not w[2].any()  # no motion: no moving view
    spec = RigidMotionSpec(start_min=0.3, start_max=0.6, rotation_deg_per_mm=0.5, axes="xyz")
    for seed in range(10):
        p = sample_rigid_motion(spec, 4.0, np.random.default_rng(seed))
        assert math.isclose(math.hypot(p.tx_mm, p.ty_mm, p.tz_mm), 4.0, rel_tol=1e-9)
        assert 0.3 <= p.start_fraction <= 0.6 and abs(p.rotation_deg) == pytest.approx(2.0)
    q = sample_rigid_motion(RigidMotionSpec(), 4.0, np.random.default_rng(0))
    assert q.tz_mm == 0.0 and q.rotation_deg == 0.0 and q.profile == "step"
    with pytest.raises(ValueError):
        RigidMotionSpec(start_min=0.7, start_max=0.2)


def test_batch_equals_each_case_alone_and_replay_is_bit_identical():
    entry = PERTURBATIONS.get("ct_rigid_motion")
    x = torch.from_numpy(np.random.default_rng(5).normal(0.0, 100.0, (3, 1, 4, 40, 40)).astype(np.float32))
    x[..., :4, :] = -1000.0
    spacing = (2.0, 1.5, 1.5)
    specs = (
        RigidMotionSpec(),
        RigidMotionSpec(profile="drift", axes="xyz"),
        RigidMotionSpec(rotation_deg_per_mm=1),
    )
    params = [
        entry.sample(spec, s, np.random.default_rng(10 + k))
        for k, (spec, s) in enumerate(zip(specs, (0, 4, 10), strict=True))
    ]
    batched = entry.apply(x, spacing, params)
    for b, p in enumerate(params):
        alone = entry.apply(x[b : b + 1], spacing, [p])
        torch.testing.assert_close(batched[b : b + 1], alone, atol=2e-3, rtol=1e-5)
    assert torch.equal(batched, entry.apply(x, spacing, params))
    step = AppliedPerturbation("ct_rigid_motion", tuple(params))
    records = [json.loads(json.dumps([step.record(b)])) for b in range(3)]
    assert torch.equal(apply_chain(x, spacing, steps_from_records(records)), batched)


def test_apply_path_makes_no_host_copies_and_runs_on_the_meta_device():
    functions = apply_path_functions((ct_rigid_motion, ct_beam), ["apply_rigid_motion"])
    assert_no_host_reads(functions)
    seen = {f.name for f in functions}
    assert {"apply_rigid_motion", "motion_weights", "shift_slices", "project", "backproject"} <= seen
    x = torch.empty(2, 1, 4, 16, 16, device="meta")
    params = [_motion(3.0, direction_rad=1.0, rotation_deg=2.0), _motion(2.0, profile="drift", tz_mm=1.0)]
    assert apply_rigid_motion(x, (2.0, 1.0, 1.0), params).device.type == "meta"
