"""Procedural synthetic phantoms with exact ground truth and population sampling.

Importing this package registers the built-in generators in :data:`PHANTOMS`.
"""

from phantoms import brain_mri, chest_ct, liver_ct  # noqa: F401  (registration side effects)
from phantoms.base import PHANTOMS, Attribute, CaseBatch, PhantomGenerator, PhantomSpec
from phantoms.population import PopulationSpec

__all__ = ["PHANTOMS", "Attribute", "CaseBatch", "PhantomGenerator", "PhantomSpec", "PopulationSpec"]
