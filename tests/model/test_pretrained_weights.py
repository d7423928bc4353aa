"""Tests for deeplab2_vkmax.model.pretrained_weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab2_vkmax import builder
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import pretrained_weights
from deeplab2_vkmax.model.pixel_encoder import convnext
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


@pytest.mark.parametrize('height,width', [(65, 97), (64, 96)])
def test_keras_layout_reproduces_keras_resnet50(keras_resnet, height, width):
  # Odd and even sizes: Keras pads its 7x7/2 stem conv and 3x3/2 max pool
  # symmetrically (ZeroPadding2D), as our strided convs and pool do.
  keras_model, path = keras_resnet
  encoder = _encoder(layout='keras', bn_epsilon=_KERAS_EPSILON)
  pretrained_weights.load_keras_resnet50_weights(encoder, path)
  images = tf.random.stateless_normal([1, height, width, 3], seed=[1, 2])
  names = ['conv1_relu'] + [f'conv{s}_block{n}_out' for s, n in
                            ((2, 3), (3, 4), (4, 6), (5, 3))]
  probe = keras.Model(keras_model.input,
                      [keras_model.get_layer(name).output for name in names])
  expected = probe(images, training=False)
  endpoints = encoder(images, training=False)
  for index, theirs in enumerate(expected, start=1):
    ours = endpoints[f'res{index}'].numpy()
    scale = np.abs(theirs.numpy()).max()
    np.testing.assert_allclose(ours / scale, theirs.numpy() / scale, atol=1e-4,
                               err_msg=names[index - 1])


def test_deeplab2_layout_loads_the_same_weights_but_differs(keras_resnet):
  keras_model, path = keras_resnet
  encoder = _encoder(bn_epsilon=_KERAS_EPSILON)  # layout='deeplab2'
  assert pretrained_weights.load_keras_resnet50_weights(encoder, path) == 265
  images = tf.random.stateless_normal([1, 65, 97, 3], seed=[1, 2])
  stem = keras.Model(keras_model.input, keras_model.get_layer('conv1_relu').output)
  endpoints = encoder(images, training=False)
  # Same stem; no max pool, so stage 2 (OS4) comes from a strided 3x3 conv.
  np.testing.assert_allclose(endpoints['res1'].numpy(),
                             stem(images, training=False).numpy(), atol=1e-4)
  keras_stage2 = keras.Model(
      keras_model.input, keras_model.get_layer('conv2_block3_out').output)(images)
  assert endpoints['res2'].shape == keras_stage2.shape
  assert not np.allclose(endpoints['res2'].numpy(), keras_stage2.numpy(),
                         atol=1e-2)


def test_wrong_encoder_and_backbone_name_raise(keras_resnet):
  _, path = keras_resnet
  with pytest.raises(ValueError, match=r"lacks: \['_stage2/_block2/"):
    pretrained_weights.load_keras_resnet50_weights(
        _encoder(block_counts=(1, 1, 1, 1)), path)
  with pytest.raises(ValueError, match='shape mismatches'):
    pretrained_weights.load_keras_resnet50_weights(_encoder(width_multiplier=0.5), path)
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=3))
  with pytest.raises(ValueError, match=r"valid backbones: \['convnext_base', "
                     r"'convnext_large', 'convnext_small', 'convnext_tiny', 'resnet50', "
                     r"'resnet50_keras'\]"):
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


# ConvNeXt-T: blocks and widths per stage (Liu et al.), Keras's ImageNet
# normalisation (applied inside Keras ConvNeXt models).
_CONVNEXT_T = dict(block_counts=(3, 3, 9, 3), widths=(96, 192, 384, 768))
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(name='keras_convnext', scope='module')
def keras_convnext_fixture(tmp_path_factory):
  """(Keras ConvNeXtTiny with random weights, its weights file)."""
  model = keras.applications.ConvNeXtTiny(weights=None, include_top=False)
  rng = np.random.default_rng(1)
  for weight in model.weights:
    weight.assign((rng.standard_normal(weight.shape) * 0.05
                   + (1.0 if weight.path.endswith('gamma') else 0.0)).astype(np.float32))
  path = str(tmp_path_factory.mktemp('keras') / 'convnext_tiny.weights.h5')
  model.save_weights(path)
  return model, path


def _convnext_tiny(**kwargs):
  kwargs.setdefault('zero_padding_for_downstream', False)  # Keras's layout.
  encoder = convnext.ConvNeXt(**_CONVNEXT_T, **kwargs)
  encoder.build((None, 64, 96, 3))
  return encoder


def test_every_convnext_variable_gets_its_keras_weight(keras_convnext):
  keras_model, path = keras_convnext
  encoder = _convnext_tiny()
  assert pretrained_weights.load_keras_convnext_weights(
      encoder, path, 'convnext_tiny') == len(encoder.weights) == 178
  layer = keras_model.get_layer
  stem = keras_model.get_layer('convnext_tiny_stem')
  np.testing.assert_array_equal(encoder.downsample_layers[0][0].kernel.numpy(),
                                stem.get_layer('convnext_tiny_stem_conv').kernel.numpy())
  block = encoder.stages[2][8]
  theirs = 'convnext_tiny_stage_2_block_8'
  # Keras's depthwise conv is a grouped Conv2D: kernel [7, 7, 1, C], as ours.
  np.testing.assert_array_equal(block.depthwise_conv.kernel.numpy(),
                                layer(f'{theirs}_depthwise_conv').kernel.numpy())
  np.testing.assert_array_equal(block.pointwise_conv2.kernel.numpy(),
                                layer(f'{theirs}_pointwise_conv_2').kernel.numpy())
  np.testing.assert_array_equal(block.layer_scale.numpy()[0, 0, 0],
                                layer(f'{theirs}_layer_scale').gamma.numpy())
  downsample = keras_model.get_layer('convnext_tiny_downsampling_block_2')
  np.testing.assert_array_equal(
      encoder.downsample_layers[3][1].bias.numpy(),
      downsample.get_layer('convnext_tiny_downsampling_conv_2').bias.numpy())
  # Every mapped pair, and every Keras weight is some encoder variable except
  # the final LayerNorm (gamma, beta), which the encoder does not have.
  ours = {key.split('/', 1)[1]: v for key, v in
          checkpoint_utils.checkpoint_variables({'e': encoder}).items()}
  leaves, stack = {}, list(keras_model.layers)
  while stack:  # The stem and downsampling blocks are nested Sequentials.
    nested = stack.pop()
    if getattr(nested, 'layers', None):
      stack.extend(nested.layers)
    else:
      leaves[nested.name] = nested
  used = set()
  name_map = pretrained_weights.convnext_name_map('convnext_tiny', (3, 3, 9, 3))
  assert len(name_map) == 178
  for key, (layer_name, weight) in name_map.items():
    source = getattr(leaves[layer_name], weight)
    used.add(id(source))
    expected = source.numpy().reshape(ours[key].shape)
    np.testing.assert_array_equal(ours[key].numpy(), expected, err_msg=key)
  assert sorted(w.path for w in keras_model.weights if id(w) not in used) == [
      'layer_normalization/beta', 'layer_normalization/gamma']


def test_convnext_stages_reproduce_keras_after_its_normalisation(keras_convnext):
  keras_model, path = keras_convnext
  encoder = _convnext_tiny()
  pretrained_weights.load_keras_convnext_weights(encoder, path, 'convnext_tiny')
  pixels = tf.random.stateless_uniform([2, 64, 96, 3], seed=[3, 4], maxval=255.0)
  # The end of each stage: the input of the next downsampling block, and of
  # the final LayerNorm for stage 5.
  probe = keras.Model(keras_model.input, [
      keras_model.get_layer(f'convnext_tiny_downsampling_block_{i}').input
      for i in range(3)] + [keras_model.layers[-1].input])
  expected = probe(pixels, training=False)
  # Keras normalises raw pixels inside the model; our encoder takes the
  # normalised input, so it gets Keras's normalisation applied by hand.
  endpoints = encoder((pixels / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD, training=False)
  for stage, keras_out in zip(range(2, 6), expected):
    np.testing.assert_allclose(endpoints[f'stage{stage}'].numpy(), keras_out.numpy(),
                               atol=2e-4, rtol=2e-4, err_msg=f'stage{stage}')
  # ClipKMaX's x / 127.5 - 1 is a different input: the features differ.
  other = encoder(pixels / 127.5 - 1.0, training=False)['stage2']
  assert np.abs(other.numpy() - expected[0].numpy()).max() > 1e-2


def test_wrong_convnext_encoder_or_name_raises(keras_convnext):
  _, path = keras_convnext
  fewer_blocks = convnext.ConvNeXt(block_counts=(3, 3, 8, 3), widths=_CONVNEXT_T['widths'])
  fewer_blocks.build((None, 64, 64, 3))
  with pytest.raises(ValueError, match=r"Keras weights left unused: \['convnext_tiny_stage_2_"
                     r"block_8_depthwise_conv/bias'"):
    pretrained_weights.load_keras_convnext_weights(fewer_blocks, path, 'convnext_tiny')
  with pytest.raises(ValueError, match='shape mismatches: .+downsample_layers/0/layer_with_weights-0/'):
    pretrained_weights.load_keras_convnext_weights(
        _convnext_tiny(width_multiplier=0.5), path, 'convnext_tiny')
  with pytest.raises(ValueError, match='need a convnext.ConvNeXt encoder, got ResNet'):
    pretrained_weights.load_keras_convnext_weights(_encoder(), path, 'convnext_tiny')
  with pytest.raises(ValueError, match='backbone_name must be one of'):
    pretrained_weights.load_keras_convnext_weights(_convnext_tiny(), path, 'convnext_xlarge')


def test_clip_kmax_convnext_encoder_loads_through_the_backbone_name(keras_convnext):
  keras_model, path = keras_convnext
  kwargs = dict(clip_kmax.tiny_model_kwargs(num_classes=3), backbone_name='convnext_tiny',
                backbone_width_multiplier=1.0, backbone_block_counts=None)
  model = clip_kmax.ClipKMaX(**kwargs)
  model.build([1, 1, 64, 64, 3])
  assert pretrained_weights.load_pretrained_backbone(model, 'convnext_tiny', path) == 178
  np.testing.assert_array_equal(
      model.checkpoint_items['encoder'].downsample_layers[0][1].gamma.numpy(),
      keras_model.get_layer('convnext_tiny_stem').get_layer(
          'convnext_tiny_stem_layernorm').gamma.numpy())
