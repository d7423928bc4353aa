"""VideoScorer: clip predictions -> stitching + HiLA-MB -> STQ, on synthetic GT."""

import numpy as np
import pytest

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.data import clips
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_scorer

DESCRIPTOR = dataset_lib.get_dataset_descriptor('synthetic')
DIVISOR = DESCRIPTOR.panoptic_label_divisor


def _scorer(clip_length, **association):
  metric = stq.STQuality(DESCRIPTOR.num_classes, list(DESCRIPTOR.thing_class_ids),
                         DESCRIPTOR.ignore_label, DIVISOR, 2 ** 32)
  return video_scorer.VideoScorer(
      associater_fn=lambda: video_associater.VideoAssociater(
          label_divisor=DIVISOR,
          thing_class_ids=DESCRIPTOR.thing_class_ids, **association),
      metric=metric)


def _clip_local(labels, rng):
  """Relabels thing instances with random clip-local ids (same id in every frame)."""
  semantic, instance = labels // DIVISOR, labels % DIVISOR
  ids = np.unique(labels[(instance > 0) & np.isin(semantic, DESCRIPTOR.thing_class_ids)])
  new = rng.permutation(np.arange(1, len(ids) + 1) + 20)
  out = labels.copy()
  segment_ids, embeddings = [], []
  for old, fresh in zip(ids, new):
    out[labels == old] = (old // DIVISOR) * DIVISOR + fresh
    segment_ids.append((old // DIVISOR) * DIVISOR + fresh)
    embeddings.append(rng.normal(size=8))
  return out, np.array(segment_ids, np.int64), np.array(embeddings).reshape(-1, 8)


@pytest.mark.parametrize('clip_length', [1, 2, 3])
def test_ground_truth_clips_with_clip_local_ids_score_one(tmp_path, clip_length):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / 'synth'), num_train_sequences=1,
                                            num_val_sequences=2, train_frames=4, val_frames=9)
  sequences = list(synthetic.ground_truth_sequences(root, 'val'))
  # Online clips need appearance to link ids: give each GT track one embedding.
  scorer = _scorer(clip_length, alpha=0.5)
  rng = np.random.default_rng(0)
  for sequence_id, labels in sequences:
    track_embedding = {}
    for index in clips.sequence_clips(len(labels), clip_length):
      frame_ids = index.frame_ids
      clip = labels[index.take]
      relabelled, segment_ids, _ = _clip_local(clip, rng)
      embeddings = []
      for segment_id in segment_ids:
        original = np.unique(clip[relabelled == segment_id])[0]
        track_embedding.setdefault(original, rng.normal(size=8))
        embeddings.append(track_embedding[original])
      scorer.add_clip(sequence_id=sequence_id, frame_ids=frame_ids, panoptic=relabelled,
                      segment_ids=segment_ids, query_embeddings=np.array(embeddings).reshape(-1, 8),
                      labels=clip)
  result = scorer.result()
  assert scorer.num_frames == sum(len(l) for _, l in sequences)
  assert scorer.num_sequences == 2
  assert result['STQ'] == pytest.approx(1.0)
  assert result['AQ'] == pytest.approx(1.0)


def test_without_association_ids_break_and_aq_drops(tmp_path):
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / 'synth'), num_train_sequences=1,
                                            num_val_sequences=1, train_frames=4, val_frames=8)
  (sequence_id, labels), = list(synthetic.ground_truth_sequences(root, 'val'))
  scorer = _scorer(2, use_stitching=False, memory_type='none')
  rng = np.random.default_rng(1)
  for index in clips.sequence_clips(len(labels), 2):  # 8 frames: no padding.
    clip = labels[index.take]
    relabelled, segment_ids, embeddings = _clip_local(clip, rng)
    scorer.add_clip(sequence_id=sequence_id, frame_ids=index.frame_ids,
                    panoptic=relabelled, segment_ids=segment_ids, query_embeddings=embeddings,
                    labels=clip)
  result = scorer.result()
  assert result['IoU'] == pytest.approx(1.0)
  assert result['AQ'] < 0.5


def test_several_metrics_see_the_same_frames(tmp_path):
  from deeplab2_vkmax.evaluation import video_panoptic_quality  # pylint: disable=g-import-not-at-top
  root = synthetic.ensure_synthetic_dataset(str(tmp_path / 'synth'), num_train_sequences=1,
                                            num_val_sequences=1, train_frames=4, val_frames=7)
  (sequence_id, labels), = list(synthetic.ground_truth_sequences(root, 'val'))
  base = _scorer(2)
  vpq = video_panoptic_quality.VideoPanopticQuality(
      DESCRIPTOR.num_classes, DESCRIPTOR.thing_class_ids, DESCRIPTOR.ignore_label,
      DIVISOR, window_sizes=[1, 2])
  scorer = video_scorer.VideoScorer(
      associater_fn=lambda: video_associater.VideoAssociater(
          label_divisor=DIVISOR,
          thing_class_ids=DESCRIPTOR.thing_class_ids),
      metrics={'stq': base.metric, 'vpq': vpq})
  rng = np.random.default_rng(2)
  for index in clips.sequence_clips(len(labels), 2):
    relabelled, segment_ids, embeddings = _clip_local(labels[index.take], rng)
    scorer.add_clip(sequence_id=sequence_id, frame_ids=index.frame_ids, panoptic=relabelled,
                    segment_ids=segment_ids, query_embeddings=embeddings,
                    labels=labels[index.take])
  results = scorer.results()
  assert scorer.result() is not None and set(results) == {'stq', 'vpq'}
  assert results['vpq']['Length_per_seq'] == [len(labels)] == results['stq']['Length_per_seq']
  assert results['stq']['IoU'] == pytest.approx(1.0)
  assert results['vpq']['VPQ_per_window'][1] == pytest.approx(1.0)
