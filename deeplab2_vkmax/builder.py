"""Wires the parts from a config: model, loss, post-processor, associater.

The only code that reads model, loss, evaluator and association protos. Layers,
losses and the associater take plain keyword arguments; this module turns an
`ExperimentOptions` (and the data set's descriptor) into them, so
`deeplab2_vkmax.model` imports neither `association` nor `data`.

Each default is declared once: a scalar setting's in its `.proto` (the classes
take it as their signature default through `protos.fields`), a repeated
setting's (block counts, widths, rates, low-level features) in the class
signature, used when the config lists none. Proto fields whose name is a keyword
argument of the class are passed by name; the others are mapped here.
"""

import inspect
import os
from typing import Any, Callable, Dict, List

from deeplab2_vkmax.association import video_associater
from deeplab2_vkmax.data import dataset as dataset_lib
from deeplab2_vkmax.model import checkpoint_utils
from deeplab2_vkmax.model import clip_kmax
from deeplab2_vkmax.model import pretrained_weights
from deeplab2_vkmax.model.loss import kmax_loss
from deeplab2_vkmax.model.post_processor import clip_post_processor
from deeplab2_vkmax.protos import config_pb2
from deeplab2_vkmax.protos import fields

_LOSS_TERMS = ('semantic_loss', 'pq_style_loss', 'mask_id_cross_entropy_loss',
               'instance_discrimination_loss')


def _parameters(function: Callable[..., Any]) -> Dict[str, inspect.Parameter]:
  return dict(inspect.signature(function).parameters)


def same_name_values(message, function: Callable[..., Any]) -> Dict[str, Any]:
  """`message`'s scalar fields that are keyword arguments of `function`, by name."""
  parameters = _parameters(function)
  return {name: value for name, value in fields.values(message).items()
          if name in parameters}


def _label_encoding(descriptor: dataset_lib.DatasetDescriptor) -> Dict[str, Any]:
  """The data set's label encoding, as the loss and the post-processor take it."""
  return dict(num_classes=descriptor.num_classes, ignore_label=descriptor.ignore_label,
              label_divisor=descriptor.panoptic_label_divisor,
              thing_class_ids=descriptor.thing_class_ids)


def _listed(**repeated) -> Dict[str, Any]:
  """The repeated settings the config lists (as tuples); unlisted ones keep the
  class's default."""
  return {name: tuple(value) for name, value in repeated.items() if len(value)}


def model_kwargs(config: config_pb2.ExperimentOptions,
                 descriptor: dataset_lib.DatasetDescriptor) -> Dict[str, Any]:
  """ClipKMaX keyword arguments of `config` (for `descriptor`'s classes)."""
  model = config.model_options
  backbone = model.backbone
  kmax = model.clip_kmax
  solver = config.trainer_options.solver_options
  semantic_head = kmax.auxiliary_semantic_head
  kwargs = same_name_values(kmax, clip_kmax.ClipKMaX.__init__)
  kwargs.update(
      num_classes=descriptor.num_classes,
      backbone_name=backbone.name,
      backbone_width_multiplier=fields.values(backbone)['width_multiplier'],
      drop_path_keep_prob=fields.values(backbone)['drop_path_keep_prob'],
      pixel_space_head_channels=kmax.pixel_space_head.head_channels,
      pixel_space_output_channels=kmax.pixel_space_head.output_channels,
      semantic_head_channels=semantic_head.head_channels,
      semantic_decoder_channels=semantic_head.decoder_channels,
      aspp_channels=semantic_head.aspp_channels,
      aspp_dropout_rate=fields.values(semantic_head)['aspp_dropout_rate'],
      bn_momentum=fields.values(solver)['batchnorm_momentum'],
      bn_epsilon=fields.values(solver)['batchnorm_epsilon'],
      use_sync_batchnorm=solver.use_sync_batchnorm,
  )
  kwargs.update(_listed(
      backbone_block_counts=backbone.block_counts,
      pixel_decoder_block_counts=kmax.pixel_decoder_block_counts,
      pixel_decoder_widths=kmax.pixel_decoder_widths,
      pixel_decoder_block_types=kmax.pixel_decoder_block_types,
      transformer_decoder_block_counts=kmax.transformer_decoder_block_counts,
      atrous_rates=semantic_head.atrous_rates,
      auxiliary_low_level=[(l.feature_key, l.channels_project)
                           for l in kmax.auxiliary_low_level]))
  return kwargs


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
  """The config's weight of loss `name`, else KMaXLoss's default (DeepLab2's)."""
  if loss_options.HasField(name):
    return fields.values(getattr(loss_options, name))['weight']
  return _parameters(kmax_loss.KMaXLoss.__init__)[f'{name}_weight'].default


def build_loss(config: config_pb2.ExperimentOptions,
               descriptor: dataset_lib.DatasetDescriptor) -> kmax_loss.KMaXLoss:
  """Builds the kMaX loss on tubes with the config's weights."""
  loss_options = config.trainer_options.loss_options
  kmax = config.model_options.clip_kmax
  train_data = config.train_dataset_options
  weights = {f'{name}_weight': _loss_weight(loss_options, name) for name in _LOSS_TERMS}
  if not kmax.use_auxiliary_semantic_head:
    weights['semantic_loss_weight'] = 0.0
  return kmax_loss.KMaXLoss(
      **_label_encoding(descriptor),
      output_stride=kmax.decoder_output_stride,
      semantic_top_k_percent=fields.values(loss_options.semantic_loss)['top_k_percent'],
      small_instance_area=train_data.small_instance_threshold,
      small_instance_weight=(fields.values(train_data)['small_instance_weight']
                             if train_data.increase_small_instance_weights else 1.0),
      **weights,
      **same_name_values(kmax, kmax_loss.KMaXLoss.__init__))


def build_post_processor(config: config_pb2.ExperimentOptions,
                         descriptor: dataset_lib.DatasetDescriptor
                         ) -> clip_post_processor.ClipPostProcessor:
  """Builds the tube post-processor from `evaluator_options`."""
  evaluator = config.evaluator_options
  init = clip_post_processor.ClipPostProcessor.__init__
  return clip_post_processor.ClipPostProcessor(
      **_label_encoding(descriptor),
      post_processing=evaluator.transformer_post_processing,
      **same_name_values(evaluator, init),
      **same_name_values(evaluator.maskwise_postprocessing, init))


def build_associater(config: config_pb2.ExperimentOptions,
                     descriptor: dataset_lib.DatasetDescriptor
                     ) -> video_associater.VideoAssociater:
  """A fresh cross-clip associater (one per video) from `association` options,
  every field by name; it reads T from the clips it receives."""
  return video_associater.VideoAssociater(
      label_divisor=descriptor.panoptic_label_divisor,
      thing_class_ids=descriptor.thing_class_ids,
      **fields.values(config.evaluator_options.association))
