"""Wires the parts from a config: model, loss, post-processor, associater.

The only code that reads model, loss, evaluator and association protos. Layers,
losses and the associater take plain keyword arguments; this module turns an
`ExperimentOptions` (and the data set's descriptor) into them, so
`deeplab2_vkmax.model` imports neither `association` nor `data`. Repeated fields that a proto cannot give a default
(block counts, low-level features) get DeepLab2's kMaX-R50 values here, as the
proto comments say.
"""

import os
from typing import Any, Dict, List

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import pretrained_weights
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.model.post_processor import clip_post_processor
from deeplab2_vkmax.protos import config_pb2

_DEFAULT_PIXEL_DECODER_BLOCK_COUNTS = (1, 5, 1, 1)
_DEFAULT_TRANSFORMER_DECODER_BLOCK_COUNTS = (2, 2, 2)
_DEFAULT_PIXEL_DECODER_WIDTHS = (512, 256, 128, 64)
_DEFAULT_PIXEL_DECODER_BLOCK_TYPES = ('axial', 'axial', 'bottleneck', 'bottleneck')
_DEFAULT_ATROUS_RATES = (6, 12, 18)
_DEFAULT_LOW_LEVEL = (('res3', 64), ('res2', 32))
# DeepLab2's kMaX loss weights, used for loss messages the config leaves unset.
_DEFAULT_LOSS_WEIGHTS = {
    'semantic_loss': 1.0,
    'pq_style_loss': 3.0,
    'mask_id_cross_entropy_loss': 0.3,
    'instance_discrimination_loss': 1.0,
}


def model_kwargs(config: config_pb2.ExperimentOptions,
                 descriptor: dataset_lib.DatasetDescriptor) -> Dict[str, Any]:
  """ClipKMaX keyword arguments of `config` (for `descriptor`'s classes)."""
  model = config.model_options
  backbone = model.backbone
  kmax = model.clip_kmax
  solver = config.trainer_options.solver_options
  low_level = tuple((l.feature_key, l.channels_project) for l in kmax.auxiliary_low_level)
  return dict(
      num_classes=descriptor.num_classes,
      num_mask_slots=kmax.num_mask_slots,
      backbone_name=backbone.name,
      backbone_width_multiplier=backbone.width_multiplier,
      # Empty: the backbone's own block counts.
      backbone_block_counts=tuple(backbone.block_counts) or None,
      drop_path_keep_prob=backbone.drop_path_keep_prob,
      pixel_decoder_block_counts=(tuple(kmax.pixel_decoder_block_counts)
                                  or _DEFAULT_PIXEL_DECODER_BLOCK_COUNTS),
      pixel_decoder_widths=tuple(kmax.pixel_decoder_widths) or _DEFAULT_PIXEL_DECODER_WIDTHS,
      pixel_decoder_block_types=(tuple(kmax.pixel_decoder_block_types)
                                 or _DEFAULT_PIXEL_DECODER_BLOCK_TYPES),
      pixel_decoder_num_heads=kmax.pixel_decoder_num_heads,
      axial_max_span=kmax.axial_max_span,
      pixel_decoder_os2_width=kmax.pixel_decoder_os2_width,
      pixel_decoder_os2_block_count=kmax.pixel_decoder_os2_block_count,
      decoder_output_stride=kmax.decoder_output_stride,
      transformer_decoder_block_counts=(tuple(kmax.transformer_decoder_block_counts)
                                        or _DEFAULT_TRANSFORMER_DECODER_BLOCK_COUNTS),
      transformer_channels=kmax.transformer_channels,
      transformer_num_heads=kmax.transformer_num_heads,
      transformer_ffn_channels=kmax.transformer_ffn_channels,
      transformer_cross_attention=kmax.transformer_cross_attention,
      transformer_latent_memory_size=kmax.transformer_latent_memory_size,
      pixel_space_head_channels=kmax.pixel_space_head.head_channels,
      pixel_space_output_channels=kmax.pixel_space_head.output_channels,
      pixel_decoder_drop_path_keep_prob=kmax.pixel_decoder_drop_path_keep_prob,
      transformer_decoder_drop_path_keep_prob=kmax.transformer_decoder_drop_path_keep_prob,
      use_auxiliary_semantic_decoder=kmax.use_auxiliary_semantic_decoder,
      use_auxiliary_semantic_head=kmax.use_auxiliary_semantic_head,
      semantic_head_channels=kmax.auxiliary_semantic_head.head_channels,
      semantic_decoder_channels=kmax.auxiliary_semantic_head.decoder_channels,
      aspp_channels=kmax.auxiliary_semantic_head.aspp_channels,
      atrous_rates=tuple(kmax.auxiliary_semantic_head.atrous_rates) or _DEFAULT_ATROUS_RATES,
      aspp_dropout_rate=kmax.auxiliary_semantic_head.aspp_dropout_rate,
      auxiliary_low_level=low_level or _DEFAULT_LOW_LEVEL,
      bn_momentum=solver.batchnorm_momentum,
      bn_epsilon=solver.batchnorm_epsilon,
      use_sync_batchnorm=solver.use_sync_batchnorm,
  )


def build_model(config: config_pb2.ExperimentOptions,
                descriptor: dataset_lib.DatasetDescriptor) -> clip_kmax.ClipKMaX:
  """Builds the (unbuilt) clip-kMaX model of `config`."""
  name = config.model_options.backbone.name
  if name not in clip_kmax.ENCODERS:
    raise ValueError(f'model_options.backbone.name: got "{name}", expected one of '
                     f'{sorted(clip_kmax.ENCODERS)}')
  return clip_kmax.ClipKMaX(**model_kwargs(config, descriptor))


# Checkpoint items a config can switch off; a checkpoint that has them (e.g. a
# DeepLab2 COCO checkpoint with the auxiliary semantic decoder) still initialises
# a model without them.
_OPTIONAL_ITEMS = ('semantic_decoder', 'semantic_head_without_last_layer',
                   'semantic_last_layer')


def initialise_model_weights(config: config_pb2.ExperimentOptions,
                             model: clip_kmax.ClipKMaX) -> List[str]:
  """Applies `pretrained_weights`, then `initial_checkpoint`, to a built model.

  For a fresh run only (the trainer calls it when the run directory holds no
  checkpoint). `initial_checkpoint` is restored strictly
  (`checkpoint_utils.restore_checkpoint`), skipping the class-dependent layers
  the two `restore_*_from_initial_checkpoint` flags exclude.

  Returns:
    One log line per source applied (empty when the config names none).

  Raises:
    ValueError: a file that does not fit the model (listing what did not match).
  """
  model_options = config.model_options
  messages = []
  weights_path = os.path.expandvars(model_options.backbone.pretrained_weights)
  if weights_path:
    count = pretrained_weights.load_pretrained_backbone(
        model, model_options.backbone.name, weights_path)
    messages.append(f'initialised {count} encoder variables from pretrained_weights '
                    f'{weights_path}')
  checkpoint_path = os.path.expandvars(model_options.initial_checkpoint)
  if checkpoint_path:
    skip = checkpoint_utils.class_dependent_prefixes(
        model,
        class_heads=not model_options.restore_class_last_layer_from_initial_checkpoint,
        semantic_last_layer=(
            not model_options.restore_semantic_last_layer_from_initial_checkpoint))
    ignored = tuple(item for item in _OPTIONAL_ITEMS if item not in model.checkpoint_items)
    resolved = checkpoint_utils.restore_checkpoint(
        model, checkpoint_path, skip=skip, ignore_stored_items=ignored)
    messages.append(f'initialised the model from initial_checkpoint {resolved} '
                    f'(skipped: {list(skip) or "nothing"})')
  return messages


def _loss_weight(loss_options, name: str) -> float:
  if loss_options.HasField(name):
    return getattr(loss_options, name).weight
  return _DEFAULT_LOSS_WEIGHTS[name]


def build_loss(config: config_pb2.ExperimentOptions,
               descriptor: dataset_lib.DatasetDescriptor) -> kmax_loss.KMaXLoss:
  """Builds the kMaX loss on tubes with the config's weights."""
  loss_options = config.trainer_options.loss_options
  kmax = config.model_options.clip_kmax
  train_data = config.train_dataset_options
  return kmax_loss.KMaXLoss(
      num_classes=descriptor.num_classes,
      ignore_label=descriptor.ignore_label,
      label_divisor=descriptor.panoptic_label_divisor,
      thing_class_ids=descriptor.class_has_instances_list,
      num_mask_slots=kmax.num_mask_slots,
      output_stride=kmax.decoder_output_stride,
      pq_style_loss_weight=_loss_weight(loss_options, 'pq_style_loss'),
      mask_id_cross_entropy_loss_weight=_loss_weight(loss_options, 'mask_id_cross_entropy_loss'),
      instance_discrimination_loss_weight=_loss_weight(loss_options,
                                                       'instance_discrimination_loss'),
      semantic_loss_weight=(_loss_weight(loss_options, 'semantic_loss')
                            if kmax.use_auxiliary_semantic_head else 0.0),
      semantic_top_k_percent=loss_options.semantic_loss.top_k_percent,
      instance_discrimination_sample_k=kmax.instance_discrimination_sample_k,
      instance_discrimination_sample_temperature=kmax.instance_discrimination_sample_temperature,
      instance_discrimination_temperature=kmax.instance_discrimination_temperature,
      small_instance_area=train_data.small_instance_threshold,
      small_instance_weight=(train_data.small_instance_weight
                             if train_data.increase_small_instance_weights else 1.0),
      use_auxiliary_outputs=kmax.use_auxiliary_outputs)


def build_post_processor(config: config_pb2.ExperimentOptions,
                         descriptor: dataset_lib.DatasetDescriptor
                         ) -> clip_post_processor.ClipPostProcessor:
  """Builds the tube post-processor from `evaluator_options`."""
  evaluator = config.evaluator_options
  maskwise = evaluator.maskwise_postprocessing
  return clip_post_processor.ClipPostProcessor(
      num_classes=descriptor.num_classes,
      label_divisor=descriptor.panoptic_label_divisor,
      thing_class_ids=descriptor.class_has_instances_list,
      ignore_label=descriptor.ignore_label,
      post_processing=evaluator.transformer_post_processing,
      pixel_confidence_threshold=evaluator.pixel_confidence_threshold,
      transformer_class_confidence_threshold_thing=(
          maskwise.transformer_class_confidence_threshold_thing),
      transformer_class_confidence_threshold_stuff=(
          maskwise.transformer_class_confidence_threshold_stuff),
      overlapping_threshold=maskwise.overlapping_threshold,
      reorder_class_weight=maskwise.reorder_class_weight,
      reorder_mask_weight=maskwise.reorder_mask_weight,
      thing_area_limit=evaluator.thing_area_limit,
      stuff_area_limit=evaluator.stuff_area_limit)


def build_associater(config: config_pb2.ExperimentOptions,
                     descriptor: dataset_lib.DatasetDescriptor
                     ) -> video_associater.VideoAssociater:
  """A fresh cross-clip associater (one per video) from `association` options;
  it reads T from the clips it receives."""
  association = config.evaluator_options.association
  return video_associater.VideoAssociater(
      label_divisor=descriptor.panoptic_label_divisor,
      thing_class_ids=descriptor.class_has_instances_list,
      use_stitching=association.use_stitching,
      stitching_score=association.stitching_score,
      stitching_threshold=association.stitching_threshold,
      memory_type=association.memory_type,
      lam=association.lam,
      tau=association.tau,
      alpha=association.alpha,
      temperature=association.temperature,
      distance=association.distance)
