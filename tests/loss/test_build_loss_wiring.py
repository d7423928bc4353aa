"""Every loss field of the config reaches `KMaXLoss` (issue 4: "every config field
that exists is wired").

`builder.build_loss` reads `TrainerOptions.loss_options` (weights, semantic top-k)
and the loss fields of `ClipKMaXOptions` (instance discrimination sampling and
temperature, deep supervision). Each field is set to a non-default value and
must come out in the loss's config.
"""

from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.model import builder
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
  descriptor = _descriptor()

  loss_config = builder.build_loss(config, descriptor).get_config()

  expected = {
      'num_classes': descriptor.num_classes,
      'ignore_label': descriptor.ignore_label,
      'label_divisor': descriptor.panoptic_label_divisor,
      'thing_class_ids': list(descriptor.class_has_instances_list),
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
  assert loss_config['use_auxiliary_outputs'] is True


def test_no_semantic_head_means_no_semantic_loss():
  config = config_pb2.ExperimentOptions()
  config.trainer_options.loss_options.semantic_loss.weight = 2.0
  kmax = config.model_options.clip_kmax
  kmax.use_auxiliary_semantic_decoder = False
  kmax.use_auxiliary_semantic_head = False
  assert builder.build_loss(config, _descriptor()).semantic_loss_weight == 0.0
