"""Learned explainers: LTE/pLTE (``explainers.learned.lte``) and LETA (``explainers.learned.leta``)."""

from explainers.learned.leta import LETAExplainer
from explainers.learned.lte import LTEConfig, LTEExplainer

__all__ = ["LETAExplainer", "LTEConfig", "LTEExplainer"]
