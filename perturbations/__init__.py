"""Physics-based perturbations with severities in physical units, batched on any torch device.

Importing this package registers the built-in perturbations in :data:`PERTURBATIONS`.
"""

from perturbations import blur, dose  # noqa: F401  (registration side effects)
from perturbations.base import PERTURBATIONS, Perturbation, Props, Severity, params_from_dict, params_to_dict
from perturbations.chain import AppliedPerturbation, apply_chain

__all__ = [
    "PERTURBATIONS",
    "AppliedPerturbation",
    "Perturbation",
    "Props",
    "Severity",
    "apply_chain",
    "params_from_dict",
    "params_to_dict",
]
