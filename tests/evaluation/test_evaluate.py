"""The SavedModel sequence evaluator, end to end on a tiny exported clip-kMaX."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax import export_model
from deeplab2_vkmax.data import build_step_data
from deeplab2_vkmax.data import clip_reader
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.data import synthetic
from deeplab2_vkmax.evaluation import evaluate
from deeplab2_vkmax.evaluation import prediction_io
from deeplab2_vkmax.evaluation import stq
from deeplab2_vkmax.evaluation import video_panoptic_quality
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax

_CONFIG = os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'synthetic',
                       'clip_kmax_tiny.textproto')
DESCRIPTOR = dataset_lib.get_dataset_descriptor('synthetic')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(SavedModel dir, TFRecord pattern) of a tiny model and 2 val sequences of 5 frames."""
  root = tmp_path_factory.mktemp('evaluate')
  data = synthetic.ensure_synthetic_dataset(str(root / 'synth'), num_train_sequences=1,
                                            num_val_sequences=2, train_frames=2, val_frames=5,
                                            height=33, width=65)
  build_step_data.convert_split(data, 'val', str(root / 'records'), num_shards=1,
                                dataset_name='synthetic')
  config = config_lib.load_experiment_config(_CONFIG)
  # An untrained model: keep every segment so the metrics see real predictions.
  options = config.evaluator_options
  options.pixel_confidence_threshold = 0.0
  options.maskwise_postprocessing.transformer_class_confidence_threshold_thing = 0.0
  options.maskwise_postprocessing.transformer_class_confidence_threshold_stuff = 0.0
  options.maskwise_postprocessing.overlapping_threshold = 0.0
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(DESCRIPTOR.num_classes))
  model(tf.zeros([1, 2, 33, 65, 3]), training=False)
  path = export_model.export_saved_model(
      model, builder.build_post_processor(config, DESCRIPTOR), config, str(root / 'export'))
  return path, str(root / 'records' / 'val-*.tfrecord')


def _ground_truth(pattern):
  return {sequence_id: labels for sequence_id, _, labels
          in clip_reader.read_sequences(pattern, DESCRIPTOR)}


@pytest.mark.slow
@pytest.mark.parametrize('clip_length, save', [(2, 'kitti_step'), (1, 'vipseg')])
def test_evaluator_end_to_end_and_prediction_round_trip(exported, tmp_path, clip_length, save):
  saved_model, pattern = exported
  lines = []
  report = evaluate.run_evaluation(
      saved_model=saved_model, dataset='synthetic', file_pattern=pattern,
      output_dir=str(tmp_path), clip_length=clip_length, metrics=['stq', 'vpq', 'pq', 'miou'],
      save_predictions=save, progress=False, log_fn=lines.append)
  on_disk = json.loads((tmp_path / 'metrics.json').read_text())
  windows = report['overall'].pop('VPQ_per_window')
  assert on_disk['overall'].pop('VPQ_per_window') == pytest.approx(windows, nan_ok=True)
  assert on_disk['overall'] == pytest.approx(report['overall'])
  assert report['num_sequences'] == 2 and report['num_frames'] == 10
  assert len(report['per_sequence']) == 2
  for key in ('STQ', 'AQ', 'SQ', 'VPQ', 'PQ', 'mIoU'):
    assert 0.0 <= report['overall'][key] <= 1.0
  assert report['overall']['SQ'] > 0.0  # The model predicts something.
  table = lines[0]
  assert '{1,2,4,6}' in table and 'overall' in table and 'STQ' in table

  # Predictions written in the official format read back give the same numbers.
  labels = _ground_truth(pattern)
  quality = stq.STQuality(DESCRIPTOR.num_classes, DESCRIPTOR.thing_class_ids,
                          DESCRIPTOR.ignore_label, DESCRIPTOR.panoptic_label_divisor, 2 ** 32)
  vpq = video_panoptic_quality.VideoPanopticQuality(
      DESCRIPTOR.num_classes, DESCRIPTOR.thing_class_ids, DESCRIPTOR.ignore_label,
      DESCRIPTOR.panoptic_label_divisor, window_sizes='video_kmax')
  out = tmp_path / 'predictions'
  divisor = DESCRIPTOR.panoptic_label_divisor
  if save == 'kitti_step':
    predictions = {s: np.stack([prediction_io.read_kitti_step(
        str(out / s / f'{i:06d}.png'), divisor) for i in range(len(gt))])
                   for s, gt in labels.items()}
  else:
    predictions = {}
    for video, _, panoptic in prediction_io.read_vipseg(
        str(out), label_divisor=divisor, ignore_label=DESCRIPTOR.ignore_label,
        thing_class_ids=DESCRIPTOR.thing_class_ids):
      predictions.setdefault(video, []).append(panoptic)
    predictions = {s: np.stack(v) for s, v in predictions.items()}
  for sequence_id, gt in labels.items():
    quality.update_state(gt, predictions[sequence_id], sequence_id)
    vpq.update_state(gt, predictions[sequence_id], sequence_id)
  assert quality.result()['STQ'] == pytest.approx(report['overall']['STQ'], abs=1e-12)
  assert quality.result()['IoU'] == pytest.approx(report['overall']['SQ'], abs=1e-12)
  assert vpq.result()['VPQ'] == pytest.approx(report['overall']['VPQ'], abs=1e-12)


@pytest.mark.slow
def test_two_workers_and_no_overlap_equal_one_overlapped_worker(exported, tmp_path):
  saved_model, pattern = exported
  lines = []
  reports = [evaluate.run_evaluation(
      saved_model=saved_model, dataset='synthetic', file_pattern=pattern,
      output_dir=str(tmp_path / f'{n}_{depth}'), num_workers=n, queue_depth=depth,
      progress=False, log_fn=lines.append)
             for n, depth in ((1, 2), (2, 2), (1, 0))]
  windows = [r['overall'].pop('VPQ_per_window') for r in reports]
  for other in reports[1:]:
    assert windows[1] == pytest.approx(windows[0], nan_ok=True)
    assert other['overall'] == pytest.approx(reports[0]['overall'], abs=1e-12)
    assert sorted(other['per_sequence']) == sorted(reports[0]['per_sequence'])
    for sequence_id, values in reports[0]['per_sequence'].items():
      assert other['per_sequence'][sequence_id] == pytest.approx(values, abs=1e-12)
  assert [len(r['throughput']) for r in reports] == [1, 2, 1]
  assert reports[0]['throughput'][0]['model_frames_per_second'] > 0
  assert 'overlapped' in lines[1] and 'one after the other' in lines[5]


def test_missing_file_pattern_and_bad_saved_model_give_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match='nothing-here'):
    evaluate.run_evaluation(saved_model=str(tmp_path), dataset='synthetic',
                            file_pattern=str(tmp_path / 'nothing-here-*.tfrecord'),
                            output_dir=str(tmp_path))
  module = tf.Module()
  module.f = tf.function(lambda x: {'y': x}, input_signature=[tf.TensorSpec([], tf.float32)])
  tf.saved_model.save(module, str(tmp_path / 'other'),
                      signatures={'serving_default': module.f.get_concrete_function()})
  with pytest.raises(ValueError, match='expected input') as error:
    evaluate.load_serving_signature(str(tmp_path / 'other'))
  assert '\n' not in str(error.value)
  with pytest.raises(ValueError, match='no loadable SavedModel'):
    evaluate.load_serving_signature(str(tmp_path / 'absent'))


def test_unknown_metric_lists_the_valid_ones():
  with pytest.raises(ValueError, match='stq'):
    evaluate.build_metrics(['ap'], DESCRIPTOR, 'video_kmax')


@pytest.mark.slow
def test_association_bench_on_model_scores_like_the_evaluator(exported, tmp_path):
  """bench/association_on_model.py associates and scores the model's clips
  exactly as the SavedModel evaluator does (same config: stitching + HiLA-MB)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  saved_model, pattern = exported
  bench_dir = os.path.join(os.path.dirname(__file__), '..', '..', 'bench')
  sys.path.insert(0, bench_dir)
  try:
    on_model = importlib.import_module('association_on_model')
  finally:
    sys.path.remove(bench_dir)
  videos = on_model.predict_videos(saved_model, pattern, DESCRIPTOR, -1)
  assert len(videos) == 2 and [len(v.ground_truth) for v in videos] == [5, 5]
  assert [len(v.clips[1]) for v in videos] == [5, 5]  # T = 1: one clip a frame
  assert [len(v.clips[2]) for v in videos] == [4, 4]  # T = 2: sharing one frame
  labels = on_model.labels_of(DESCRIPTOR)
  for clip_length in (1, 2):
    aq, _, _, per_track = on_model.association.run_variant(
        {'model': videos}, clip_length, True, 'hila', labels=labels)
    report = evaluate.run_evaluation(
        saved_model=saved_model, dataset='synthetic', file_pattern=pattern,
        output_dir=str(tmp_path / f't{clip_length}'), clip_length=clip_length,
        metrics=['stq'], progress=False, log_fn=lambda _: None)
    assert aq == pytest.approx(report['overall']['AQ'], abs=1e-12)
    terms = [v for video in per_track['model'] for v in video.values()]
    assert aq == pytest.approx(np.mean(terms))


def test_dataset_of_another_model_is_refused_naming_both(tmp_path):
  """A model trained on the synthetic set, evaluated as KITTI-STEP, would score 0."""
  with open(_CONFIG) as f:
    (tmp_path / 'config.textproto').write_text(f.read())  # As the export writes it.
  kitti = dataset_lib.get_dataset_descriptor('kitti_step')
  with pytest.raises(ValueError, match=r'trained on "synthetic" \(6 classes, label divisor '
                     r'1000\) but --dataset=kitti_step has 19 classes') as error:
    evaluate.check_dataset_matches(str(tmp_path), kitti)
  assert '\n' not in str(error.value)
  evaluate.check_dataset_matches(str(tmp_path), DESCRIPTOR)  # Its own: fine.
  evaluate.check_dataset_matches(str(tmp_path / 'no_config'), kitti)  # Nothing to check.
