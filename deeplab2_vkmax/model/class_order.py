"""DeepLab2's order of the transformer class-logit channels.

kMaX-DeepLab's class head (DeepLab2 `model/decoder/max_deeplab.py`) does not index
its channels by dataset class id: channel c < C holds the c-th id of
`things + stuff`, the thing ids as the data set lists them, then every other id
in increasing order (`model/utils.py get_stuff_class_ids`), and channel C is void.
clip-kMaX keeps that order inside the model, so DeepLab2 checkpoints and ours
are interchangeable with the same meaning per channel (tests/fidelity). The loss
builds its class targets, and the post-processor reads classes, through the
tables here. The semantic head is different: its channels are dataset ids.
"""

from typing import Sequence, Tuple


def channel_class_ids(num_classes: int, thing_class_ids: Sequence[int]
                      ) -> Tuple[int, ...]:
  """Dataset class id of each non-void class channel: things, then stuff ascending.

  Args:
    num_classes: real classes C (ids 0..C-1; the ignore label lies outside).
    thing_class_ids: the data set's thing ids, in its own order.

  Returns:
    A C-tuple; entry c is the class id of channel c.

  Raises:
    ValueError: a thing id outside [0, C) or listed twice.
  """
  things = tuple(int(c) for c in thing_class_ids)
  if len(set(things)) != len(things) or any(not 0 <= c < num_classes for c in things):
    raise ValueError(f'thing_class_ids must be distinct ids in [0, {num_classes}), '
                     f'got {list(things)}.')
  stuff = tuple(c for c in range(num_classes) if c not in set(things))
  return things + stuff


def class_channels(num_classes: int, thing_class_ids: Sequence[int]) -> Tuple[int, ...]:
  """The inverse table: entry k is the channel of dataset class id k."""
  channels = [0] * num_classes
  for channel, class_id in enumerate(channel_class_ids(num_classes, thing_class_ids)):
    channels[class_id] = channel
  return tuple(channels)
