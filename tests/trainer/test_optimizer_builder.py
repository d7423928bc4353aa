"""Tests for trainer/optimizer_builder.py: schedules, weight decay, multipliers."""

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
  schedule = optimizer_builder.build_learning_rate(_solver(poly_learning_power=2.0))
  assert float(schedule(0)) == pytest.approx(0.0)
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.25)  # (1 - 50/100) ** 2
  assert float(schedule(110)) == pytest.approx(0.0)
  assert float(schedule(500)) == pytest.approx(0.0)


def test_cosine_and_multiplier():
  schedule = optimizer_builder.build_learning_rate(_solver(learning_policy='cosine'), 0.1)
  assert float(schedule(60)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)


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


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match='adamw, adam, sgd'):
    optimizer_builder.build_optimizer(_solver(optimizer='lamb'), [])
