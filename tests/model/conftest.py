"""Shared checks for tests/model: every layer's shape, modes, tf.function, config;
DeepLab2's kMaX-R50 checkpoint keys."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf


def check_layer(layer, inputs, expected_shapes, **call_kwargs):
  """Asserts shapes in both modes and in tf.function, and the config round trip.

  `expected_shapes` mirrors the output structure with tuples at the leaves.
  """
  def shapes_of(outputs):
    return tf.nest.map_structure(lambda t: tuple(t.shape), outputs)

  eval_out = layer(inputs, training=False, **call_kwargs)
  assert shapes_of(eval_out) == expected_shapes
  graph_out = tf.function(
      lambda x: layer(x, training=False, **call_kwargs))(inputs)
  for a, b in zip(tf.nest.flatten(graph_out), tf.nest.flatten(eval_out)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
  # Training last: it updates BN moving statistics.
  train_out = layer(inputs, training=True, **call_kwargs)
  assert shapes_of(train_out) == expected_shapes

  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  assert shapes_of(clone(inputs, training=False, **call_kwargs)) == expected_shapes
  restored = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(layer))
  assert type(restored) is type(layer)
  return eval_out


@pytest.fixture(name='check_layer')
def check_layer_fixture():
  return check_layer


@pytest.fixture(name='deeplab2_r50_keys', scope='session')
def deeplab2_r50_keys_fixture():
  """{checkpoint key: shape list} of DeepLab2's kMaX-R50 checkpoint (testdata copy)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'testdata',
                      'deeplab2_kmax_r50_checkpoint_keys.txt')
  keys = {}
  with open(path) as key_file:
    for line in key_file:
      if line.startswith('#') or not line.strip():
        continue
      name, shape = line.rstrip('\n').split('\t')
      keys[name] = [int(d) for d in shape.strip('[]').split(',') if d.strip()]
  return keys
