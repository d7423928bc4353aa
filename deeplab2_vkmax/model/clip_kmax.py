"""clip-kMaX: the within-clip segmenter of Video-kMaX (Shin et al., WACV 2024, Sec. 3.1).

kMaX-DeepLab (Yu et al., ECCV 2022) extended to clips: the pixel encoder and pixel
decoder run per frame; their OS32/OS16/OS8 outputs are reshaped from
[B*T, h, w, C] to [B, T*h, w, C] (frames stacked along height) so the k-means
cross-attention (Eq. (2)) assigns all T*h*w pixels of the clip to N shared
cluster centres; the OS4 mask logits are reshaped back into tubes
[B, T, h, w, N]. With T = 1 this is kMaX-DeepLab. The model is stateless across
clips; association lives in `deeplab2_vkmax.association`.
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model import backbones
from deeplab2_vkmax.model.heads import kmax_prediction_head
from deeplab2_vkmax.model.heads import semantic_decoder
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import resize
from deeplab2_vkmax.model.pixel_decoder import kmax_pixel_decoder
from deeplab2_vkmax.model.pixel_encoder import axial_resnet
from deeplab2_vkmax.model.pixel_encoder import convnext
from deeplab2_vkmax.model.pixel_encoder import resnet
from deeplab2_vkmax.model.transformer_decoder import kmax_transformer_decoder
from deeplab2_vkmax.protos import fields
from deeplab2_vkmax.protos import model_pb2
from deeplab2_vkmax.protos import trainer_pb2

# Defaults of the settings a config can give (deeplab2_vkmax/protos/*.proto);
# repeated fields (block counts, widths, rates) carry theirs here.
_KMAX = fields.defaults(model_pb2.ClipKMaXOptions)
_BACKBONE = fields.defaults(model_pb2.BackboneOptions)
_PIXEL_SPACE = fields.defaults(model_pb2.PixelSpaceHeadOptions)
_SEMANTIC = fields.defaults(model_pb2.SemanticHeadOptions)
_SOLVER = fields.defaults(trainer_pb2.SolverOptions,
                          ('batchnorm_momentum', 'batchnorm_epsilon', 'use_sync_batchnorm'))

# Pixel-decoder endpoints fed to the transformer decoder, coarsest first.
_TRANSFORMER_INPUTS = ('decoder_stage1', 'decoder_stage2', 'decoder_stage3')


def _resnet50(layout: str) -> Callable[..., keras.layers.Layer]:
  def build(width_multiplier: float, block_counts: Optional[Sequence[int]],
            drop_path_keep_prob: float, bn: Dict[str, Any]) -> keras.layers.Layer:
    return resnet.ResNet(width_multiplier=width_multiplier,
                         block_counts=block_counts or (3, 4, 6, 3), layout=layout,
                         drop_path_keep_prob=drop_path_keep_prob, name='encoder', **bn)
  return build


def _axial_resnet50(width_multiplier: float,
                    block_counts: Optional[Sequence[int]],
                    drop_path_keep_prob: float,
                    bn: Dict[str, Any]) -> keras.layers.Layer:
  return axial_resnet.AxialResNet(width_multiplier=width_multiplier,
                                  block_counts=block_counts or (3, 4, 6, 3),
                                  drop_path_keep_prob=drop_path_keep_prob,
                                  name='encoder', **bn)


def _convnext(variant: str) -> Callable[..., keras.layers.Layer]:
  def build(width_multiplier, block_counts, drop_path_keep_prob, bn):
    del bn  # ConvNeXt uses LayerNorm only.
    default_counts, widths = convnext.VARIANTS[variant]
    return convnext.ConvNeXt(block_counts=block_counts or default_counts,
                             widths=widths, width_multiplier=width_multiplier,
                             drop_path_keep_prob=drop_path_keep_prob, name='encoder')
  return build


def _encoder(name: str) -> Callable[..., keras.layers.Layer]:
  family = backbones.BACKBONES[name].family
  if family == 'resnet':
    return _resnet50('keras' if name == 'resnet50_keras' else 'deeplab2')
  if family == 'axial_resnet':
    return _axial_resnet50
  return _convnext(name)


# backbone_name (`backbones.NAMES`) -> encoder constructor (width multiplier,
# block counts or None for the backbone's own, drop-path keep probability, BN
# options).
ENCODERS: Dict[str, Callable[..., keras.layers.Layer]] = {
    name: _encoder(name) for name in backbones.NAMES}
# Encoders with an OS2 endpoint ('stage1'), needed by decoder_output_stride 2.
_ENCODERS_WITH_OS2 = tuple(name for name, b in backbones.BACKBONES.items() if b.has_os2)


def tiny_model_kwargs(num_classes: int = 3) -> Dict[str, Any]:
  """Keyword arguments of a tiny ClipKMaX for tests and CPU smoke runs."""
  return dict(
      num_classes=num_classes,
      num_mask_slots=16,
      # Deterministic training steps for tests (DeepLab2 default is 0.8).
      transformer_decoder_drop_path_keep_prob=1.0,
      backbone_width_multiplier=0.125,
      backbone_block_counts=(1, 1, 1, 1),
      pixel_decoder_block_counts=(1, 1, 1, 1),
      pixel_decoder_widths=(32, 16, 16, 8),
      pixel_decoder_num_heads=2,
      transformer_decoder_block_counts=(1, 1, 1),
      transformer_channels=64,
      transformer_num_heads=4,
      transformer_ffn_channels=128,
      pixel_space_head_channels=64,
      pixel_space_output_channels=32,
      auxiliary_low_level=(('res3', 16), ('res2', 8)),
      semantic_decoder_channels=32,
      semantic_head_channels=32,
      aspp_channels=32,
  )


@keras.saving.register_keras_serializable(package='deeplab2_vkmax')
class ClipKMaX(keras.Model):
  """clip-kMaX with a ResNet-50 (kMaX variant) or ConvNeXt encoder.

  Defaults reproduce DeepLab2's kMaX-DeepLab R50 (OS4, 128 slots, auxiliary
  semantic decoder): 72,202,221 trainable parameters for 19 classes.

  Args:
    num_classes: real classes C (class logits have C + 1, void last).
    num_mask_slots: cluster centres N.
    backbone_name: a key of `ENCODERS`: 'resnet50' (DeepLab2's kMaX variant),
      'resnet50_keras' (same variables, Keras ResNet50 layout, for Keras
      ImageNet weights), 'axial_resnet50' (Axial-ResNet-50, the paper's
      Axial-ResNet50-B1),
      'convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large'.
    backbone_width_multiplier: encoder width multiplier.
    backbone_block_counts: encoder blocks per stage 2..5; None for the
      backbone's own ((3, 4, 6, 3) for ResNet-50).
    drop_path_keep_prob: drop-path keep probability of the encoder blocks.
    pixel_decoder_drop_path_keep_prob: same for the pixel decoder blocks
      (DeepLab2 fixes 1.0).
    transformer_decoder_drop_path_keep_prob: same for the kMaX layers'
      residual branches (DeepLab2: 0.8 on COCO, Cityscapes and untested
      data sets, 1.0 on ADE20K).
    pixel_decoder_block_counts: blocks per decoder stage from OS32 (4 entries;
      OS2 appends `pixel_decoder_os2_block_count`).
    pixel_decoder_widths: block width per decoder stage (output 4x).
    pixel_decoder_block_types: 'axial' / 'bottleneck' per decoder stage.
    pixel_decoder_num_heads: axial-attention heads.
    axial_max_span: axial relative positional encoding span (2*span-1 entries;
      DeepLab2: 255 -> 509).
    decoder_output_stride: 4, or 2 for an extra OS2 decoder stage.
    pixel_decoder_os2_width, pixel_decoder_os2_block_count: the OS2 stage.
    transformer_decoder_block_counts: kMaX layers on OS32, OS16, OS8.
    transformer_channels: centre channels E.
    transformer_num_heads: centre self-attention heads.
    transformer_ffn_channels: FFN hidden channels.
    transformer_cross_attention: the centre update of every kMaX layer:
      'kmeans' (clip-kMaX), or the Video-kMaX Tab. 4 baselines 'standard' /
      'latent_memory' (`kmax_transformer_decoder.CROSS_ATTENTIONS`).
    transformer_latent_memory_size: latent tokens of 'latent_memory'.
    pixel_space_head_channels: pixel-space head conv channels.
    pixel_space_output_channels: pixel embedding depth D.
    use_auxiliary_semantic_decoder: build the ASPP + low-level fusion
      semantic decoder (on `stage5`, `res3`, `res2`).
    use_auxiliary_semantic_head: build the auxiliary semantic head (for the
      semantic loss). With the decoder it reads the decoder's OS4 output;
      without it, DeepLab2 applies it directly to the OS32 encoder feature
      `stage5` (its Cityscapes variant) and its logits stay at stride 32
      (the semantic loss subsamples the label to them, as DeepLab2 does).
    auxiliary_low_level: ((endpoint, channels), ...) of the semantic decoder.
    aspp_channels: ASPP channels.
    atrous_rates: ASPP atrous rates.
    aspp_dropout_rate: dropout after the ASPP projection, training only
      (DeepLab2: 0.1; 0 makes training deterministic given the data).
    semantic_decoder_channels: channels after the semantic fusion convs.
    semantic_head_channels: semantic head conv channels.
    void_prior_prob: initial P(void) of every class head.
    mask_bn_gamma_init: gamma init of the mask-logit BNs.
    center_init_stddev: stddev of the cluster centres' init.
    layer_norm_epsilon: epsilon of the pixel decoder's LayerNorms.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
  """

  def __init__(self, *, num_classes: int, num_mask_slots: int = _KMAX['num_mask_slots'],
               backbone_name: str = _BACKBONE['name'],
               backbone_width_multiplier: float = _BACKBONE['width_multiplier'],
               backbone_block_counts: Optional[Sequence[int]] = None,
               drop_path_keep_prob: float = _BACKBONE['drop_path_keep_prob'],
               pixel_decoder_drop_path_keep_prob: float = (
                   _KMAX['pixel_decoder_drop_path_keep_prob']),
               transformer_decoder_drop_path_keep_prob: float = (
                   _KMAX['transformer_decoder_drop_path_keep_prob']),
               pixel_decoder_block_counts: Sequence[int] = (1, 5, 1, 1),
               pixel_decoder_widths: Sequence[int] = (512, 256, 128, 64),
               pixel_decoder_block_types: Sequence[str] = (
                   'axial', 'axial', 'bottleneck', 'bottleneck'),
               pixel_decoder_num_heads: int = _KMAX['pixel_decoder_num_heads'],
               axial_max_span: int = _KMAX['axial_max_span'],
               decoder_output_stride: int = _KMAX['decoder_output_stride'],
               pixel_decoder_os2_width: int = _KMAX['pixel_decoder_os2_width'],
               pixel_decoder_os2_block_count: int = _KMAX['pixel_decoder_os2_block_count'],
               transformer_decoder_block_counts: Sequence[int] = (2, 2, 2),
               transformer_channels: int = _KMAX['transformer_channels'],
               transformer_num_heads: int = _KMAX['transformer_num_heads'],
               transformer_ffn_channels: int = _KMAX['transformer_ffn_channels'],
               transformer_cross_attention: str = _KMAX['transformer_cross_attention'],
               transformer_latent_memory_size: int = _KMAX['transformer_latent_memory_size'],
               pixel_space_head_channels: int = _PIXEL_SPACE['head_channels'],
               pixel_space_output_channels: int = _PIXEL_SPACE['output_channels'],
               use_auxiliary_semantic_decoder: bool = _KMAX['use_auxiliary_semantic_decoder'],
               use_auxiliary_semantic_head: bool = _KMAX['use_auxiliary_semantic_head'],
               auxiliary_low_level: Sequence[Tuple[str, int]] = (
                   ('res3', 64), ('res2', 32)),
               aspp_channels: int = _SEMANTIC['aspp_channels'],
               atrous_rates: Sequence[int] = (6, 12, 18),
               aspp_dropout_rate: float = _SEMANTIC['aspp_dropout_rate'],
               semantic_decoder_channels: int = _SEMANTIC['decoder_channels'],
               semantic_head_channels: int = _SEMANTIC['head_channels'],
               void_prior_prob: float = 0.9, mask_bn_gamma_init: float = 0.1,
               center_init_stddev: float = 1.0,
               layer_norm_epsilon: float = 1e-6,
               bn_momentum: float = _SOLVER['batchnorm_momentum'],
               bn_epsilon: float = _SOLVER['batchnorm_epsilon'],
               use_sync_batchnorm: bool = _SOLVER['use_sync_batchnorm'],
               **kwargs):
    super().__init__(**kwargs)
    if backbone_name not in ENCODERS:
      raise ValueError(f'backbone_name must be one of {sorted(ENCODERS)}, got '
                       f'"{backbone_name}".')
    if decoder_output_stride == 2 and backbone_name not in _ENCODERS_WITH_OS2:
      raise ValueError(f'decoder_output_stride 2 needs an OS2 encoder endpoint; '
                       f'"{backbone_name}" has none (use one of {_ENCODERS_WITH_OS2}).')
    if decoder_output_stride not in (2, 4):
      raise ValueError(
          f'decoder_output_stride must be 2 or 4, got {decoder_output_stride}.')
    for arg_name, value in (('pixel_decoder_block_counts',
                             pixel_decoder_block_counts),
                            ('pixel_decoder_widths', pixel_decoder_widths),
                            ('pixel_decoder_block_types',
                             pixel_decoder_block_types)):
      if len(value) != 4:
        raise ValueError(f'{arg_name} needs 4 entries (OS32..OS4), got {value}.')
    if use_auxiliary_semantic_decoder and not use_auxiliary_semantic_head:
      raise ValueError('use_auxiliary_semantic_decoder=True needs '
                       'use_auxiliary_semantic_head=True (the decoder only '
                       'feeds the semantic head).')
    if len(transformer_decoder_block_counts) != 3:
      raise ValueError('transformer_decoder_block_counts needs 3 entries, got '
                       f'{transformer_decoder_block_counts}.')
    self.num_classes = num_classes
    self.num_mask_slots = num_mask_slots
    self.backbone_name = backbone_name
    self.backbone_width_multiplier = backbone_width_multiplier
    self.backbone_block_counts = (None if backbone_block_counts is None
                                  else tuple(backbone_block_counts))
    self.drop_path_keep_prob = drop_path_keep_prob
    self.pixel_decoder_drop_path_keep_prob = pixel_decoder_drop_path_keep_prob
    self.transformer_decoder_drop_path_keep_prob = (
        transformer_decoder_drop_path_keep_prob)
    self.pixel_decoder_block_counts = tuple(pixel_decoder_block_counts)
    self.pixel_decoder_widths = tuple(pixel_decoder_widths)
    self.pixel_decoder_block_types = tuple(pixel_decoder_block_types)
    self.pixel_decoder_num_heads = pixel_decoder_num_heads
    self.axial_max_span = axial_max_span
    self.decoder_output_stride = decoder_output_stride
    self.pixel_decoder_os2_width = pixel_decoder_os2_width
    self.pixel_decoder_os2_block_count = pixel_decoder_os2_block_count
    self.transformer_decoder_block_counts = tuple(
        transformer_decoder_block_counts)
    self.transformer_channels = transformer_channels
    self.transformer_num_heads = transformer_num_heads
    self.transformer_ffn_channels = transformer_ffn_channels
    self.transformer_cross_attention = transformer_cross_attention
    self.transformer_latent_memory_size = transformer_latent_memory_size
    self.pixel_space_head_channels = pixel_space_head_channels
    self.pixel_space_output_channels = pixel_space_output_channels
    self.use_auxiliary_semantic_decoder = use_auxiliary_semantic_decoder
    self.use_auxiliary_semantic_head = use_auxiliary_semantic_head
    self.auxiliary_low_level = tuple(
        (str(k), int(c)) for k, c in auxiliary_low_level)
    self.aspp_channels = aspp_channels
    self.atrous_rates = tuple(atrous_rates)
    self.aspp_dropout_rate = aspp_dropout_rate
    self.semantic_decoder_channels = semantic_decoder_channels
    self.semantic_head_channels = semantic_head_channels
    self.void_prior_prob = void_prior_prob
    self.mask_bn_gamma_init = mask_bn_gamma_init
    self.center_init_stddev = center_init_stddev
    self.layer_norm_epsilon = layer_norm_epsilon
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm

    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    self._encoder = ENCODERS[backbone_name](
        backbone_width_multiplier, self.backbone_block_counts,
        drop_path_keep_prob, bn)
    widths = self.pixel_decoder_widths
    counts = self.pixel_decoder_block_counts
    types = self.pixel_decoder_block_types
    if decoder_output_stride == 2:
      widths += (pixel_decoder_os2_width,)
      counts += (pixel_decoder_os2_block_count,)
      types += ('bottleneck',)
    self._pixel_decoder = kmax_pixel_decoder.KMaXPixelDecoder(
        widths=widths, block_counts=counts, block_types=types,
        num_heads=pixel_decoder_num_heads, max_span=axial_max_span,
        drop_path_keep_prob=pixel_decoder_drop_path_keep_prob,
        layer_norm_epsilon=layer_norm_epsilon, name='pixel_decoder', **bn)
    self._transformer_decoder = (
        kmax_transformer_decoder.KMaXTransformerDecoder(
            num_classes=num_classes, num_mask_slots=num_mask_slots,
            block_counts=transformer_decoder_block_counts,
            channels=transformer_channels, num_heads=transformer_num_heads,
            ffn_channels=transformer_ffn_channels,
            pixel_space_head_channels=pixel_space_head_channels,
            pixel_space_output_channels=pixel_space_output_channels,
            drop_path_keep_prob=transformer_decoder_drop_path_keep_prob,
            void_prior_prob=void_prior_prob,
            mask_bn_gamma_init=mask_bn_gamma_init,
            center_init_stddev=center_init_stddev,
            cross_attention=transformer_cross_attention,
            latent_memory_size=transformer_latent_memory_size,
            name='transformer_decoder', **bn))
    self._prediction_head = kmax_prediction_head.KMaXPredictionHead(
        num_classes=num_classes,
        pixel_space_head_channels=pixel_space_head_channels,
        pixel_space_output_channels=pixel_space_output_channels,
        void_prior_prob=void_prior_prob, mask_bn_gamma_init=mask_bn_gamma_init,
        name='prediction_head', **bn)
    if use_auxiliary_semantic_decoder:
      self._semantic_decoder = semantic_decoder.KMaXSemanticDecoder(
          aspp_channels=aspp_channels, atrous_rates=atrous_rates,
          aspp_dropout_rate=aspp_dropout_rate,
          low_level=self.auxiliary_low_level,
          decoder_channels=semantic_decoder_channels,
          name='semantic_decoder', **bn)
    if use_auxiliary_semantic_head:
      self._semantic_head_without_last_layer = conv_bn_act.SeparableConvBlock(
          filters=semantic_head_channels, kernel_size=5, activation='gelu',
          name='semantic_head_without_last_layer', **bn)
      # DeepLab2's PanopticDeepLabSingleHead final_conv init.
      self._semantic_last_layer = checkpoint_naming.Conv2D(
          num_classes, 1, use_bias=True,
          kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
          name='semantic_last_layer')

  @property
  def checkpoint_items(self) -> Dict[str, keras.layers.Layer]:
    """Sub-modules under DeepLab2's checkpoint names (for tf.train.Checkpoint)."""
    items = {
        'encoder': self._encoder,
        'pixel_decoder': self._pixel_decoder,
        'transformer_decoder': self._transformer_decoder,
        'pixel_space_head': self._prediction_head._pixel_space_head,
        'transformer_mask_head': self._prediction_head._transformer_mask_head,
        'transformer_class_head': self._prediction_head._transformer_class_head,
        'pixel_space_feature_batch_norm':
            self._prediction_head._pixel_space_feature_batch_norm,
        'pixel_space_mask_batch_norm':
            self._prediction_head._pixel_space_mask_batch_norm,
    }
    if self.use_auxiliary_semantic_decoder:
      items['semantic_decoder'] = self._semantic_decoder
    if self.use_auxiliary_semantic_head:
      items.update({
          'semantic_head_without_last_layer':
              self._semantic_head_without_last_layer,
          'semantic_last_layer': self._semantic_last_layer,
      })
    return items

  def build(self, input_shape):
    frame_shape = (None, input_shape[2], input_shape[3], 3)
    self._encoder.build(frame_shape)
    encoder_channels = self._encoder.output_channels
    endpoint_shapes = {k: (None, None, None, c)
                       for k, c in encoder_channels.items()}
    self._pixel_decoder.build(endpoint_shapes)
    decoder_channels = self._pixel_decoder.output_channels
    self._transformer_decoder.build(
        [(None, None, None, decoder_channels[k]) for k in _TRANSFORMER_INPUTS])
    embedding = (None, None, self.transformer_channels)
    self._prediction_head.build({
        'pixel_feature': (None, None, None,
                          decoder_channels['decoder_output']),
        'class_embedding': embedding, 'mask_embedding': embedding})
    semantic_channels = encoder_channels['stage5']
    if self.use_auxiliary_semantic_decoder:
      self._semantic_decoder.build(endpoint_shapes)
      semantic_channels = self.semantic_decoder_channels
    if self.use_auxiliary_semantic_head:
      self._semantic_head_without_last_layer.build(
          (None, None, None, semantic_channels))
      self._semantic_last_layer.build(
          (None, None, None, self.semantic_head_channels))
    self.built = True

  def call(self, images, training=False,
           auxiliary_outputs: Optional[bool] = None) -> Dict[str, Any]:
    """Segments a batch of clips.

    Args:
      images: float32 [B, T, H, W, 3], raw pixel values in [0, 255].
      training: training mode (BN statistics, drop path).
      auxiliary_outputs: also compute what only the training loss reads: the
        deep-supervision outputs (`PRED_AUX_OUTPUTS`) and the auxiliary
        semantic branch (`PRED_SEMANTIC_LOGITS`). None (default) = `training`:
        inference skips them (about a third of the forward time with the
        semantic decoder) and returns the main outputs only, identical to
        those of a call with them.

    Returns:
      A dict of float32 tensors, whatever the dtype policy (h, w =
      ceil(H/os), ceil(W/os) for the decoder output stride os):
        PRED_PIXEL_SPACE_MASK_LOGITS [B, T, h, w, N] (tubes),
        PRED_TRANSFORMER_CLASS_LOGITS [B, N, C + 1] (void last),
        PRED_PIXEL_SPACE_NORMALIZED_FEATURE [B, T, h, w, D],
        PRED_QUERY_EMBEDDINGS [B, N, E] (final cluster centres),
        PRED_SEMANTIC_LOGITS [B, T, hs, ws, C] (with `auxiliary_outputs` and
          the auxiliary semantic head only;
          at the semantic head's own resolution, as DeepLab2: h, w with the
          semantic decoder, the encoder's stride 32 without it),
        PRED_AUX_OUTPUTS (with `auxiliary_outputs`): tuple (one per kMaX
          layer) of dicts with
          PRED_PIXEL_SPACE_MASK_LOGITS [B, T, h, w, N],
          PRED_TRANSFORMER_CLASS_LOGITS [B, N, C + 1] and
          PRED_PIXEL_SPACE_NORMALIZED_FEATURE [B, T, h, w, D]; logits and
          features resized per frame to h, w (align_corners, DeepLab2's
          `_prepare_auxiliary_results`), the feature not re-normalised.
    """
    # Mixed policies autocast the input to bfloat16/float16: normalise in float32.
    images = tf.cast(images, tf.float32)
    if images.shape.rank != 5:
      raise ValueError(f'images must be [B, T, H, W, 3], got {images.shape}.')
    shape = tf.shape(images)
    num_frames = images.shape[1] if images.shape[1] is not None else shape[1]
    frames = tf.reshape(images / common.PAD_PIXEL_VALUE - 1.0,
                        [-1, shape[2], shape[3], 3])  # [B*T, H, W, 3]

    endpoints = self._encoder(frames, training=training)
    decoded = self._pixel_decoder(endpoints, training=training)
    transformer_inputs = [resize.stack_frames(decoded[k], num_frames)
                          for k in _TRANSFORMER_INPUTS]  # [B, T*h_i, w_i, C_i]
    transformer = self._transformer_decoder(
        transformer_inputs, num_frames=num_frames, training=training)
    head = self._prediction_head(
        {'pixel_feature': decoded['decoder_output'],
         'class_embedding': transformer['class_embedding'],
         'mask_embedding': transformer['mask_embedding']},
        num_frames=num_frames, training=training)

    output_shape = tf.shape(decoded['decoder_output'])
    out_height, out_width = output_shape[1], output_shape[2]

    def to_tubes(per_frame):  # [B*T, h', w', K] -> [B, T, h', w', K]
      frame_shape = tf.shape(per_frame)
      return tf.reshape(per_frame, [-1, num_frames, frame_shape[1],
                                    frame_shape[2], per_frame.shape[-1]])

    outputs = {
        common.PRED_PIXEL_SPACE_MASK_LOGITS: to_tubes(resize.unstack_frames(
            head[common.PRED_PIXEL_SPACE_MASK_LOGITS], num_frames)),
        common.PRED_TRANSFORMER_CLASS_LOGITS:
            head[common.PRED_TRANSFORMER_CLASS_LOGITS],
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: to_tubes(
            head[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE]),
        common.PRED_QUERY_EMBEDDINGS: transformer['centers'],
    }
    if auxiliary_outputs is None:
      auxiliary_outputs = bool(training)
    if auxiliary_outputs:
      outputs[common.PRED_AUX_OUTPUTS] = tuple(
          self._deep_supervision_output(aux, num_frames, out_height, out_width, to_tubes)
          for aux in transformer['aux_outputs'])
      if self.use_auxiliary_semantic_head:
        outputs[common.PRED_SEMANTIC_LOGITS] = to_tubes(
            self._semantic_logits(endpoints, training))
    # Under a mixed-precision policy the layers compute in bfloat16/float16;
    # logits and features leave the model in float32 for the losses, the
    # matcher and the post-processor.
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs)

  @staticmethod
  def _deep_supervision_output(aux, num_frames, out_height, out_width, to_tubes):
    """One kMaX layer's prediction at the decoder output resolution, as tubes."""
    # Resize each frame on its own so frames never bleed into each other.
    frame_logits = resize.unstack_frames(
        aux[common.PRED_PIXEL_SPACE_MASK_LOGITS], num_frames)
    frame_logits = resize.resize_bilinear(frame_logits, [out_height, out_width])
    frame_feature = resize.resize_bilinear(
        aux[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE], [out_height, out_width])
    return {
        common.PRED_PIXEL_SPACE_MASK_LOGITS: to_tubes(frame_logits),
        common.PRED_TRANSFORMER_CLASS_LOGITS: aux[common.PRED_TRANSFORMER_CLASS_LOGITS],
        common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE: to_tubes(frame_feature),
    }

  def _semantic_logits(self, endpoints, training):
    """The auxiliary semantic head's logits [B*T, hs, ws, C]."""
    if self.use_auxiliary_semantic_decoder:
      semantic = self._semantic_decoder(endpoints, training=training)
    else:
      semantic = endpoints['stage5']
    semantic = self._semantic_head_without_last_layer(semantic, training=training)
    return self._semantic_last_layer(semantic)

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_classes': self.num_classes,
        'num_mask_slots': self.num_mask_slots,
        'backbone_name': self.backbone_name,
        'backbone_width_multiplier': self.backbone_width_multiplier,
        'backbone_block_counts': (None if self.backbone_block_counts is None
                                  else list(self.backbone_block_counts)),
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'pixel_decoder_drop_path_keep_prob':
            self.pixel_decoder_drop_path_keep_prob,
        'transformer_decoder_drop_path_keep_prob':
            self.transformer_decoder_drop_path_keep_prob,
        'pixel_decoder_block_counts': list(self.pixel_decoder_block_counts),
        'pixel_decoder_widths': list(self.pixel_decoder_widths),
        'pixel_decoder_block_types': list(self.pixel_decoder_block_types),
        'pixel_decoder_num_heads': self.pixel_decoder_num_heads,
        'axial_max_span': self.axial_max_span,
        'decoder_output_stride': self.decoder_output_stride,
        'pixel_decoder_os2_width': self.pixel_decoder_os2_width,
        'pixel_decoder_os2_block_count': self.pixel_decoder_os2_block_count,
        'transformer_decoder_block_counts':
            list(self.transformer_decoder_block_counts),
        'transformer_channels': self.transformer_channels,
        'transformer_num_heads': self.transformer_num_heads,
        'transformer_ffn_channels': self.transformer_ffn_channels,
        'transformer_cross_attention': self.transformer_cross_attention,
        'transformer_latent_memory_size': self.transformer_latent_memory_size,
        'pixel_space_head_channels': self.pixel_space_head_channels,
        'pixel_space_output_channels': self.pixel_space_output_channels,
        'use_auxiliary_semantic_decoder': self.use_auxiliary_semantic_decoder,
        'use_auxiliary_semantic_head': self.use_auxiliary_semantic_head,
        'auxiliary_low_level': [list(p) for p in self.auxiliary_low_level],
        'aspp_channels': self.aspp_channels,
        'atrous_rates': list(self.atrous_rates),
        'aspp_dropout_rate': self.aspp_dropout_rate,
        'semantic_decoder_channels': self.semantic_decoder_channels,
        'semantic_head_channels': self.semantic_head_channels,
        'void_prior_prob': self.void_prior_prob,
        'mask_bn_gamma_init': self.mask_bn_gamma_init,
        'center_init_stddev': self.center_init_stddev,
        'layer_norm_epsilon': self.layer_norm_epsilon,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config
