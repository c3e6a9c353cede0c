"""Physics-based perturbations with severities in physical units, batched on any torch device.

Importing this package registers the built-in perturbations in :data:`PERTURBATIONS`.
"""

from perturbations import (  # noqa: F401  (registration side effects)
    blur,
    ct_artefacts,
    ct_beam,
    ct_geometry,
    ct_kernel,
    ct_metal,
    ct_motion,
    ct_rigid_motion,
    dose,
    intensity,
    mri_bias,
    mri_contrast,
    mri_kspace,
    mri_motion,
    mri_noise,
    mri_sampling,
    pipeline,
    resolution,
)
from perturbations.base import PERTURBATIONS, Perturbation, Props, Severity, params_from_dict, params_to_dict
from perturbations.chain import AppliedPerturbation, apply_chain, apply_chain_mask, chain_spacing

__all__ = [
    "PERTURBATIONS",
    "AppliedPerturbation",
    "Perturbation",
    "Props",
    "Severity",
    "apply_chain",
    "apply_chain_mask",
    "chain_spacing",
    "params_from_dict",
    "params_to_dict",
]
