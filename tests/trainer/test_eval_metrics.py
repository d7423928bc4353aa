"""The trainer's evaluation scores each data set with the CLI evaluator's metrics."""

import json
import pathlib
import types

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import vkmax_testing
from deeplab2_vkmax import config as config_lib
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.evaluation import evaluate
from deeplab2_vkmax.trainer import data_lib
from deeplab2_vkmax.trainer import evaluator as evaluator_lib
from deeplab2_vkmax.trainer import train_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('name, expected', [
    ('synthetic/clip_kmax_tiny.textproto', {'stq', 'vpq'}),
    ('vipseg/clip_kmax_r50.textproto', {'stq', 'vpq'}),
    ('vspw/clip_kmax_r50_online.textproto', {'stq', 'miou', 'vc8', 'vc16'})])
def test_scorer_metrics_follow_the_data_set_protocol(name, expected):
  config = config_lib.load_experiment_config(str(REPO / 'configs' / name))
  descriptor = dataset_lib.get_dataset_descriptor(config.eval_dataset_options.dataset)
  scorer = train_lib.make_scorer_fn(config, descriptor)()
  assert set(scorer.metrics) == expected
  assert scorer.metric is scorer.metrics['stq']
  if 'vpq' in expected:  # The CLI's windows for this data set.
    reference = evaluate.build_metrics(['vpq'], descriptor,
                                       evaluate.default_vpq_windows(descriptor.name))['vpq']
    assert scorer.metrics['vpq'].describe() == reference.describe()


def test_vspw_evaluation_logs_miou_and_video_consistency(tmp_path):
  config = config_lib.load_experiment_config(
      str(REPO / 'configs' / 'vspw' / 'clip_kmax_r50_online.textproto'))
  descriptor = dataset_lib.get_dataset_descriptor('vspw')
  scorer = train_lib.make_scorer_fn(config, descriptor)()
  rng = np.random.default_rng(0)
  # A still video (VC counts pixels whose label holds over n frames), predicted
  # perfectly, frame by frame (online).
  frame = rng.integers(0, 3, (1, 6, 8)) * descriptor.panoptic_label_divisor
  labels = np.stack([frame] * 20)
  for t in range(20):
    scorer.add_clip(sequence_id='video', frame_ids=np.array([t]), panoptic=labels[t],
                    segment_ids=np.zeros(4, np.int32),
                    query_embeddings=np.zeros((4, 8), np.float32), labels=labels[t])
  lines = []
  owner = types.SimpleNamespace(_global_step=tf.Variable(7), _log_fn=lines.append,
                                _output_dir=str(tmp_path))
  logs = evaluator_lib.ClipKMaXEvaluator.eval_end(owner, scorer)
  assert logs['evaluation/step/mIoU'] == pytest.approx(1.0)
  assert logs['evaluation/step/VC8'] == pytest.approx(1.0)
  assert logs['evaluation/step/VC16'] == pytest.approx(1.0)
  assert 'evaluation/step/VPQ' not in logs
  assert any('mIoU 1.000' in line for line in lines)
  report = (tmp_path / 'metrics_step_7.json').read_text()
  assert '"VC16": 1.0' in report


def test_trainer_evaluation_equals_the_cli_on_the_same_weights(tiny_export, tmp_path):
  """One evaluation path: the trainer's evaluator (`train_lib.build_evaluator`) on
  the in-memory model and the CLI evaluator on its SavedModel give identical
  numbers."""
  saved_model, module = tiny_export
  config = vkmax_testing.tiny_config()  # The export's own config.
  synthetic = config.eval_dataset_options.synthetic
  synthetic.root_dir = str(tmp_path / 'synthetic')
  synthetic.num_train_sequences, synthetic.train_frames_per_sequence = 1, 2
  synthetic.num_val_sequences, synthetic.val_frames_per_sequence = 2, 5
  synthetic.frame_size[:] = [33, 65]
  experiment = types.SimpleNamespace(config=config, model=module.model,
                                     global_step=tf.Variable(0, dtype=tf.int64),
                                     run_dir=str(tmp_path / 'run'))
  logs = train_lib.build_evaluator(experiment, log_fn=lambda _: None).evaluate(-1)

  report = evaluate.run_evaluation(
      saved_model=saved_model, dataset='synthetic',
      file_pattern=data_lib.resolve_file_patterns(config.eval_dataset_options)[0],
      output_dir=str(tmp_path / 'cli'), progress=False, log_fn=lambda _: None)
  assert report['num_frames'] == 10 and report['clip_length'] == 2
  names = {'SQ': 'IoU'}
  compared = [key for key, value in report['overall'].items() if isinstance(value, float)]
  assert {'STQ', 'AQ', 'SQ', 'VPQ', 'VPQ_thing', 'VPQ_stuff'} <= set(compared)
  for key in compared:
    assert logs[f'evaluation/step/{names.get(key, key)}'] == report['overall'][key], key
  assert 0.0 < report['overall']['STQ'] < 1.0  # Real predictions, not an empty case.
  # The first sequence's tracking picture: 4 rows of input | truth | prediction, 2x.
  with Image.open(tmp_path / 'run' / 'eval' / 'overlay_step_0.png') as picture:
    assert picture.size == (3 * 2 * 65, 4 * 2 * 33)
  trainer_report = json.loads((tmp_path / 'run' / 'eval' / 'metrics_step_0.json').read_text())
  assert trainer_report['per_sequence'] == {
      sequence: {k: v for k, v in scores.items() if k in ('STQ', 'AQ', 'SQ', 'frames')}
      for sequence, scores in report['per_sequence'].items()}
