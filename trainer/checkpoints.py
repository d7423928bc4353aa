"""The run's checkpoint manager: saves on step multiples, resumes past a broken file.

`tf.train.CheckpointManager` with two differences a long run depends on:
- With `checkpoint_interval=k`, checkpoints land on the first loop end at or
  past each multiple of k (k, 2k, ...), as the config reads; the stock manager
  saves after the first loop and counts k from there (10, 30, 50, ... for
  10-step loops and k = 20).
- `restore_or_initialize` restores the newest checkpoint that reads. A newest
  checkpoint cut short (a full disk, a job killed while writing) is skipped
  with a one-line warning naming its file, and the run resumes from the one
  before, instead of stopping with a traceback that names no file.
"""

import re
import sys
from typing import Callable, Optional

import tensorflow as tf

_STEP = re.compile(r'-(\d+)$')


def warn(message: str) -> None:
  """One `warning: ...` line on stderr."""
  print(f'warning: {message}', file=sys.stderr)


def unreadable(path: str, error: Exception) -> str:
  """'skipped checkpoint <path>: it does not read (<reason>)', on one line."""
  reason = ' '.join(str(error).split()) or type(error).__name__
  return f'skipped checkpoint {path}: it does not read ({reason})'


class RunCheckpointManager(tf.train.CheckpointManager):
  """See the module docstring; otherwise a `tf.train.CheckpointManager`."""

  def __init__(self, *args, warn_fn: Callable[[str], None] = warn, **kwargs):
    super().__init__(*args, **kwargs)
    self._warn_fn = warn_fn
    self._saved_step: Optional[int] = None

  def _step(self) -> int:
    return int(self._step_counter.numpy())

  def save(self, checkpoint_number=None, check_interval=True, options=None):
    """Saves when the step crossed a multiple of the interval (or unconditionally)."""
    interval = self._checkpoint_interval
    if check_interval and interval:
      last = self._saved_step
      if last is None:
        match = _STEP.search(self.latest_checkpoint or '')
        last = int(match.group(1)) if match else 0
      if self._step() // interval <= last // interval:
        return None
    path = super().save(checkpoint_number=checkpoint_number, check_interval=False,
                        options=options)
    if self._step_counter is not None:
      self._saved_step = self._step()
    return path

  def restore_newest_readable(self, expect_partial: bool = False) -> Optional[str]:
    """Restores the newest checkpoint that reads; returns its path (None: none kept).

    Args:
      expect_partial: The checkpoint holds more than this run restores (export
        and evaluation have no optimizer); do not warn about the rest.

    Raises:
      ValueError: checkpoints exist but none of them reads.
    """
    skipped = []
    for path in reversed(self.checkpoints):
      try:
        status = self._checkpoint.restore(path)
      except (tf.errors.OpError, ValueError) as e:
        self._warn_fn(f'{unreadable(path, e)}; trying the one before')
        skipped.append(path)
        continue
      if expect_partial:
        status.expect_partial()
      if self._step_counter is not None:
        self._saved_step = self._step()
      return path
    if skipped:
      raise ValueError(f'no checkpoint in {self.directory} reads (tried '
                       f'{", ".join(skipped)}); move them aside to start from the '
                       'initial checkpoint')
    return None

  def restore_or_initialize(self) -> Optional[str]:
    """The newest readable checkpoint, else the `init_fn` (as the base class)."""
    path = self.restore_newest_readable()
    if path is None and self._init_fn is not None:
      self._init_fn()
    return path
