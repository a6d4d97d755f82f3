"""Learned explainers: LTE/pLTE (``explainers.learned.lte``)."""

from explainers.learned.lte import LTEConfig, LTEExplainer

__all__ = ["LTEConfig", "LTEExplainer"]
