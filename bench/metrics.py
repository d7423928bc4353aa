"""Timings: STQ and VPQ({1,2,4,6}) on a KITTI-STEP-sized sequence.

One 300-frame 375 x 1242 sequence with ~30 moving things (cars, people) on stuff
(road, sky, vegetation), a void band and a crowd region. The prediction is the
ground truth with objects shifted by 2 pixels, relabelled ids, a few id switches
and a stuff confusion, so matching does real work. Frames are generated one at a
time (memory stays bounded, like the metrics) and only the metric calls are timed.

Run: `python bench/metrics.py [--frames=300] [--objects=30] [--rounds=3]
[--compare_ref=HEAD~1]` (numpy only, one process). Prints wall and process CPU
time of the whole sequence (update_state of every frame + result()) for each
metric, rounds alternated in one run, and STQ's time as a ratio of the DeepLab2
work profile below.

`DeepLab2WorkSTQ` is a timing stand-in for DeepLab2's numpy STQ, written here
from the operations that script performs per frame (not its code): a full-frame
`np.unique` of `semantic << shift | prediction` keys for the confusion matrix, one
boolean pass per thing class, three `np.unique` histograms folded into Python
dicts, and a `result()` that visits every (ground-truth id, predicted id) pair of
a sequence in Python. Its values are checked against ours, so it does the same
job. `--compare_ref` loads `evaluation/stq.py` of a git ref (`git show`) and
checks that today's values equal it to 1e-12.
"""

import argparse
import time

import numpy as np

from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_panoptic_quality

import git_ref  # bench/git_ref.py

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


class DeepLab2WorkSTQ:
  """STQ with the per-frame work profile of DeepLab2's numpy script (see above)."""

  def __init__(self, num_classes, thing_class_ids, ignore_label, label_divisor, offset):
    self._num_classes, self._things = num_classes, list(thing_class_ids)
    self._ignore, self._divisor, self._offset = ignore_label, label_divisor, offset
    self._shift = 16
    self._size = num_classes + 1
    self._confusion, self._gt, self._pred, self._inter = {}, {}, {}, {}

  @staticmethod
  def _add_counts(table, values):
    keys, counts = np.unique(values, return_counts=True)
    for key, count in zip(keys, counts):
      table[key] = table.get(key, 0) + count

  def update_state(self, y_true, y_pred, sequence_id=0):
    y_true, y_pred = y_true.astype(np.int64), y_pred.astype(np.int64)
    sem_true, sem_pred = y_true // self._divisor, y_pred // self._divisor
    sem_true = np.where(sem_true != self._ignore, sem_true, self._num_classes)
    sem_pred = np.where(sem_pred != self._ignore, sem_pred, self._num_classes)
    if sequence_id not in self._confusion:
      self._confusion[sequence_id] = np.zeros((self._size, self._size), np.int64)
      self._gt[sequence_id], self._pred[sequence_id] = {}, {}
      self._inter[sequence_id] = {}
    keys, counts = np.unique((sem_true.reshape(-1) << self._shift) +
                             sem_pred.reshape(-1), return_counts=True)
    self._confusion[sequence_id][keys >> self._shift,
                                 keys & ((1 << self._shift) - 1)] += counts
    gt_thing = np.zeros(y_true.shape, bool)
    pred_thing = np.zeros(y_true.shape, bool)
    for thing in self._things:
      gt_thing |= sem_true == thing
      pred_thing |= sem_pred == thing
    crowd = gt_thing & (y_true % self._divisor == 0)
    gt_thing &= ~crowd
    pred_thing &= ~crowd
    self._add_counts(self._pred[sequence_id], y_pred[pred_thing])
    self._add_counts(self._gt[sequence_id], y_true[gt_thing])
    both = gt_thing & pred_thing
    self._add_counts(self._inter[sequence_id],
                     y_true[both] * self._offset + y_pred[both])

  def result(self):
    aq_sum, tracks = 0.0, 0
    total = np.zeros((self._size, self._size), np.int64)
    for sequence_id, confusion in self._confusion.items():
      gt, pred, inter = (self._gt[sequence_id], self._pred[sequence_id],
                         self._inter[sequence_id])
      for gt_id, gt_size in gt.items():
        inner = 0.0
        for pred_id, pred_size in pred.items():
          tpa = inter.get(self._offset * gt_id + pred_id)
          if tpa is not None:
            inner += tpa * tpa / (gt_size + pred_size - tpa)
        aq_sum += inner / gt_size
      tracks += len(gt)
      total += confusion
    total[self._num_classes] = 0  # Ground-truth void row.
    inter = np.diag(total).astype(np.float64)
    union = total.sum(0) + total.sum(1) - inter
    aq = aq_sum / max(tracks, 1)
    iou = np.sum(inter / np.maximum(union, 1e-15)) / np.count_nonzero(union)
    return {'STQ': float(np.sqrt(aq * iou)), 'AQ': aq, 'IoU': float(iou)}


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
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--compare_ref', default='',
                      help='git ref whose evaluation/stq.py is timed and compared')
  parser.add_argument('--skip_vpq', action='store_true')
  args = parser.parse_args()
  generator = SequenceGenerator(args.objects)
  things = [PERSON, CAR]
  stq_args = (19, things, VOID, DIVISOR, 2 ** 32)
  factories = [('STQ', lambda: stq.STQuality(*stq_args)),
               ('DeepLab2-work STQ', lambda: DeepLab2WorkSTQ(*stq_args))]
  if args.compare_ref:
    old = git_ref.module_at(args.compare_ref, 'evaluation/stq.py')
    factories.append((f'STQ at {args.compare_ref}', lambda: old.STQuality(*stq_args)))
  if not args.skip_vpq:
    factories.append(('VPQ', lambda: video_panoptic_quality.VideoPanopticQuality(
        19, things, VOID, DIVISOR, window_sizes='video_kmax')))
  print(f'{args.frames} frames of {HEIGHT}x{WIDTH}, {args.objects} objects, '
        f'{args.rounds} alternating rounds')
  times = {name: [] for name, _ in factories}
  results = {}
  for _ in range(args.rounds):
    for name, factory in factories:
      wall, cpu, results[name] = time_metric(name, factory(), generator, args.frames)
      times[name].append((wall, cpu))
      print(f'  {name}: {wall:.2f} s wall, {cpu:.2f} s CPU', flush=True)
  for name, _ in factories:
    wall, cpu = np.median(np.array(times[name]), axis=0)
    value = results[name]['VPQ' if name == 'VPQ' else 'STQ']
    print(f'{name}: median {wall:.2f} s wall, {cpu:.2f} s CPU, '
          f'{1000 * wall / args.frames:.1f} ms/frame; value {value:.12f}')
  ours = results['STQ']
  for name in times:
    if name.startswith('DeepLab2') or name.startswith('STQ at'):
      ratio = np.median([a[1] / b[1] for a, b in zip(times['STQ'], times[name])])
      gap = max(abs(ours[k] - results[name][k]) for k in ('STQ', 'AQ', 'IoU'))
      print(f'STQ / {name}: {ratio:.3f}x CPU (median of per-round ratios); '
            f'largest value difference {gap:.1e}')


if __name__ == '__main__':
  main()
