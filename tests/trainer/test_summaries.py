"""TensorBoard summaries of a run, read back from the event files.

One `train_and_eval` run of the tiny synthetic config (2 steps, one loop, image
summaries every 2 steps, evaluation on one sequence). Event files are read with
TF's own reader (`tf.compat.v1.train.summary_iterator`; TensorBoard need not be
installed). Asserted:
- train/: every loss term (`losses/train_<term>`, the PQ-style loss's two parts
  included), `learning_rate`, `gradient_norm`, `steps_per_second`,
  `nonfinite_loss_steps`, the matching diagnostics, all at step 2; and one image
  `tubes/input_gt_prediction` at step 2 whose PNG is [T*H, 3*W, 3] (frames in
  rows; input | ground truth | prediction in columns), the input column a real
  frame (not constant) and the ground-truth column with coloured segments;
- eval/: `evaluation/step/STQ`, `evaluation/step/AQ` and `evaluation/step/IoU`, the
  image `evaluation/overlay` (also `overlay_step_N.png`),
  at step 2, in [0, 1], equal to the returned metrics.
After 2 steps the model predicts void everywhere (a black prediction column), so
the panel's colouring is checked apart on hand-made maps
(`visualization.clip_summary_image`).
"""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import visualization
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.trainer import train_lib
from deeplab2_vkmax.trainer import trainer as trainer_lib
import tiny_runs

_STEPS = 2


def _events(directory: pathlib.Path):
  """{tag: [(step, tf.compat.v1.Summary.Value)]} of every event file in `directory`."""
  files = sorted(directory.glob('events.out.tfevents.*'))
  assert files, f'no event file in {directory}'
  tags = {}
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append((event.step, value))
  return tags


def _scalar(value) -> float:
  return float(tf.make_ndarray(value.tensor))


@pytest.mark.slow
def test_train_and_eval_writes_scalar_image_and_eval_summaries(tmp_path):
  config = tiny_runs.tiny_config(tmp_path, steps=_STEPS, steps_per_loop=_STEPS,
                                 save_image_summaries_steps=_STEPS)
  config.evaluator_options.max_num_sequences = 1
  result = train_lib.run_experiment('train_and_eval', config, str(tmp_path / 'runs'),
                                    log_fn=lambda _: None)
  run_dir = tmp_path / 'runs' / config.experiment_name

  train = _events(run_dir / 'train')
  for tag in ('losses/train_total_loss', 'losses/train_pq_style_loss',
              'losses/train_mask_id_cross_entropy_loss',
              'losses/train_instance_discrimination_loss', 'losses/train_semantic_loss',
              'losses/train_pq_style_loss_class_term',
              'losses/train_pq_style_loss_mask_dice_term', 'matching/num_gt_masks',
              'matching/mean_matched_dice', 'learning_rate', 'gradient_norm',
              'steps_per_second', 'nonfinite_loss_steps'):
    assert tag in train, (tag, sorted(train))
    assert [step for step, _ in train[tag]] == [_STEPS], tag
  total = _scalar(train['losses/train_total_loss'][0][1])
  assert np.isfinite(total) and total > 0
  parts = sum(_scalar(train[f'losses/train_{name}'][0][1]) for name in (
      'pq_style_loss', 'mask_id_cross_entropy_loss', 'instance_discrimination_loss',
      'semantic_loss'))
  assert parts == pytest.approx(total, rel=1e-5)

  images = train[trainer_lib.IMAGE_SUMMARY_NAME]
  assert [step for step, _ in images] == [_STEPS]
  value = images[0][1]
  assert value.metadata.plugin_data.plugin_name == 'images'
  width, height, png = tf.make_ndarray(value.tensor)
  panel = tf.io.decode_png(png).numpy()
  clip_length = config.train_dataset_options.clip_length
  crop_height, crop_width = config.train_dataset_options.crop_size
  assert panel.shape == (clip_length * crop_height, 3 * crop_width, 3)
  assert (int(width), int(height)) == (3 * crop_width, clip_length * crop_height)
  frames = panel[:, :crop_width]
  ground_truth = panel[:, crop_width:2 * crop_width]
  assert frames.std() > 5.0  # A real frame, not a blank.
  assert len(np.unique(ground_truth.reshape(-1, 3), axis=0)) >= 2  # Coloured segments.

  evaluation = _events(run_dir / 'eval')
  for name, key in (('STQ', 'STQ'), ('AQ', 'AQ'), ('IoU', 'IoU')):
    tag = f'evaluation/step/{name}'
    assert tag in evaluation, (tag, sorted(evaluation))
    (step, value), = evaluation[tag]
    assert step == _STEPS
    assert 0.0 <= _scalar(value) <= 1.0
    assert _scalar(value) == pytest.approx(result[f'evaluation/step/{key}'])
  # The first sequence's tracking picture, as an image summary and a PNG beside the JSON.
  (step, value), = evaluation['evaluation/overlay']
  assert step == _STEPS and value.metadata.plugin_data.plugin_name == 'images'
  picture = tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
  saved = tf.io.decode_png(tf.io.read_file(str(run_dir / 'eval' / f'overlay_step_{_STEPS}.png')))
  np.testing.assert_array_equal(picture, saved.numpy())
  assert picture.shape[1] == 3 * 2 * 128  # input | truth | prediction of 64x128 frames, 2x.


def test_clip_summary_image_layout_and_track_colours():
  descriptor = dataset_lib.get_dataset_descriptor('kitti_step')
  divisor = descriptor.panoptic_label_divisor
  thing = descriptor.thing_class_ids[0]
  frames = np.full([2, 4, 5, 3], 100.0, np.float32)
  truth = np.full([2, 4, 5], descriptor.ignore_label * divisor, np.int64)
  prediction = np.zeros([2, 4, 5], np.int64)  # Stuff class 0 everywhere...
  prediction[:, 1:3, 1:3] = thing * divisor + 7  # ...and one tube, id 7, in both frames.
  panel = visualization.clip_summary_image(frames, truth, prediction, descriptor)
  assert panel.shape == (8, 15, 3) and panel.dtype == np.uint8
  np.testing.assert_array_equal(panel[:, :5], 100)  # Input column.
  np.testing.assert_array_equal(panel[:, 5:10], 0)  # All-void ground truth: black.
  for t in range(2):
    predicted = panel[4 * t:4 * t + 4, 10:15]
    np.testing.assert_array_equal(predicted[1, 1], visualization.track_colour(7))
    np.testing.assert_array_equal(predicted[0, 0], descriptor.colormap[0])
  with pytest.raises(ValueError, match='must be'):
    visualization.clip_summary_image(frames, truth[:1], prediction, descriptor)
