"""The one compatibility check between a saved explainer/probe and the model it is used with.

Every checkpoint (LTE, LETA, linear probes) stores the fingerprint of the weights it was made for
(:meth:`~explainers.models.base.ExplaineeAdapter.weights_fingerprint`: the whole explainee for LTE,
whose masks explain its logits; the encoder without heads for LETA and probes). Loading it for other
weights is refused with one line, unless the caller explicitly allows it (``allow_other_weights``), in
which case a warning is logged. Resumed training runs apply the same check without an override.
"""

from __future__ import annotations

import logging

from explainers.errors import ModelError

log = logging.getLogger(__name__)


class WeightsMismatchError(ModelError):
    """A checkpoint made for other weights than the model it is being used with."""


def check_fingerprint(
    saved: str | None,
    current: str,
    *,
    what: str,
    source: str,
    model: str,
    hint: str,
    allow_other_weights: bool = False,
) -> None:
    """Refuse ``what`` (saved in ``source``) when it was made for weights other than ``model``'s.

    ``saved`` None or empty: an old checkpoint without a fingerprint, accepted with a warning.
    """
    if not saved:
        log.warning("%s in %s records no weights fingerprint: cannot check it fits %s", what, source, model)
        return
    if saved == current:
        return
    if allow_other_weights:
        log.warning(
            "%s in %s was made for other weights than %s (%s… ≠ %s…); used anyway (allow_other_weights)",
            what, source, model, saved[:12], current[:12],
        )
        return
    raise WeightsMismatchError(
        f"the {what} in {source} was made for other weights than {model} (fingerprint {saved[:12]}… ≠ "
        f"{current[:12]}…); {hint}, or pass allow_other_weights=true to use it anyway"
    )
