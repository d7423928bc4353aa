"""Tests for trainer/optimizer_builder.py: schedules, weight decay, multipliers."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.protos import trainer_pb2
from deeplab2_vkmax.trainer import optimizer_builder


def _solver(**fields):
  solver = trainer_pb2.SolverOptions(base_learning_rate=1.0, training_number_of_steps=110,
                                     warmup_steps=10)
  for name, value in fields.items():
    setattr(solver, name, value)
  return solver


def test_poly_with_warmup_values():
  """DeepLab2's schedule: PolynomialDecay over all 110 steps from step 0, with a
  linear warm-up replacing it for the first 10 steps (trainer_utils.WarmUp)."""
  schedule = optimizer_builder.build_learning_rate(_solver(poly_learning_power=2.0))
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(9)) == pytest.approx(0.9)
  # From the warm-up's end the decay has already run 10 of its 110 steps.
  assert float(schedule(10)) == pytest.approx((1 - 10 / 110) ** 2)
  assert float(schedule(55)) == pytest.approx(0.25)  # (1 - 55/110) ** 2
  assert float(schedule(110)) == pytest.approx(0.0)
  assert float(schedule(500)) == pytest.approx(0.0)


def test_cosine_and_multiplier():
  schedule = optimizer_builder.build_learning_rate(_solver(learning_policy='cosine'), 0.1)
  assert float(schedule(55)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 10 / 110)))


def test_schedule_round_trips_config():
  schedule = optimizer_builder.build_learning_rate(_solver())
  clone = optimizer_builder.WarmUpDecay(**schedule.get_config())
  assert float(clone(37)) == pytest.approx(float(schedule(37)))


def test_adamw_decays_kernels_only():
  layer = keras.layers.Dense(3)
  layer.build((None, 2))
  kernel_before = layer.kernel.numpy().copy()
  bias_before = np.ones(3, np.float32)
  layer.bias.assign(bias_before)
  solver = _solver(optimizer='adamw', adamw_weight_decay=0.5, warmup_steps=0,
                   base_learning_rate=0.1)
  optimizer = optimizer_builder.build_optimizer(solver, layer.trainable_variables)
  zeros = [tf.zeros_like(v) for v in layer.trainable_variables]
  optimizer.apply_gradients(zip(zeros, layer.trainable_variables))
  # With zero gradients only the decoupled decay moves a variable.
  np.testing.assert_allclose(layer.kernel.numpy(), kernel_before * (1 - 0.1 * 0.5), rtol=1e-5)
  np.testing.assert_allclose(layer.bias.numpy(), bias_before)


def test_weight_decay_follows_deeplab2s_rule_on_the_model():
  """DeepLab2 decays variables named `.*(kernel|weight)`; its checkpoint keys
  (ours are equal) name each variable as DeepLab2 does."""
  from deeplab2_vkmax.model import checkpoint_utils  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.model import clip_kmax  # pylint: disable=g-import-not-at-top
  model = clip_kmax.ClipKMaX(**dict(clip_kmax.tiny_model_kwargs(), backbone_name='axial_resnet50'))
  model.build((None, 1, 33, 33, 3))
  keyed = checkpoint_utils.checkpoint_variables(model.checkpoint_items)
  decayed = {key for key, v in keyed.items() if optimizer_builder.is_decayed(v)}
  expected = {key for key in keyed if re.match(r'.*(kernel|weight)$', key)}
  assert decayed == expected
  assert any(key.endswith('qkv_kernel') for key in decayed)
  assert any(key.endswith('depthwise_kernel') for key in decayed)
  assert not any(key.endswith(('cluster_centers', 'gamma', 'beta', 'bias', 'embeddings'))
                 for key in decayed)


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match='adamw, adam, sgd'):
    optimizer_builder.build_optimizer(_solver(optimizer='lamb'), [])


def test_backbone_learning_rate_multiplier_covers_exactly_the_encoder():
  """DeepLab2 (`Trainer._apply_gradients_to_optimizers`): a second optimizer at
  base_learning_rate x multiplier updates the encoder's variables, and only them."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.model import clip_kmax  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.protos import config_pb2  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.trainer import train_lib  # pylint: disable=g-import-not-at-top
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs())
  model.build((None, 1, 33, 33, 3))
  config = config_pb2.ExperimentOptions()
  config.trainer_options.solver_options.CopyFrom(_solver(backbone_learning_rate_multiplier=0.1))
  experiment = SimpleNamespace(config=config, model=model,
                               strategy=tf.distribute.get_strategy())
  (head_optimizer, head_vars), (backbone_optimizer, backbone_vars) = (
      train_lib.build_optimizers(experiment))
  encoder = {id(v) for v in model.checkpoint_items['encoder'].trainable_variables}
  assert {id(v) for v in backbone_vars} == encoder
  assert not encoder & {id(v) for v in head_vars}
  assert len(head_vars) + len(backbone_vars) == len(model.trainable_variables)
  for step in (5, 60):  # The schedules themselves (Keras keeps them as `_learning_rate`).
    assert float(backbone_optimizer._learning_rate(step)) == pytest.approx(  # pylint: disable=protected-access
        0.1 * float(head_optimizer._learning_rate(step)))  # pylint: disable=protected-access
