"""Attribution methods, one file each, registered by name (``get_method("gae", adapter)``)."""

from explainers.methods import random  # noqa: F401  (registers)
from explainers.methods.base import Method, available_methods, get_method, minmax_normalize, register_method

__all__ = ["Method", "available_methods", "get_method", "minmax_normalize", "register_method"]
