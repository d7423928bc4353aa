"""Tests for deeplab2_vkmax.model.pretrained_weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax.model import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import pretrained_weights
from deeplab2_vkmax.model.pixel_encoder import resnet
from deeplab2_vkmax.protos import config_pb2

_KERAS_EPSILON = 1.001e-5


@pytest.fixture(name='keras_resnet', scope='module')
def keras_resnet_fixture(tmp_path_factory):
  """(Keras ResNet50 with random weights incl. conv biases, its weights file)."""
  model = keras.applications.ResNet50(weights=None, include_top=False)
  rng = np.random.default_rng(0)
  for weight in model.weights:
    value = rng.uniform(0.5, 1.5, weight.shape) if 'variance' in weight.path else (
        rng.standard_normal(weight.shape) * 0.05)
    weight.assign(value.astype(np.float32))
  path = str(tmp_path_factory.mktemp('keras') / 'resnet50.weights.h5')
  model.save_weights(path)
  return model, path


def _encoder(**kwargs):
  encoder = resnet.ResNet(**kwargs)
  encoder.build((None, 65, 65, 3))
  return encoder


def test_every_encoder_variable_gets_its_keras_weight(keras_resnet):
  keras_model, path = keras_resnet
  encoder = _encoder()
  assert pretrained_weights.load_keras_resnet50_weights(encoder, path) == 265
  ours = checkpoint_utils.checkpoint_variables({'e': encoder})
  assert len(ours) == len(encoder.variables) == 265
  layer = keras_model.get_layer
  np.testing.assert_array_equal(ours['e/_stem/_conv/kernel'].numpy(),
                                layer('conv1_conv').kernel.numpy())
  np.testing.assert_array_equal(
      ours['e/_stage3/_block1/_shortcut/_batch_norm/gamma'].numpy(),
      layer('conv3_block1_0_bn').gamma.numpy())
  # The conv bias is folded into the BN moving mean.
  np.testing.assert_allclose(
      ours['e/_stage5/_block3/_conv3_bn/_batch_norm/moving_mean'].numpy(),
      layer('conv5_block3_3_bn').moving_mean.numpy()
      - layer('conv5_block3_3_conv').bias.numpy(), rtol=1e-6)
  for key, (layer_name, weight) in pretrained_weights.resnet50_name_map().items():
    expected = getattr(layer(layer_name), weight).numpy()
    if weight == 'moving_mean':
      expected = expected - layer(layer_name[:-3] + '_conv').bias.numpy()
    np.testing.assert_allclose(ours['e/' + key].numpy(), expected, rtol=1e-6,
                               err_msg=key)


def test_stem_and_stage2_reproduce_keras(keras_resnet):
  keras_model, path = keras_resnet
  encoder = _encoder(bn_epsilon=_KERAS_EPSILON)
  pretrained_weights.load_keras_resnet50_weights(encoder, path)
  images = tf.random.stateless_normal([1, 65, 97, 3], seed=[1, 2])
  probe = keras.Model(keras_model.input,
                      [keras_model.get_layer('conv1_relu').output,
                       keras_model.get_layer('conv2_block3_out').output])
  stem, stage2 = probe(images, training=False)
  endpoints = encoder(images, training=False)
  np.testing.assert_allclose(endpoints['stage1'].numpy(), stem.numpy(), atol=1e-4)
  np.testing.assert_allclose(endpoints['stage2'].numpy(), stage2.numpy(), atol=1e-3,
                             rtol=1e-4)


def test_wrong_encoder_and_backbone_name_raise(keras_resnet):
  _, path = keras_resnet
  with pytest.raises(ValueError, match=r"lacks: \['_stage2/_block2/"):
    pretrained_weights.load_keras_resnet50_weights(
        _encoder(block_counts=(1, 1, 1, 1)), path)
  with pytest.raises(ValueError, match='shape mismatches'):
    pretrained_weights.load_keras_resnet50_weights(_encoder(width_multiplier=0.5), path)
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  with pytest.raises(ValueError, match=r"valid backbones: \['resnet50'\]"):
    pretrained_weights.load_pretrained_backbone(model, 'resnet101', path)


def test_clip_kmax_encoder_loads(keras_resnet):
  keras_model, path = keras_resnet
  model = clip_kmax.ClipKMaX(num_classes=3, num_mask_slots=8,
                             pixel_decoder_block_counts=(1, 1, 1, 1),
                             use_auxiliary_semantic_decoder=False,
                             use_auxiliary_semantic_head=False)
  model(tf.zeros([1, 1, 65, 65, 3]))
  assert pretrained_weights.load_pretrained_backbone(model, 'resnet50', path) == 265
  np.testing.assert_array_equal(
      model.checkpoint_items['encoder']._stem._conv.kernel.numpy(),
      keras_model.get_layer('conv1_conv').kernel.numpy())


def test_builder_reads_pretrained_weights(keras_resnet):
  _, path = keras_resnet
  config = config_pb2.ExperimentOptions()
  config.model_options.backbone.pretrained_weights = path
  tiny = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  tiny(tf.zeros([1, 1, 33, 65, 3]))
  # The tiny encoder does not fit ResNet-50 weights: loud, not silent.
  with pytest.raises(ValueError, match='shape mismatches'):
    builder.initialise_model_weights(config, tiny)
