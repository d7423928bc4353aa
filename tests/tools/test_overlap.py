"""deeplab2_vkmax.overlap: the model stage runs ahead of the host stage, bounded."""

import threading
import time

import pytest

from deeplab2_vkmax import overlap


def test_items_arrive_in_order_from_another_thread():
  threads = []

  def produce():
    for i in range(20):
      threads.append(threading.current_thread())
      yield i

  assert list(overlap.run_ahead(produce(), depth=3)) == list(range(20))
  assert all(t is not threading.current_thread() for t in threads)
  threads.clear()
  assert list(overlap.run_ahead(produce(), depth=0)) == list(range(20))
  assert all(t is threading.current_thread() for t in threads)


def test_the_producer_works_while_the_consumer_is_busy():
  second_started = threading.Event()

  def produce():
    yield 0
    second_started.set()
    yield 1

  for item in overlap.run_ahead(produce(), depth=1):
    if item == 0:  # Still handling item 0: the producer is already on item 1.
      assert second_started.wait(timeout=10)


@pytest.mark.parametrize('depth', [1, 3])
def test_the_producer_stays_at_most_depth_items_ahead(depth):
  produced = []

  def produce():
    for i in range(30):
      produced.append(i)
      yield i

  for item in overlap.run_ahead(produce(), depth=depth):
    time.sleep(0.002)
    # Queued items plus the one the producer holds while it waits to put it.
    assert len(produced) - 1 - item <= depth + 1


def test_a_producer_error_is_raised_in_the_consumer_after_the_good_items():
  def produce():
    yield 1
    yield 2
    raise ValueError('frame 3: bad frame')

  received = []
  with pytest.raises(ValueError, match='frame 3: bad frame'):
    for item in overlap.run_ahead(produce(), depth=2):
      received.append(item)
  assert received == [1, 2]


def test_stopping_early_stops_the_producer():
  produced = []

  def produce():
    for i in range(1000):
      produced.append(i)
      yield i

  stream = overlap.run_ahead(produce(), depth=2)
  assert next(stream) == 0
  stream.close()
  count = len(produced)
  time.sleep(0.05)
  assert len(produced) == count <= 4


def test_stage_clock_counts_frames_and_time():
  clock = overlap.StageClock()

  def produce():
    for frames in (2, 1, 2):
      time.sleep(0.01)
      yield frames

  assert list(clock.timed('model', produce(), lambda n: n)) == [2, 1, 2]
  clock.add('host', 0.5, 5)
  report = clock.report()
  assert report['host_frames_per_second'] == pytest.approx(10.0)
  assert 5 / report['model_frames_per_second'] >= 0.03  # At least the three sleeps.
  assert report['wall_seconds'] >= 0.03
