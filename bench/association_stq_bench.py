"""Timings: VideoAssociater and STQuality on KITTI-STEP-sized frames (375 x 1242).

Synthetic stream: stuff background (several classes) with ~50 moving rectangular
things (cars and people), clip-local ids shuffled per clip, 256-d embeddings.
Run: `python bench/association_stq_bench.py` (numpy/scipy only, single process).
Reports the median over calls of process CPU time (the shared 2-core dev machines
make wall time noisy) and, for reference, the median wall time.
"""

import time

import numpy as np

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.evaluation import stq

HEIGHT, WIDTH, DIVISOR = 375, 1242, 1000
CAR, PERSON = 13, 11


def make_frames(num_frames, num_objects, rng):
  """GT-like panoptic frames [F, H, W] with tracks 1..num_objects, and embeddings."""
  y0 = rng.integers(0, HEIGHT - 60, num_objects)
  x0 = rng.integers(0, WIDTH - 120, num_objects)
  sizes = rng.integers(20, 60, (num_objects, 2))
  vx = rng.integers(-3, 4, num_objects)
  classes = np.where(rng.random(num_objects) < 0.7, CAR, PERSON)
  frames = np.zeros((num_frames, HEIGHT, WIDTH), dtype=np.int32)
  frames[:, : HEIGHT // 3] = 10 * DIVISOR  # sky
  frames[:, HEIGHT // 3:] = 0  # road
  frames[:, HEIGHT // 3: HEIGHT // 2, : WIDTH // 4] = 8 * DIVISOR  # vegetation
  for t in range(num_frames):
    for i in range(num_objects):
      x = int(np.clip(x0[i] + vx[i] * t, 0, WIDTH - sizes[i, 1]))
      frames[t, y0[i]:y0[i] + sizes[i, 0], x:x + sizes[i, 1]] = (
          classes[i] * DIVISOR + i + 1)
  embeddings = rng.normal(size=(num_objects, 256))
  return frames, embeddings


def bench_association(frames, embeddings, clip_length, rng):
  assoc = video_associater.VideoAssociater(
      label_divisor=DIVISOR, thing_class_ids=[PERSON, CAR])
  stride = max(clip_length - 1, 1)
  outputs, start = [], 0
  cpu, wall = [], []
  while start + clip_length <= len(frames):
    clip = frames[start:start + clip_length].copy()
    perm = rng.permutation(200) + 1  # shuffle clip-local ids.
    things = clip % DIVISOR > 0
    clip[things] = (clip[things] // DIVISOR) * DIVISOR + perm[clip[things] % DIVISOR - 1]
    emb = {int(c) * DIVISOR + int(perm[i]): embeddings[i] + 0.1 * rng.normal(size=256)
           for i in range(len(embeddings)) for c in (CAR, PERSON)}
    tic, cpu_tic = time.perf_counter(), time.process_time()
    out = assoc.update(clip, emb)
    if start:  # steady state: clips after the first emit T - 1 frames.
      cpu.append((time.process_time() - cpu_tic) / len(out))
      wall.append((time.perf_counter() - tic) / len(out))
    outputs.extend(out)
    start += stride
  return np.median(cpu) * 1e3, np.median(wall) * 1e3, assoc.statistics(), outputs


def main():
  rng = np.random.default_rng(0)
  frames, embeddings = make_frames(21, 50, rng)
  for clip_length in (1, 2):
    cpu_ms, wall_ms, stats, outputs = bench_association(frames, embeddings,
                                                        clip_length, rng)
    print(f'association T={clip_length}: {cpu_ms:.1f} ms CPU/frame '
          f'({wall_ms:.1f} ms wall), ids_created={stats["ids_created"]}, '
          f'M x N mean={stats["match_space_size_mean"]:.1f}')
  metric = stq.STQuality(19, [PERSON, CAR], 255, DIVISOR, 1 << 24)
  cpu, wall = [], []
  for gt, pred in zip(frames[:len(outputs)], outputs):
    tic, cpu_tic = time.perf_counter(), time.process_time()
    metric.update_state(gt, pred, 'seq')
    cpu.append(time.process_time() - cpu_tic)
    wall.append(time.perf_counter() - tic)
  tic = time.perf_counter()
  result = metric.result()
  print(f'STQ update_state: {np.median(cpu) * 1e3:.1f} ms CPU/frame '
        f'({np.median(wall) * 1e3:.1f} ms wall); result(): '
        f'{(time.perf_counter() - tic) * 1e3:.1f} ms; STQ={result["STQ"]:.4f} '
        f'AQ={result["AQ"]:.4f}')


if __name__ == '__main__':
  main()
