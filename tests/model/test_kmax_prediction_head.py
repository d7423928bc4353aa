"""Tests for deeplab2_vkmax.model.heads.kmax_prediction_head."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model.heads import kmax_prediction_head


def test_pixel_space_head(check_layer):
  head = kmax_prediction_head.PixelSpaceHead(head_channels=8, output_channels=4)
  check_layer(head, tf.random.normal([2, 5, 9, 6]), (2, 5, 9, 4))


def test_class_head_void_prior(check_layer):
  head = kmax_prediction_head.TransformerClassHead(num_classes=19)
  check_layer(head, tf.random.normal([2, 7, 16]), (2, 7, 20))
  probs = tf.nn.softmax(head(tf.zeros([1, 3, 16]))).numpy()
  np.testing.assert_allclose(probs[..., -1], 0.9, rtol=1e-5)
  np.testing.assert_allclose(probs[..., :-1], 0.1 / 19, rtol=1e-5)


def test_prediction_head_stacks_frames(check_layer):
  head = kmax_prediction_head.KMaXPredictionHead(
      num_classes=3, pixel_space_head_channels=8, pixel_space_output_channels=4)
  inputs = {
      'pixel_feature': tf.random.normal([2 * 3, 5, 9, 6]),  # B=2, T=3
      'class_embedding': tf.random.normal([2, 7, 10]),
      'mask_embedding': tf.random.normal([2, 7, 10]),
  }
  outputs = check_layer(head, inputs, {
      common.PRED_PIXEL_SPACE_MASK_LOGITS: (2, 15, 9, 7),
      common.PRED_TRANSFORMER_CLASS_LOGITS: (2, 7, 4),
      common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: (6, 5, 9, 4),
  }, num_frames=3)
  norms = np.linalg.norm(
      outputs[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE].numpy(), axis=-1)
  np.testing.assert_allclose(norms, 1.0, rtol=1e-4)
  gamma = head._pixel_space_mask_batch_norm.gamma.numpy()
  np.testing.assert_allclose(gamma, [0.1])


def test_void_bias_is_added_in_the_forward_pass():
  # DeepLab2 (add_bias_towards_void): logits = conv(x) + b + c with
  # c = [0, ..., 0, log(p * C / (1 - p))] a constant, b the conv bias (zeros at
  # init), so a restored DeepLab2 class head gives DeepLab2's logits.
  head = kmax_prediction_head.TransformerClassHead(num_classes=4,
                                                   void_prior_prob=0.75)
  x = tf.random.normal([1, 3, 8], seed=5)
  head(x)
  np.testing.assert_array_equal(head._conv.bias.numpy(), np.zeros(5))
  head._conv.bias.assign([1.0, 2.0, 3.0, 4.0, 5.0])
  void = np.log(0.75 * 4 / 0.25)
  np.testing.assert_allclose(
      head(x).numpy(), head._conv(x).numpy() + [0, 0, 0, 0, void], rtol=1e-6)
  with pytest.raises(ValueError, match='void_prior_prob'):
    kmax_prediction_head.TransformerClassHead(num_classes=4, void_prior_prob=1.0)
