"""Tests for deeplab2_vkmax.model.pixel_encoder.resnet."""

import pytest
import tensorflow as tf

from deeplab2_vkmax.model.pixel_encoder import resnet


def test_tiny_resnet_endpoints(check_layer):
  encoder = resnet.ResNet(width_multiplier=0.125, block_counts=(1, 1, 1, 1),
                          drop_path_keep_prob=0.9)
  images = tf.random.normal([2, 33, 65, 3], seed=0)
  expected = {
      'stage1': (2, 17, 33, 8),
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
