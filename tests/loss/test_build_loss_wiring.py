"""Every loss field of the config reaches `KMaXLoss` ("every config field
that exists is wired").

`builder.build_loss` reads `TrainerOptions.loss_options` (weights, semantic top-k)
and the loss fields of `ClipKMaXOptions` (instance discrimination sampling and
temperature, deep supervision). Each field is set to a non-default value and
must come out in the loss's config.
"""

import numpy as np
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax import builder
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.protos import config_pb2


def _descriptor():
  return dataset_lib.get_dataset_descriptor('synthetic')


def test_every_loss_option_reaches_the_loss():
  config = config_pb2.ExperimentOptions()
  loss_options = config.trainer_options.loss_options
  loss_options.semantic_loss.weight = 0.5
  loss_options.semantic_loss.top_k_percent = 0.2
  loss_options.pq_style_loss.weight = 2.5
  loss_options.mask_id_cross_entropy_loss.weight = 0.7
  loss_options.instance_discrimination_loss.weight = 0.4
  kmax = config.model_options.clip_kmax
  kmax.num_mask_slots = 32
  kmax.decoder_output_stride = 2
  kmax.instance_discrimination_sample_k = 1024
  kmax.instance_discrimination_sample_temperature = 0.5
  kmax.instance_discrimination_temperature = 0.1
  kmax.use_auxiliary_outputs = False
  train_data = config.train_dataset_options
  train_data.increase_small_instance_weights = True
  train_data.small_instance_threshold = 900
  train_data.small_instance_weight = 2.5
  descriptor = _descriptor()

  loss_config = builder.build_loss(config, descriptor).get_config()

  expected = {
      'num_classes': descriptor.num_classes,
      'ignore_label': descriptor.ignore_label,
      'label_divisor': descriptor.panoptic_label_divisor,
      'thing_class_ids': list(descriptor.thing_class_ids),
      'num_mask_slots': 32,
      'output_stride': 2,
      'semantic_loss_weight': 0.5,
      'semantic_top_k_percent': 0.2,
      'pq_style_loss_weight': 2.5,
      'mask_id_cross_entropy_loss_weight': 0.7,
      'instance_discrimination_loss_weight': 0.4,
      'instance_discrimination_sample_k': 1024,
      'instance_discrimination_sample_temperature': 0.5,
      'instance_discrimination_temperature': 0.1,
      'use_auxiliary_outputs': False,
      'small_instance_area': 900,
      'small_instance_weight': 2.5,
  }
  for key, value in expected.items():
    got = loss_config[key]
    if isinstance(value, float):  # Proto floats are float32.
      assert abs(got - value) < 1e-6, (key, got, value)
    else:
      assert got == value, (key, got, value)


def test_unset_loss_options_take_deeplab2_kmax_defaults():
  config = config_pb2.ExperimentOptions()
  loss_config = builder.build_loss(config, _descriptor()).get_config()
  assert loss_config['pq_style_loss_weight'] == 3.0
  assert abs(loss_config['mask_id_cross_entropy_loss_weight'] - 0.3) < 1e-6
  assert loss_config['instance_discrimination_loss_weight'] == 1.0
  assert loss_config['semantic_loss_weight'] == 1.0
  assert loss_config['semantic_top_k_percent'] == 1.0
  assert loss_config['instance_discrimination_sample_k'] == 4096
  assert abs(loss_config['instance_discrimination_temperature'] - 0.3) < 1e-6
  # DeepLab2's MaXDeepLabLoss default sampling temperature.
  assert abs(loss_config['instance_discrimination_sample_temperature'] - 0.6) < 1e-6
  assert loss_config['use_auxiliary_outputs'] is True
  # Small-instance semantic weights are off unless the data options ask.
  assert loss_config['small_instance_weight'] == 1.0


def test_no_semantic_head_means_no_semantic_loss():
  config = config_pb2.ExperimentOptions()
  config.trainer_options.loss_options.semantic_loss.weight = 2.0
  kmax = config.model_options.clip_kmax
  kmax.use_auxiliary_semantic_decoder = False
  kmax.use_auxiliary_semantic_head = False
  assert builder.build_loss(config, _descriptor()).semantic_loss_weight == 0.0


def test_training_loss_has_instance_discrimination_on_every_output():
  """DeepLab2's deep supervision: each kMaX block's output carries the pixel
  feature, and the loss scores instance discrimination on all of them."""
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=6))
  clips = tf.random.stateless_uniform([1, 2, 33, 33, 3], seed=[1, 2], maxval=255.0)
  outputs = model(clips, training=True)
  aux = outputs[common.PRED_AUX_OUTPUTS]
  assert len(aux) == 3  # tiny model: one kMaX block per feature scale.
  for output in aux:
    assert output[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE].shape == (1, 2, 9, 9, 32)
  label = np.full((1, 2, 33, 33), 0, np.int32)
  label[:, :, 5:20, 5:20] = 4001  # A thing (synthetic class 4) in both frames.
  config = config_pb2.ExperimentOptions()
  config.model_options.clip_kmax.num_mask_slots = 16
  loss = builder.build_loss(config, _descriptor())
  losses = loss({common.PANOPTIC_LABEL: tf.constant(label)}, outputs)
  per_output = [losses[kmax_loss.output_term_key(i, common.INSTANCE_DISCRIMINATION_LOSS)]
                for i in range(4)]
  assert all(float(term[0]) > 0.0 for term in per_output)
  np.testing.assert_allclose(losses[common.INSTANCE_DISCRIMINATION_LOSS].numpy(),
                             tf.add_n(per_output).numpy(), rtol=1e-6)
