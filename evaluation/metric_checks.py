"""Argument checks shared by the panoptic metrics (STQ, PQ, VPQ)."""

from typing import Sequence


def check_panoptic_arguments(num_classes: int, thing_class_ids: Sequence[int],
                             label_divisor: int) -> None:
  """Raises ValueError, naming the value received, for unusable metric arguments."""
  if num_classes < 1:
    raise ValueError(f'num_classes must be >= 1; received {num_classes}.')
  if label_divisor < 1:
    raise ValueError(f'label_divisor must be >= 1; received {label_divisor}.')
  bad = [c for c in thing_class_ids if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f'thing_class_ids entries must be in [0, {num_classes}); received {bad}.')
