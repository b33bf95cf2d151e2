"""The model a slide is segmented with: a run's predictor (construct.inference.factory) at the run's resolution.

A student run (`construct distill`): the student network alone, fast. A head run (`construct train`):
live CONCH and the head. TTA is optional for both (6-way for the head, flips for a student) and off by
default. The tiling resolution is the one the training tiles had, recorded by `extract --mpp` in the store
and carried into the head run; a student takes its teacher run's.
"""

from __future__ import annotations

from construct.errors import ConstructError
from construct.inference.factory import LoadedModel


def target_mpp(model: LoadedModel, mpp: float | None = None) -> float:
    """µm/px slides are tiled at: `mpp` (--mpp) when given, else the run's training tiles'."""
    target = mpp or model.mpp
    if target is None:
        raise ConstructError(f"{model.run}: the run records no training resolution (extracted before "
                             f"`extract --mpp`); pass --mpp")
    return target
