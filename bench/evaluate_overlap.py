r"""Evaluator throughput with the model stage overlapped (queue) and without.

  python bench/evaluate_overlap.py --saved_model=<export> [--sequences=4]
      [--frames=100] [--rounds=2] [--work_dir=/tmp/vkmax_evaluate_bench]

Writes a synthetic val split (`--sequences` x `--frames`, 65x129, the demo's
generator) as TFRecords under `--work_dir`, then runs
`evaluation.evaluate.run_evaluation` on it with `queue_depth=2` (the model stage in
a background thread) and `queue_depth=0` (one after the other), alternating for
`--rounds` rounds in one process, and prints the wall frames/s of each run and the
frames/s of its stages. Use the demo's export (`<run>/export`) for a trained model.
"""

import argparse
import os
import statistics

from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.evaluation import evaluate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--saved_model', required=True)
  parser.add_argument('--sequences', type=int, default=4)
  parser.add_argument('--frames', type=int, default=100)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--work_dir', default='/tmp/vkmax_evaluate_bench')
  args = parser.parse_args()
  data = os.path.join(args.work_dir, f'synthetic_{args.sequences}x{args.frames}')
  records = os.path.join(data, 'records')
  if not os.path.isdir(records):
    synthetic.ensure_synthetic_dataset(data, num_train_sequences=1,
                                       num_val_sequences=args.sequences, train_frames=2,
                                       val_frames=args.frames, height=65, width=129)
    build_step_data.convert_split(data, 'val', records, num_shards=1,
                                  dataset_name='synthetic')
  rates = {0: [], 2: []}
  for _ in range(args.rounds):
    for depth in (2, 0):
      report = evaluate.run_evaluation(
          saved_model=args.saved_model, dataset='synthetic',
          file_pattern=os.path.join(records, 'val-*.tfrecord'),
          output_dir=os.path.join(args.work_dir, f'out_{depth}'), clip_length=2,
          queue_depth=depth, progress=False, log_fn=lambda _: None)
      stages = report['throughput'][0]
      rate = report['num_frames'] / stages['wall_seconds']
      rates[depth].append(rate)
      print(f'queue_depth={depth}: {rate:.1f} frames/s wall (model stage '
            f'{stages["model_frames_per_second"]:.1f}, host stage '
            f'{stages["host_frames_per_second"]:.1f} frames/s), STQ '
            f'{report["overall"]["STQ"]:.4f}', flush=True)
  print(f'median: overlapped {statistics.median(rates[2]):.1f} frames/s, one after the '
        f'other {statistics.median(rates[0]):.1f} frames/s, ratio '
        f'{statistics.median(rates[2]) / statistics.median(rates[0]):.2f}x')


if __name__ == '__main__':
  main()
