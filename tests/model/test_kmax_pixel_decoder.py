"""Tests for deeplab2_vkmax.model.pixel_decoder.kmax_pixel_decoder."""

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
