"""Association ablations on a trained clip-kMaX's own predictions.

`bench/association.py` models the predictions (boxes, misses, embeddings); this
script takes them from an exported SavedModel instead: the model's tube masks and
its query embeddings, which are what "appearance" means in the paper. It runs the
model once over every clip of a video split (T = 1 clips for online, T = 2 clips
sharing one frame for near-online), keeps the clip predictions in memory, then
associates them with every variant and scores the official AQ:

- Table 5 (association features, near-online and online),
- the gain from location per ground-truth track, by how long the track was
  hidden (no visible pixel, or under `--min_visible_px`) between appearances,
- Table 7 (tau x alpha grid, naive-MB vs full HiLA-MB).

Default data: held-out synthetic videos (the embedded generator with another seed
than the demo's, more and longer videos), written under `--data_dir` on first
use. Any KITTI-STEP-layout TFRecords work through `--file_pattern` and
`--dataset`.

  python trainer/train.py --config_file=configs/synthetic/clip_kmax_tiny.textproto \
      --mode=train_and_eval --model_dir=runs       # the README demo, then:
  python bench/association_on_model.py \
      --saved_model=runs/clip_kmax_tiny_synthetic/export
"""

import argparse
import dataclasses
import glob
import os
import time
from typing import Dict, List

import numpy as np

import association  # bench/association.py: variants, tables, per-track buckets.
from deeplab2_vkmax import common
from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clips
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.evaluation import association_scenarios
from deeplab2_vkmax.evaluation import evaluate


@dataclasses.dataclass
class ModelVideo:
  """One sequence: ground truth and the model's clip predictions."""
  ground_truth: np.ndarray  # int32 [F, H, W]
  clips: Dict[int, list]  # clip length -> [(panoptic [T, H, W], {id: embedding})]


def labels_of(descriptor: dataset_lib.DatasetDescriptor) -> association_scenarios.Labels:
  """The bench's label encoding of a registered data set."""
  return association_scenarios.Labels(
      num_classes=descriptor.num_classes,
      thing_class_ids=tuple(descriptor.thing_class_ids),
      ignore_label=descriptor.ignore_label,
      label_divisor=descriptor.panoptic_label_divisor)


def predict_videos(saved_model: str, file_pattern: str,
                   descriptor: dataset_lib.DatasetDescriptor,
                   max_num_sequences: int) -> List[ModelVideo]:
  """Runs the SavedModel over every T = 1 and T = 2 clip of each sequence."""
  from deeplab2_vkmax.data import clip_reader  # pylint: disable=g-import-not-at-top
  signature = evaluate.load_serving_signature(saved_model)
  videos = []
  for index, (_, images, labels) in enumerate(
      clip_reader.read_sequences(file_pattern, descriptor)):
    if 0 <= max_num_sequences <= index:
      break
    predictions = {}
    for clip_length in (1, 2):
      predictions[clip_length] = []
      for clip in clips.sequence_clips(len(labels), clip_length):
        outputs = signature(**{common.EXPORT_INPUT_NAME: images[clip.take]})
        predictions[clip_length].append((
            outputs[common.PANOPTIC_PRED].numpy().astype(np.int32),
            video_associater.slot_embeddings(
                outputs[common.SEGMENT_IDS].numpy(),
                outputs[common.PRED_QUERY_EMBEDDINGS].numpy(),
                descriptor.panoptic_label_divisor,
                descriptor.thing_class_ids)))
    videos.append(ModelVideo(np.asarray(labels, np.int32), predictions))
  return videos


# Generated data never goes into git: /data/ at the repository root is ignored.
_DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 'data', 'synthetic_association')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--saved_model', required=True,
                      help='SavedModel directory (export_model / train_and_eval).')
  parser.add_argument('--dataset', default='synthetic', help='Data set registry name.')
  parser.add_argument('--file_pattern', default=None,
                      help='TFRecords of the videos; default: generate held-out '
                           'synthetic videos under --data_dir.')
  parser.add_argument('--data_dir', default=_DEFAULT_DATA_DIR,
                      help='Where the held-out synthetic videos are generated '
                           '(default: the repository\'s ignored data/ folder, '
                           'wherever the command runs).')
  parser.add_argument('--seed', type=int, default=1,
                      help='Synthetic generator seed (the demo trains on seed 0).')
  parser.add_argument('--num_sequences', type=int, default=24)
  parser.add_argument('--num_frames', type=int, default=40)
  parser.add_argument('--max_num_sequences', type=int, default=-1)
  parser.add_argument('--min_visible_px', type=int, default=1,
                      help='A ground-truth track with fewer visible pixels in a '
                           'frame counts as hidden there.')
  parser.add_argument('--tables', default='table5,occlusion,table7',
                      help='comma-separated subset of table5,occlusion,table7')
  args = parser.parse_args()
  tables = args.tables.split(',')
  unknown = sorted(set(tables) - {'table5', 'occlusion', 'table7'})
  if unknown:
    parser.error(f'--tables: unknown {unknown}; valid: table5,occlusion,table7.')

  descriptor = dataset_lib.get_dataset_descriptor(args.dataset)
  file_pattern = args.file_pattern
  if file_pattern is None:
    if args.dataset != 'synthetic':
      parser.error('--file_pattern is required for a data set other than synthetic.')
    root = synthetic.ensure_synthetic_dataset(
        args.data_dir, seed=args.seed, num_train_sequences=1, train_frames=2,
        num_val_sequences=args.num_sequences, val_frames=args.num_frames)
    records = os.path.join(root, 'tfrecord')
    file_pattern = os.path.join(records, 'val-*.tfrecord')
    if not glob.glob(file_pattern):
      build_step_data.convert_split(root, 'val', records, num_shards=1,
                                    dataset_name='synthetic')
  labels = labels_of(descriptor)

  tic = time.time()
  try:
    videos = predict_videos(args.saved_model, file_pattern, descriptor,
                            args.max_num_sequences)
  except ValueError as e:  # No SavedModel, no files, a malformed sequence.
    parser.error(str(e))
  if not videos:
    parser.error(f'no sequences in {file_pattern}.')
  predict_s = time.time() - tic
  datasets = [{'model': videos}]  # One "seed": +- columns are 0.
  num_frames = sum(len(v.ground_truth) for v in videos)
  gaps = [g for v in videos
          for g in association_scenarios.longest_gaps(v.ground_truth, args.min_visible_px,
                                            labels).values()]
  print(f'\n{len(videos)} sequences, {num_frames} frames of {file_pattern}; '
        f'model {args.saved_model}; {len(gaps)} ground-truth tracks, '
        f'{sum(g >= 1 for g in gaps)} hidden between appearances '
        f'({sum(g >= 5 for g in gaps)} for >= 5 frames); predictions took '
        f'{predict_s:.0f} s. One run: the +- columns of the shared tables are 0.\n')
  if 'table5' in tables:
    association.print_table5(datasets, labels)
  if 'occlusion' in tables:
    association.print_occlusion_table(datasets, args.min_visible_px, labels)
  if 'table7' in tables:
    association.print_table7(datasets, [0], ['model'], labels)
  print(f'\n({time.time() - tic:.0f} s)')


if __name__ == '__main__':
  main()
