"""Tests for deeplab2_vkmax.model.pixel_decoder.kmax_pixel_decoder."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model.pixel_decoder import kmax_pixel_decoder


def _endpoints(batch=2):
  return {
      'stage1': tf.random.normal([batch, 17, 33, 8], seed=1),
      'stage2': tf.random.normal([batch, 9, 17, 32], seed=2),
      'stage3': tf.random.normal([batch, 5, 9, 64], seed=3),
      'stage4': tf.random.normal([batch, 3, 5, 128], seed=4),
      'stage5': tf.random.normal([batch, 2, 3, 256], seed=5),
  }


def test_os4_decoder(check_layer):
  decoder = kmax_pixel_decoder.KMaXPixelDecoder(
      widths=(32, 16, 16, 8), block_counts=(1, 2, 1, 1), num_heads=2,
      max_span=32)
  expected = {
      'decoder_stage1': (2, 2, 3, 128), 'decoder_stage2': (2, 3, 5, 64),
      'decoder_stage3': (2, 5, 9, 64), 'decoder_stage4': (2, 9, 17, 32),
      'decoder_output': (2, 9, 17, 32),
  }
  check_layer(decoder, _endpoints(), expected)


def test_os2_decoder(check_layer):
  decoder = kmax_pixel_decoder.KMaXPixelDecoder(
      widths=(32, 16, 16, 8, 4), block_counts=(1, 1, 1, 1, 1),
      block_types=('axial', 'axial', 'bottleneck', 'bottleneck', 'bottleneck'),
      num_heads=2, max_span=32)
  outputs = check_layer(decoder, _endpoints(), {
      'decoder_stage1': (2, 2, 3, 128), 'decoder_stage2': (2, 3, 5, 64),
      'decoder_stage3': (2, 5, 9, 64), 'decoder_stage4': (2, 9, 17, 32),
      'decoder_stage5': (2, 17, 33, 16), 'decoder_output': (2, 17, 33, 16)})
  assert outputs['decoder_output'] is outputs['decoder_stage5']


def test_resized_fuse(check_layer):
  fuse = kmax_pixel_decoder.ResizedFuse(filters=6)
  check_layer(fuse, (tf.random.normal([2, 3, 5, 4]),
                     tf.random.normal([2, 5, 9, 7])), (2, 5, 9, 6))


def test_r50_decoder_matches_deeplab2_parameter_count():
  decoder = kmax_pixel_decoder.KMaXPixelDecoder()
  decoder.build({k: (None, None, None, c) for k, c in (
      ('stage2', 256), ('stage3', 512), ('stage4', 1024), ('stage5', 2048))})
  assert sum(int(tf.size(w)) for w in decoder.trainable_weights) == 21_151_040


def test_mismatched_stage_options_raise():
  with pytest.raises(ValueError, match='equal-length'):
    kmax_pixel_decoder.KMaXPixelDecoder(widths=(8, 8, 8, 8),
                                        block_counts=(1, 1, 1))


def test_resized_fuse_activates_inputs_not_the_sum():
  # DeepLab2's ResizedFuse: each input is activated, projected (1x1 conv + BN)
  # and resized; the sum is returned without activation.
  fuse = kmax_pixel_decoder.ResizedFuse(filters=6)
  low = tf.random.normal([2, 3, 5, 4], seed=11)
  skip = tf.random.normal([2, 5, 9, 7], seed=12)
  out = fuse((low, skip), training=False).numpy()
  gelu = lambda x: tf.nn.gelu(x, approximate=False)
  low_part = tf.compat.v1.image.resize(
      fuse._resized_conv_bn1(gelu(low), training=False), [5, 9],
      align_corners=True)
  expected = low_part + fuse._resized_conv_bn2(gelu(skip), training=False)
  np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)
  assert out.min() < -0.2  # Below GELU's minimum (-0.17): not activated.


def test_decoder_endpoints_are_pre_activation():
  # DeepLab2's block groups return features before the activation; the
  # transformer decoder and the pixel-space head read them as such.
  decoder = kmax_pixel_decoder.KMaXPixelDecoder(
      widths=(32, 16, 16, 8), block_counts=(1, 2, 1, 1), num_heads=2,
      max_span=32)
  for block_stage in decoder._stages:
    assert all(block.activate_input for block in block_stage._blocks)
  decoder(_endpoints())
  for weight in decoder.weights:  # Residual branches start at zero: open them.
    if '_conv3_bn' in weight.path and weight.path.endswith('gamma'):
      weight.assign(tf.ones_like(weight))
  outputs = decoder(_endpoints(), training=True)
  for name, value in outputs.items():
    assert value.numpy().min() < -0.2, name
