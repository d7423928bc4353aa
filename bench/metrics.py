"""Timings: STQ and VPQ({1,2,4,6}) on a KITTI-STEP-sized sequence.

One 300-frame 375 x 1242 sequence with ~30 moving things (cars, people) on stuff
(road, sky, vegetation), a void band and a crowd region. The prediction is the
ground truth with objects shifted by 2 pixels, relabelled ids, a few id switches
and a stuff confusion, so matching does real work. Frames are generated one at a
time (memory stays bounded, like the metrics) and only the metric calls are timed.

Run: `python bench/metrics.py [--frames=300] [--objects=30]` (numpy only, one process).
Prints wall and process CPU time of the whole sequence (update_state of every
frame + result()) for each metric.
"""

import argparse
import time

import numpy as np

from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_panoptic_quality

HEIGHT, WIDTH, DIVISOR, VOID = 375, 1242, 1000, 255
ROAD, VEGETATION, SKY, PERSON, CAR = 0, 8, 10, 11, 13


class SequenceGenerator:
  """Ground-truth and predicted panoptic frames [H, W], one at a time."""

  def __init__(self, num_objects: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.y0 = rng.integers(HEIGHT // 3, HEIGHT - 60, num_objects)
    self.x0 = rng.integers(0, WIDTH - 120, num_objects)
    self.sizes = rng.integers(20, 60, (num_objects, 2))
    self.vx = rng.integers(-3, 4, num_objects)
    self.classes = np.where(rng.random(num_objects) < 0.7, CAR, PERSON)
    self.pred_ids = rng.permutation(num_objects) + 100  # Relabelled predicted ids.
    self.switch_at = rng.integers(0, 300, num_objects)  # An id switch per object...
    self.switches = rng.random(num_objects) < 0.2       # ... for a fifth of them.

  def frame(self, t: int):
    gt = np.full((HEIGHT, WIDTH), ROAD * DIVISOR, np.int32)
    gt[:HEIGHT // 3] = SKY * DIVISOR
    gt[HEIGHT // 3:HEIGHT // 2, :WIDTH // 4] = VEGETATION * DIVISOR
    gt[-10:] = VOID * DIVISOR                         # Ego-car hood: void.
    gt[HEIGHT // 2:HEIGHT // 2 + 30, -80:] = CAR * DIVISOR  # Crowd (instance 0).
    pred = gt.copy()
    pred[HEIGHT // 3:HEIGHT // 2, :WIDTH // 8] = SKY * DIVISOR  # Stuff confusion.
    pred[-10:] = ROAD * DIVISOR
    for i in range(len(self.x0)):
      x = int(np.clip(self.x0[i] + self.vx[i] * t, 0, WIDTH - self.sizes[i, 1] - 2))
      y, (h, w) = self.y0[i], self.sizes[i]
      gt[y:y + h, x:x + w] = self.classes[i] * DIVISOR + i + 1
      pred_id = self.pred_ids[i] + (500 if self.switches[i] and t >= self.switch_at[i] else 0)
      pred[y:y + h, x + 2:x + w + 2] = self.classes[i] * DIVISOR + pred_id
    return gt, pred


def time_metric(name, metric, generator, num_frames):
  wall = cpu = 0.0
  for t in range(num_frames):
    gt, pred = generator.frame(t)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    metric.update_state(gt, pred, 'seq')
    wall += time.perf_counter() - start_wall
    cpu += time.process_time() - start_cpu
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  result = metric.result()
  wall += time.perf_counter() - start_wall
  cpu += time.process_time() - start_cpu
  return wall, cpu, result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--frames', type=int, default=300)
  parser.add_argument('--objects', type=int, default=30)
  args = parser.parse_args()
  generator = SequenceGenerator(args.objects)
  things = [PERSON, CAR]
  metrics = [
      ('STQ', stq.STQuality(19, things, VOID, DIVISOR, offset=2 ** 32)),
      ('VPQ', video_panoptic_quality.VideoPanopticQuality(19, things, VOID, DIVISOR,
                                                          window_sizes='video_kmax')),
  ]
  print(f'{args.frames} frames of {HEIGHT}x{WIDTH}, {args.objects} objects')
  for name, metric in metrics:
    wall, cpu, result = time_metric(name, metric, generator, args.frames)
    value = result['STQ'] if name == 'STQ' else result['VPQ']
    label = metric.describe() if name == 'VPQ' else name
    print(f'{label}: {wall:.2f} s wall, {cpu:.2f} s CPU, '
          f'{1000 * wall / args.frames:.1f} ms/frame; value {value:.4f}')


if __name__ == '__main__':
  main()
