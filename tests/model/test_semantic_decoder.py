"""Tests for deeplab2_vkmax.model.heads.semantic_decoder."""

import pytest
import tensorflow as tf

from deeplab2_vkmax.model.heads import semantic_decoder


def test_aspp_branches(check_layer):
  x = tf.random.normal([2, 4, 6, 16])
  check_layer(semantic_decoder.ASPPConv(filters=8, atrous_rate=2), x,
              (2, 4, 6, 8))
  check_layer(semantic_decoder.ASPPPool(filters=8), x, (2, 4, 6, 8))
  check_layer(semantic_decoder.ASPP(filters=8, atrous_rates=(1, 2, 3)), x,
              (2, 4, 6, 8))


def test_semantic_decoder(check_layer):
  decoder = semantic_decoder.KMaXSemanticDecoder(
      aspp_channels=8, low_level=(('res3', 4), ('res2', 2)),
      decoder_channels=8)
  endpoints = {
      'stage5': tf.random.normal([2, 2, 3, 32]),
      'res3': tf.random.normal([2, 5, 9, 12]),
      'res2': tf.random.normal([2, 9, 17, 10]),
  }
  check_layer(decoder, endpoints, (2, 9, 17, 8))


def test_aspp_drops_out_its_projection_only_in_training():
  # DeepLab2's ASPP: Dropout(0.1) after the projection, without variables.
  aspp = semantic_decoder.ASPP(filters=32, atrous_rates=(1, 2, 3))
  x = tf.random.normal([2, 16, 16, 8], seed=9)
  assert (aspp(x, training=False).numpy() != 0.0).all()
  zeros = (aspp(x, training=True).numpy() == 0.0).mean()
  assert 0.06 < zeros < 0.14
  assert all('seed' not in w.path for w in aspp.weights)
  with pytest.raises(ValueError, match='dropout_rate'):
    semantic_decoder.ASPP(dropout_rate=1.0)
