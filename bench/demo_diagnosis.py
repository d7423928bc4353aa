"""What limits the demo's STQ: segmentation and association, measured per class,
per object size and per ground-truth track.

Runs an exported model over an evaluation split exactly as the evaluator does
(`evaluate.score_sequences`: clips, stitching + HiLA-MB), keeps every emitted
frame, and reports:

- SQ's parts: IoU per class, things vs stuff, and the share of valid pixels
  predicted void: STQ's SQ (DeepLab2's definition) averages the classes plus, as
  soon as any valid pixel is predicted void, a "void" class of IoU 0, so a
  model that leaves any pixel unassigned loses 1 / (C + 1) of its SQ;
- thing detection per frame: recall of ground-truth thing segments (a predicted
  segment of the same class with IoU > 0.5 in that frame), by object size;
- AQ's shortfall per ground-truth track, split exactly into four parts that sum
  to 1 - AQ(track) (AQ(g) = sum_p w_p IoU_p, w_p = |p & g| / |g|, video tubes):
    missed       1 - sum_p w_p           (track pixels predicted as no thing)
    switches     sum_{p != d} w_p (1 - IoU_p)  (pixels under ids other than the
                 track's dominant id d: id switches and fragments)
    incomplete   w_d (|g| - |d & g|) / |d | g|   (the dominant id's IoU lost to
                 the track pixels it does not cover)
    leakage      w_d (|d| - |d & g|) / |d | g|   (the dominant id's IoU lost to
                 its pixels outside the track: merges, bleeding)
  The track mean of (1 - AQ(g)) is 1 - AQ when every sequence has the same
  tracks' weight, as STQ pools them (track-weighted);
- on the synthetic data set, the same per track role of its generator
  (`crossing`: the two look-alike cars that cross, `reentering`, `random`) and
  class, evaluated and with the oracle association;
- the same for an oracle association: every predicted thing segment of every
  frame relabelled to the ground-truth track it overlaps most. Its AQ is what a
  perfect associater reaches on the model's own segments, so it splits the AQ
  lost between the segments and the association.

  python bench/demo_diagnosis.py --saved_model=runs/clip_kmax_tiny_synthetic/export
"""

import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import evaluate

# Object size buckets in pixels per frame (the demo's frames are 64x128 = 8192 px).
SIZE_BUCKETS = ((0, 64), (64, 256), (256, 1024), (1024, 1 << 30))


class _Keep:
  """A `prediction_io`-like writer that keeps the emitted frames in memory."""

  def __init__(self):
    self.frames: Dict[str, Dict[int, np.ndarray]] = {}

  def write(self, sequence_id, frame_id, panoptic):
    self.frames.setdefault(sequence_id, {})[frame_id] = np.asarray(panoptic)


def class_iou(gt: np.ndarray, pred: np.ndarray, descriptor) -> np.ndarray:
  """IoU per class over all frames (NaN for classes absent from both)."""
  divisor, classes = descriptor.panoptic_label_divisor, descriptor.num_classes
  gt_class, pred_class = gt // divisor, pred // divisor
  valid = gt_class != descriptor.ignore_label
  pred_class = np.where(pred_class >= classes, classes, pred_class)
  confusion = np.bincount(gt_class[valid] * (classes + 1) + pred_class[valid],
                          minlength=classes * (classes + 1)).reshape(classes, classes + 1)
  intersection = np.diag(confusion[:, :classes]).astype(np.float64)
  union = confusion.sum(1) + confusion[:, :classes].sum(0) - intersection
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, intersection / union, np.nan)


def is_thing(ids: np.ndarray, descriptor) -> np.ndarray:
  """Bool array: which panoptic ids are thing instances (thing class, instance > 0)."""
  ids = np.asarray(ids)
  divisor = descriptor.panoptic_label_divisor
  return np.isin(ids // divisor, descriptor.thing_class_ids) & (ids % divisor > 0)


def relabel_to_majority_tracks(gt: np.ndarray, pred: np.ndarray, descriptor,
                               next_fresh: int) -> tuple:
  """Every thing segment of `pred` (one frame, or a clip's frames: its tube)
  relabelled to the ground-truth track under most of its pixels in `gt`.

  Segments over no track take fresh ids counting down from `next_fresh`; returns
  (relabelled copy of `pred`, the next fresh id).
  """
  divisor = descriptor.panoptic_label_divisor
  gt_thing = is_thing(gt, descriptor)
  out = pred.copy()
  for segment in np.unique(pred[is_thing(pred, descriptor)]).tolist():
    mask = pred == segment
    tracks, overlap = np.unique(gt[mask & gt_thing], return_counts=True)
    if len(tracks):
      instance = int(tracks[np.argmax(overlap)]) % divisor
    else:
      instance, next_fresh = next_fresh, next_fresh - 1
    out[mask] = segment // divisor * divisor + instance
  return out, next_fresh


def segment_recall(gt: np.ndarray, pred: np.ndarray, descriptor) -> List[tuple]:
  """(area, detected) of every ground-truth thing segment of every frame."""
  divisor = descriptor.panoptic_label_divisor
  out = []
  for gt_frame, pred_frame in zip(gt, pred):
    ids, areas = np.unique(gt_frame, return_counts=True)
    for segment, area in zip(ids, areas):
      if not is_thing(segment, descriptor):
        continue
      mask = gt_frame == segment
      candidates, overlap = np.unique(pred_frame[mask], return_counts=True)
      detected = False
      for candidate, inter in zip(candidates, overlap):
        if candidate // divisor != segment // divisor or candidate % divisor == 0:
          continue
        union = area + np.sum(pred_frame == candidate) - inter
        detected |= inter / union > 0.5
      out.append((int(area), bool(detected)))
  return out


def track_shortfall(gt: np.ndarray, pred: np.ndarray, descriptor) -> List[Dict[str, float]]:
  """Per ground-truth thing track: AQ and the four parts of its shortfall."""
  gt, pred = gt.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
  gt_thing, pred_thing = is_thing(gt, descriptor), is_thing(pred, descriptor)
  pred_ids, pred_areas = np.unique(pred[pred_thing], return_counts=True)
  pred_area = dict(zip(pred_ids.tolist(), pred_areas.tolist()))
  rows = []
  for track in np.unique(gt[gt_thing]).tolist():
    in_track = gt == track
    size = int(in_track.sum())
    ids, tpa = np.unique(pred[in_track & pred_thing], return_counts=True)
    weights = tpa / size
    unions = np.array([size + pred_area[p] - t for p, t in zip(ids.tolist(), tpa)], np.float64)
    iou = tpa / unions if len(ids) else np.zeros(0)
    aq = float(np.sum(weights * iou))
    row = {'track': track, 'frames_area': size, 'aq': aq, 'missed': 1.0 - float(weights.sum()),
           'switches': 0.0, 'incomplete': 0.0, 'leakage': 0.0, 'num_ids': int(len(ids))}
    if len(ids):
      d = int(np.argmax(tpa))
      others = np.arange(len(ids)) != d
      row['switches'] = float(np.sum(weights[others] * (1 - iou[others])))
      row['incomplete'] = float(weights[d] * (size - tpa[d]) / unions[d])
      row['leakage'] = float(weights[d] * (pred_area[int(ids[d])] - tpa[d]) / unions[d])
    rows.append(row)
  return rows


def oracle_association(gt: np.ndarray, pred: np.ndarray, descriptor) -> np.ndarray:
  """`pred` [F, H, W] with every predicted thing segment of every frame relabelled
  to the ground-truth track it overlaps most (unmatched ones keep unique ids).

  AQ of the result is what a perfect associater would reach with the model's own
  per-frame segments: AQ(oracle) - AQ(evaluated) is lost to association, 1 -
  AQ(oracle) to the segments themselves.
  """
  out = pred.copy()
  next_fresh = descriptor.panoptic_label_divisor - 1  # Counting down from the top.
  for f, (gt_frame, pred_frame) in enumerate(zip(gt, pred)):
    out[f], next_fresh = relabel_to_majority_tracks(gt_frame, pred_frame, descriptor, next_fresh)
  return out


def track_roles(config) -> Dict[str, Dict[int, str]]:
  """{sequence id: {ground-truth panoptic id: generator role}}; {} unless synthetic."""
  options = config.eval_dataset_options
  if options.dataset != 'synthetic':
    return {}
  from deeplab2_vkmax.data import synthetic  # pylint: disable=g-import-not-at-top
  divisor = dataset_lib.get_dataset_descriptor('synthetic').panoptic_label_divisor
  metadata = synthetic.load_metadata(options.synthetic.root_dir)
  return {sequence_id: {t['class_id'] * divisor + t['instance_id']: t['role']
                        for t in sequence['tracks']}
          for split in metadata['sequences'].values()
          for sequence_id, sequence in split.items()}


def aq_by_role(rows: List[Dict[str, object]], descriptor) -> List[Dict[str, object]]:
  """Mean AQ, oracle AQ and switches per (class, role) of `rows`.

  Args:
    rows: one dict per track with 'track' (panoptic id), 'role', 'aq',
      'oracle_aq', 'switches'.
    descriptor: the data set descriptor (class names, label divisor).
  """
  groups: Dict[tuple, List[Dict[str, object]]] = {}
  for row in rows:
    name = descriptor.class_names[int(row['track']) // descriptor.panoptic_label_divisor]
    groups.setdefault((name, row['role']), []).append(row)
  return [{'class': name, 'role': role, 'tracks': len(members),
           **{k: float(np.mean([m[k] for m in members]))
              for k in ('aq', 'oracle_aq', 'switches')}}
          for (name, role), members in sorted(groups.items())]


def diagnose(saved_model: str, config_file: str, file_pattern: str,
             max_num_sequences: int = -1) -> Dict[str, object]:
  """Runs the evaluation and returns the diagnosis (also the evaluator's STQ)."""
  from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.data import clip_reader  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.evaluation import video_scorer  # pylint: disable=g-import-not-at-top
  config = evaluate.load_config(saved_model, config_file)
  descriptor = dataset_lib.get_dataset_descriptor(config.eval_dataset_options.dataset)
  signature = evaluate.load_serving_signature(saved_model)
  metrics = evaluate.build_metrics(['stq'], descriptor, 'video_kmax')
  scorer = video_scorer.VideoScorer(
      associater_fn=lambda: builder.build_associater(config, descriptor), metrics=metrics)
  keep = _Keep()
  sequences = list(clip_reader.read_sequences(file_pattern, descriptor))
  if max_num_sequences >= 0:
    sequences = sequences[:max_num_sequences]
  evaluate.score_sequences(lambda clip: signature(input_tensor=clip), iter(sequences), scorer,
                           clip_length=config.eval_dataset_options.clip_length, writer=keep)
  stq_result = metrics['stq'].result()
  ious, segments, tracks, oracle_tracks, role_rows = [], [], [], [], []
  roles = track_roles(config)
  for sequence_id, _, labels in sequences:
    pred = np.stack([keep.frames[sequence_id][f] for f in range(len(labels))])
    ious.append((labels, pred))
    segments += segment_recall(labels, pred, descriptor)
    rows = track_shortfall(labels, pred, descriptor)
    oracle_rows = track_shortfall(
        labels, oracle_association(labels, pred, descriptor), descriptor)
    tracks += rows
    oracle_tracks += oracle_rows
    for row, oracle_row in zip(rows, oracle_rows):  # Both in track id order.
      role_rows.append({'track': row['track'], 'aq': row['aq'], 'switches': row['switches'],
                        'oracle_aq': oracle_row['aq'],
                        'role': roles.get(sequence_id, {}).get(row['track'], 'all')})
  all_gt = np.concatenate([g.reshape(-1) for g, _ in ious])
  all_pred = np.concatenate([p.reshape(-1) for _, p in ious])
  per_class = class_iou(all_gt, all_pred, descriptor)
  is_thing = np.isin(np.arange(descriptor.num_classes), descriptor.thing_class_ids)
  sizes = np.array([a for a, _ in segments])
  detected = np.array([d for _, d in segments])
  by_size = []
  for low, high in SIZE_BUCKETS:
    chosen = (sizes >= low) & (sizes < high)
    by_size.append({'pixels': f'{low}-{high if high < 1 << 30 else "inf"}',
                    'segments': int(chosen.sum()),
                    'recall': float(detected[chosen].mean()) if chosen.any() else float('nan')})
  parts = {k: float(np.mean([t[k] for t in tracks])) for k in
           ('aq', 'missed', 'switches', 'incomplete', 'leakage')}
  return {
      'STQ': float(stq_result['STQ']), 'AQ': float(stq_result['AQ']),
      'SQ': float(stq_result['IoU']),
      'num_sequences': len(sequences), 'num_frames': scorer.num_frames,
      'class_iou': {descriptor.class_names[c]: float(v) for c, v in enumerate(per_class)},
      'void_predicted': float(np.mean(
          (all_pred // descriptor.panoptic_label_divisor >= descriptor.num_classes)
          [all_gt // descriptor.panoptic_label_divisor != descriptor.ignore_label])),
      'class_mean_iou': float(np.nanmean(per_class)),
      'thing_iou': float(np.nanmean(per_class[is_thing])),
      'stuff_iou': float(np.nanmean(per_class[~is_thing])),
      'segment_recall': float(detected.mean()) if len(detected) else float('nan'),
      'recall_by_size': by_size,
      'tracks': len(tracks),
      'track_mean': parts,
      'ids_per_track': float(np.mean([t['num_ids'] for t in tracks])) if tracks else 0.0,
      'oracle_track_mean': {k: float(np.mean([t[k] for t in oracle_tracks])) for k in
                            ('aq', 'missed', 'switches', 'incomplete', 'leakage')},
      'aq_by_role': aq_by_role(role_rows, descriptor),
  }


def format_report(report: Dict[str, object]) -> str:
  lines = [f'STQ {report["STQ"]:.3f}  AQ {report["AQ"]:.3f}  SQ {report["SQ"]:.3f}  '
           f'({report["num_sequences"]} sequences, {report["num_frames"]} frames)',
           '', '| class | IoU |', '| --- | --- |']
  lines += [f'| {name} | {value:.3f} |' for name, value in report['class_iou'].items()]
  lines += [f'| things (mean) | {report["thing_iou"]:.3f} |',
            f'| stuff (mean) | {report["stuff_iou"]:.3f} |',
            f'| all classes (mean; SQ without the void column) | '
            f'{report["class_mean_iou"]:.3f} |', '',
            f'Valid pixels predicted void: {report["void_predicted"]:.4f}', '',
            f'Thing segments detected (IoU > 0.5, per frame): {report["segment_recall"]:.3f}',
            '', '| segment size (px) | segments | recall |', '| --- | --- | --- |']
  lines += [f'| {b["pixels"]} | {b["segments"]} | {b["recall"]:.3f} |'
            for b in report['recall_by_size']]
  parts = report['track_mean']
  lines += ['', f'{report["tracks"]} ground-truth tracks, {report["ids_per_track"]:.2f} '
            'predicted ids per track', '',
            '| track mean | AQ | missed | switches | incomplete | leakage |',
            '| --- | --- | --- | --- | --- | --- |',
            f'| | {parts["aq"]:.3f} | {parts["missed"]:.3f} | {parts["switches"]:.3f} | '
            f'{parts["incomplete"]:.3f} | {parts["leakage"]:.3f} |']
  oracle = report['oracle_track_mean']
  lines.append(f'| oracle association | {oracle["aq"]:.3f} | {oracle["missed"]:.3f} | '
               f'{oracle["switches"]:.3f} | {oracle["incomplete"]:.3f} | '
               f'{oracle["leakage"]:.3f} |')
  lines += ['', '| class | role | tracks | AQ | AQ, oracle association | switches |',
            '| --- | --- | --- | --- | --- | --- |']
  lines += [f'| {r["class"]} | {r["role"]} | {r["tracks"]} | {r["aq"]:.3f} | '
            f'{r["oracle_aq"]:.3f} | {r["switches"]:.3f} |' for r in report['aq_by_role']]
  return '\n'.join(lines)


def require_saved_model(path: str) -> None:
  """Exits with a one-line error unless `path` is a SavedModel folder."""
  if not os.path.isfile(os.path.join(path, 'saved_model.pb')):
    sys.exit(f'error: --saved_model={path}: no SavedModel there (no saved_model.pb)')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--saved_model', required=True)
  parser.add_argument('--config_file', default=None,
                      help="Default: the SavedModel's config.textproto (its eval split).")
  parser.add_argument('--file_pattern', default=None,
                      help='TFRecords to evaluate; default: the config\'s eval split.')
  parser.add_argument('--max_num_sequences', type=int, default=-1)
  parser.add_argument('--json', default=None, help='Also write the report here.')
  args = parser.parse_args()
  require_saved_model(args.saved_model)
  try:
    pattern = args.file_pattern
    if pattern is None:
      from deeplab2_vkmax.trainer import data_lib  # pylint: disable=g-import-not-at-top
      config = evaluate.load_config(args.saved_model, args.config_file)
      pattern = data_lib.resolve_file_patterns(config.eval_dataset_options)[0]
    report = diagnose(args.saved_model, args.config_file, pattern, args.max_num_sequences)
  except (ValueError, config_lib.ConfigError) as e:
    sys.exit(f'error: {e}')
  print(format_report(report))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  main()
