"""KMaXLoss equals DeepLab2's MaXDeepLabLoss term by term on the loss pack.

testdata/loss_cityscapes_r50 holds DeepLab2's 29 loss terms (4 per output for the
main and 6 deep-supervision outputs, and the semantic loss) for one Cityscapes
ground truth (things, stuff, a crowd region, void, an instance that vanishes at
the loss resolution) and two predictions: well-conditioned synthetic ones and the
cityscapes_r50 pack's own model outputs, whose matching DeepLab2 decides by
tie-breaking (all weights ~0), so that case runs with DeepLab2's stored matching.
"""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from dl2_packs import deeplab2_assignment
from dl2_packs import load_config
from dl2_packs import loss_pack
from dl2_packs import loss_terms
from dl2_packs import model_output_predictions
from dl2_packs import synthetic_predictions

# Relative tolerance of every term (the pack's README: float32, given inputs).
_RTOL = 1e-5
_ALL_PIXELS = 33 * 65  # sample_k covering every pixel: no sampling noise.


def _loss(sample_k):
  config = load_config('cityscapes_r50')
  config.model_options.clip_kmax.instance_discrimination_sample_k = sample_k
  return builder.build_loss(config, dataset_lib.get_dataset_descriptor(
      config.train_dataset_options.dataset))


@pytest.fixture(name='pack', scope='module')
def pack_fixture():
  gt, values = loss_pack()
  label = {common.PANOPTIC_LABEL: tf.constant(gt['gt/panoptic'][np.newaxis, np.newaxis])}
  return gt, values, label


@pytest.mark.parametrize('case', ['synthetic_predictions', 'model_outputs'])
def test_every_term_and_the_total_equal_deeplab2(pack, case):
  gt, values, label = pack
  loss = _loss(_ALL_PIXELS)
  if case == 'synthetic_predictions':
    y_pred, kwargs = synthetic_predictions(), {}
  else:
    y_pred = model_output_predictions()
    kwargs = {'assignment': deeplab2_assignment(loss, gt, case)}
  ours = loss_terms(loss(label, y_pred, **kwargs))
  expected = values['cases'][case]['deterministic']['values']
  assert set(expected) <= set(ours)
  assert len(expected) == 30  # 29 terms and the total.
  failures = [f'{key}: ours {ours[key]:.8g}, DeepLab2 {value:.8g}'
              for key, value in expected.items()
              if not abs(ours[key] - value) <= _RTOL * abs(value)]
  assert not failures, '; '.join(failures)


def test_our_hungarian_matching_is_deeplab2s(pack):
  """Where the matching is well defined (synthetic case) ours picks DeepLab2's."""
  gt, _, label = pack
  loss = _loss(_ALL_PIXELS)
  y_pred = synthetic_predictions()
  targets = loss.build_targets(label[common.PANOPTIC_LABEL])
  ours = loss._match(y_pred, targets, None)['assignment'].numpy()  # pylint: disable=protected-access
  theirs = deeplab2_assignment(loss, gt, 'synthetic_predictions').numpy()
  np.testing.assert_array_equal(ours, theirs)
  assert theirs.sum() == 14


def test_sampled_instance_discrimination_has_deeplab2s_mean(pack):
  """sample_k 1024 < pixels: our Gumbel sampling gives DeepLab2's expectation."""
  _, values, label = pack
  stochastic = values['cases']['synthetic_predictions']['stochastic']
  loss = _loss(stochastic['instance_discrimination_sample_k'])
  y_pred = synthetic_predictions()
  run = tf.function(lambda seed: loss(label, y_pred, sample_seed=seed)[
      common.INSTANCE_DISCRIMINATION_LOSS])
  runs = 8
  totals = np.array([run(tf.constant([7, i]))[0].numpy() for i in range(runs)])
  keys = ['instance_discrimination_loss'] + [
      f'aux_{i}instance_discrimination_loss' for i in range(6)]
  mean = sum(stochastic['mean'][k] for k in keys)
  # Independent draws per output: the std of the sum is about sqrt(7) of one.
  std = np.sqrt(sum(stochastic['std'][k] ** 2 for k in keys))
  assert abs(totals.mean() - mean) < 5 * std / np.sqrt(runs) + 1e-6, (totals, mean, std)
  assert totals.std() > 0  # Fresh samples per seed.
  # The all-pixel value differs: the sampling is real.
  assert abs(totals.mean() - sum(
      values['cases']['synthetic_predictions']['deterministic']['values'][k]
      for k in keys)) > 1.0
