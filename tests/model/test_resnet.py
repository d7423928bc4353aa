"""Tests for deeplab2_vkmax.model.pixel_encoder.resnet."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model.pixel_encoder import resnet


def test_tiny_resnet_endpoints(check_layer):
  encoder = resnet.ResNet(width_multiplier=0.125, block_counts=(1, 1, 1, 1),
                          drop_path_keep_prob=0.9)
  images = tf.random.normal([2, 33, 65, 3], seed=0)
  expected = {
      'stage1': (2, 17, 33, 8), 'res1': (2, 17, 33, 8),
      'stage2': (2, 9, 17, 32), 'res2': (2, 9, 17, 32),
      'stage3': (2, 5, 9, 64), 'res3': (2, 5, 9, 64),
      'stage4': (2, 3, 5, 128), 'res4': (2, 3, 5, 128),
      'stage5': (2, 2, 3, 256), 'res5': (2, 2, 3, 256),
  }
  check_layer(encoder, images, expected)
  assert encoder.output_channels['res5'] == 256


def test_resnet50_matches_deeplab2_parameter_count():
  encoder = resnet.ResNet()
  encoder.build((None, None, None, 3))
  assert sum(int(tf.size(w)) for w in encoder.trainable_weights) == 23_508_032


def test_block_counts_validated():
  with pytest.raises(ValueError, match='4 entries'):
    resnet.ResNet(block_counts=(1, 1, 1))


def _strides(conv_bn_act_layer):
  return conv_bn_act_layer._conv.strides[0]


def test_deeplab2_layout_strides_stage2_without_max_pool():
  # DeepLab2's kMaX resnet50: no max pool; the first block of every stage,
  # stage 2 included, strides by 2 on its 3x3 conv.
  encoder = resnet.ResNet(width_multiplier=0.125, block_counts=(2, 1, 1, 1))
  endpoints = encoder(tf.random.normal([1, 64, 96, 3], seed=1))
  assert encoder._max_pool is None
  sizes = [tuple(endpoints[f'stage{i}'].shape[1:3]) for i in range(1, 6)]
  assert sizes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
  for stage in encoder._stages:
    first = stage._blocks[0]
    assert (_strides(first._conv1_bn_act), _strides(first._conv2_bn_act),
            _strides(first._shortcut)) == (1, 2, 2)
  assert _strides(encoder._stage2._blocks[1]._conv2_bn_act) == 1


def test_keras_layout_pools_and_strides_the_first_1x1():
  encoder = resnet.ResNet(width_multiplier=0.125, block_counts=(1, 1, 1, 1),
                          layout='keras')
  endpoints = encoder(tf.random.normal([1, 64, 96, 3], seed=1))
  assert encoder._max_pool is not None
  sizes = [tuple(endpoints[f'stage{i}'].shape[1:3]) for i in range(1, 6)]
  assert sizes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
  first = encoder._stage2._blocks[0]
  assert (_strides(first._conv1_bn_act), _strides(first._conv2_bn_act)) == (1, 1)
  for stage in encoder._stages[1:]:
    first = stage._blocks[0]
    assert (_strides(first._conv1_bn_act), _strides(first._conv2_bn_act)) == (2, 1)
  with pytest.raises(ValueError, match="layout must be one of"):
    resnet.ResNet(layout='torchvision')


def test_stage_endpoints_are_pre_activation_res_endpoints_relu():
  # DeepLab2's AxialResNet: 'stageN' is the block sum before the ReLU (what
  # the kMaX pixel decoder LayerNorms), 'resN' = relu('stageN').
  encoder = resnet.ResNet(width_multiplier=0.125, block_counts=(1, 1, 1, 1))
  endpoints = encoder(tf.random.normal([2, 33, 33, 3], seed=2), training=True)
  for index in range(1, 6):
    stage = endpoints[f'stage{index}'].numpy()
    assert stage.min() < 0.0, index
    np.testing.assert_array_equal(endpoints[f'res{index}'].numpy(),
                                  np.maximum(stage, 0.0))


def test_drop_path_linear_schedule_from_stride_16():
  # keep = 1 - (1 - p) * (log2(input stride) - 1) / 4 for input stride >= 16,
  # else 1 (DeepLab2 get_model: 'linear', drop_path_beyond_stride 16).
  p = 0.6
  encoder = resnet.ResNet(width_multiplier=0.125, drop_path_keep_prob=p)
  rates = [[block.drop_path_keep_prob for block in stage._blocks]
           for stage in encoder._stages]
  at16 = 1.0 - 0.4 * 3 / 4  # 0.7
  expected = [[1.0] * 3, [1.0] * 4, [1.0] + [at16] * 5, [at16, p, p]]
  for ours, theirs in zip(rates, expected):
    np.testing.assert_allclose(ours, theirs)
  for stage in encoder._stages:
    for block in stage._blocks:
      assert block._drop_path.keep_prob == block.drop_path_keep_prob


def test_keras_layout_has_the_same_variables():
  ours = resnet.ResNet(width_multiplier=0.25)
  keras_layout = resnet.ResNet(width_multiplier=0.25, layout='keras')
  for encoder in (ours, keras_layout):
    encoder.build((None, None, None, 3))
  assert ([(w.path, tuple(w.shape)) for w in ours.weights] ==
          [(w.path.replace(keras_layout.name, ours.name, 1), tuple(w.shape))
           for w in keras_layout.weights])
