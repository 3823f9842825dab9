"""The medical layer: department triage over the hospital guides, and the safety guard.

Serving uses::

    SafetyGuard(GuardConfig(...)).check(messages) -> GuardDecision(action, category, reply_prefix, disclaimer)
    DepartmentTriage(load_catalog(guides)).recommend(text, k=3, model=None) -> TriageResult
"""

from caregpt.medical.catalog import Catalog, CatalogError, load_catalog
from caregpt.medical.guard import GuardConfig, GuardDecision, SafetyGuard
from caregpt.medical.triage import DepartmentTriage, Recommendation, TriageResult
from caregpt.medical.triage_model import TriageModel

__all__ = [
    "Catalog",
    "CatalogError",
    "DepartmentTriage",
    "GuardConfig",
    "GuardDecision",
    "Recommendation",
    "SafetyGuard",
    "TriageModel",
    "TriageResult",
    "load_catalog",
]
