"""The medical layer: department triage over the hospital guides, and the safety guard.

Serving uses::

    SafetyGuard(GuardConfig(...)).check(messages) -> GuardDecision(action, category, reply_prefix, disclaimer,
                                                                   language, rule, layer)
    DepartmentTriage(load_catalog(guides)).recommend(text, k=3, model=None) -> TriageResult

The guard works in layers (normalisation, rules, concepts, a learned classifier, an optional LLM judge; see
guard.py); triage fuses a learned department classifier with guide retrieval (triage.py). Both learned parts
train in about a second on first use from the shipped dev data; `caregpt eval --task safety|deid|triage`
reports the dev and frozen test splits next to baselines.
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
