"""Overlaps the model with host-side work: a producer thread and a bounded queue.

The evaluator and the predictor have two stages per clip: the model stage (read
or decode frames, run the SavedModel / TFLite model, copy outputs to numpy) and
the host stage (association, metrics, writers). `run_ahead` moves the model stage
into a background thread that stays at most `depth` clips ahead of the host stage,
so the slower of the two sets the pace while memory stays bounded by `depth`
clips. TensorFlow, LiteRT and most numpy / PIL work release the GIL, so the two
stages do run at the same time.

`StageClock` records busy seconds and frames per stage, for a frames/s report.
No TensorFlow import here.
"""

import collections
import queue
import threading
import time
from typing import Dict, Iterable, Iterator, TypeVar

T = TypeVar('T')

_DONE = object()


class StageClock:
  """Busy time and frames per named stage (thread-safe enough: one writer each)."""

  def __init__(self):
    self.seconds: Dict[str, float] = collections.defaultdict(float)
    self.frames: Dict[str, int] = collections.defaultdict(int)
    self._start = time.perf_counter()

  def timed(self, stage: str, iterable: Iterable[T], frames_of=lambda item: 1) -> Iterator[T]:
    """Yields `iterable`'s items, charging the time spent producing each to `stage`."""
    iterator = iter(iterable)
    while True:
      start = time.perf_counter()
      try:
        item = next(iterator)
      except StopIteration:
        self.seconds[stage] += time.perf_counter() - start
        return
      self.seconds[stage] += time.perf_counter() - start
      self.frames[stage] += frames_of(item)
      yield item

  def add(self, stage: str, seconds: float, frames: int) -> None:
    self.seconds[stage] += seconds
    self.frames[stage] += frames

  def report(self) -> Dict[str, float]:
    """{'<stage>_frames_per_second': ..., 'wall_seconds': ...}."""
    report = {f'{stage}_frames_per_second': self.frames[stage] / max(seconds, 1e-9)
              for stage, seconds in self.seconds.items()}
    report['wall_seconds'] = time.perf_counter() - self._start
    return report


def run_ahead(iterable: Iterable[T], depth: int) -> Iterator[T]:
  """Iterates `iterable` in a background thread, at most `depth` items ahead.

  Args:
    iterable: the producer (e.g. a generator that runs the model clip by clip).
    depth: queue size; 0 iterates in the caller's thread (no overlap).

  Yields:
    The producer's items, in order. An exception in the producer is raised here,
    at the point its item would have come. Closing this generator early (break,
    an error in the consumer) stops the producer after its current item.
  """
  if depth <= 0:
    yield from iterable
    return
  items: 'queue.Queue' = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for item in iterable:
        while not stop.is_set():
          try:
            items.put((item, None), timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put((_DONE, None))
    except BaseException as e:  # pylint: disable=broad-except
      items.put((_DONE, e))  # Re-raised in the consumer's thread.

  thread = threading.Thread(target=produce, name='vkmax-model-stage', daemon=True)
  thread.start()
  try:
    while True:
      item, error = items.get()
      if item is _DONE:
        if error is not None:
          raise error
        return
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # Unblock a producer waiting on a full queue.
      try:
        items.get(timeout=0.1)
      except queue.Empty:
        pass
    thread.join()
