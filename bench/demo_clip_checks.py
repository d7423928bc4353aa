r"""Where a run's ids break: inside clips, between clips, or at merged segments.

Runs an exported model over every clip of an evaluation split (T = 2 near-online
clips, as the evaluator cuts them) and reports, without any associater:

- clip-level oracle AQ: every thing tube of every clip relabelled to the
  ground-truth track it overlaps most over the clip's frames, each frame taken
  from the first clip that holds it (as the evaluator emits them). Against the
  per-frame oracle of `demo_diagnosis.py` it shows what switches inside clips
  cost;
- tube consistency: the share of tube pixels whose majority track in a clip's
  frame differs from its majority track in another frame of the same clip;
- stitching on the shared frame: the share of the current clip's thing segments
  that Video Stitching links to the previous clip's prediction of the same
  frame, and the mean IoU of the linked pairs.

  python bench/demo_clip_checks.py --saved_model=runs/clip_kmax_tiny_synthetic/export
"""

import argparse
import os
import sys
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo_diagnosis  # pylint: disable=g-import-not-at-top,wrong-import-position

from deeplab2_vkmax import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.association import video_stitcher  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.data import clip_reader  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.data import clips  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.evaluation import evaluate  # pylint: disable=g-import-not-at-top,wrong-import-position
from deeplab2_vkmax.trainer import data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def majority_tracks(gt: np.ndarray, pred: np.ndarray, segment: int, descriptor) -> List:
  """Per frame of a clip, the ground-truth thing track under most of `segment` (None if none)."""
  out = []
  for gt_frame, pred_frame in zip(gt, pred):
    under = gt_frame[(pred_frame == segment) & demo_diagnosis.is_thing(gt_frame, descriptor)]
    tracks, counts = np.unique(under, return_counts=True)
    out.append(int(tracks[np.argmax(counts)]) if len(tracks) else None)
  return out


def tube_switch_pixels(gt: np.ndarray, pred: np.ndarray, descriptor) -> tuple:
  """(pixels of tubes whose majority track changes inside the clip, pixels of all tubes
  that have a majority track in every frame), counted on ground-truth thing pixels."""
  switched = total = 0
  gt_thing = demo_diagnosis.is_thing(gt, descriptor)
  for segment in np.unique(pred[demo_diagnosis.is_thing(pred, descriptor)]).tolist():
    tracks = majority_tracks(gt, pred, segment, descriptor)
    if None in tracks:
      continue
    pixels = int(np.sum((pred == segment) & gt_thing))
    total += pixels
    switched += pixels * (len(set(tracks)) > 1)
  return switched, total


def check(saved_model: str, config_file: Optional[str] = None,
          file_pattern: Optional[str] = None) -> Dict[str, float]:
  """The three checks; `file_pattern` defaults to the config's eval split."""
  config = evaluate.load_config(saved_model, config_file)
  if file_pattern is None:
    file_pattern = data_lib.resolve_file_patterns(config.eval_dataset_options)[0]
  descriptor = dataset_lib.get_dataset_descriptor(config.eval_dataset_options.dataset)
  signature = evaluate.load_serving_signature(saved_model)
  clip_length = config.eval_dataset_options.clip_length
  oracle_rows, switched, total, stitched, segments, pair_ious = [], 0, 0, 0, 0, []
  for _, images, labels in clip_reader.read_sequences(file_pattern, descriptor):
    emitted = np.zeros_like(labels)
    next_fresh = descriptor.panoptic_label_divisor - 1
    done = np.zeros(len(labels), bool)
    stitcher = video_stitcher.VideoStitcher(
        label_divisor=descriptor.panoptic_label_divisor,
        thing_class_ids=descriptor.thing_class_ids)
    previous = None  # {frame id: the previous clip's prediction of it}
    for clip in clips.sequence_clips(len(labels), clip_length):
      pred = np.asarray(signature(input_tensor=images[clip.take])[common.PANOPTIC_PRED])
      real = clip.frame_ids >= 0
      frame_ids, pred, gt = clip.frame_ids[real], pred[real], labels[clip.take][real]
      # The clip-level oracle: each tube relabelled to its majority track over the clip.
      relabelled, next_fresh = demo_diagnosis.relabel_to_majority_tracks(
          gt, pred, descriptor, next_fresh)
      for index, frame_id in enumerate(frame_ids):
        if not done[frame_id]:
          emitted[frame_id], done[frame_id] = relabelled[index], True
      s, t = tube_switch_pixels(gt, pred, descriptor)
      switched, total = switched + s, total + t
      if previous is not None and frame_ids[0] in previous:
        stitcher.remember(previous[frame_ids[0]])
        links = stitcher.match(pred[0])
        segments += len(np.unique(pred[0][demo_diagnosis.is_thing(pred[0], descriptor)]))
        stitched += len(links)
        for current, earlier in links.items():
          a, b = pred[0] == current, previous[frame_ids[0]] == earlier
          pair_ious.append(np.sum(a & b) / np.sum(a | b))
      previous = dict(zip(frame_ids.tolist(), pred))
    oracle_rows += demo_diagnosis.track_shortfall(labels, emitted, descriptor)
  return {'clip_oracle_aq': float(np.mean([r['aq'] for r in oracle_rows])),
          'tube_switch_share': switched / max(total, 1),
          'stitched_share': stitched / max(segments, 1),
          'stitched_pair_iou': float(np.mean(pair_ious)) if pair_ious else float('nan')}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--saved_model', required=True)
  parser.add_argument('--config_file', default=None,
                      help="Default: the SavedModel's config.textproto (its eval split).")
  args = parser.parse_args()
  demo_diagnosis.require_saved_model(args.saved_model)
  try:
    result = check(args.saved_model, args.config_file)
  except (ValueError, config_lib.ConfigError) as e:
    sys.exit(f'error: {e}')
  print(f'clip-level oracle AQ (track mean) {result["clip_oracle_aq"]:.3f}')
  print(f'tube pixels whose majority track changes inside a clip {result["tube_switch_share"]:.3f}')
  print(f'thing segments of a shared frame stitched {result["stitched_share"]:.3f} '
        f'(mean IoU of the pairs {result["stitched_pair_iou"]:.3f})')


if __name__ == '__main__':
  main()
