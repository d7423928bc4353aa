"""kMaX transformer decoder: k-means cross-attention over a clip.

kMaX-DeepLab (Yu et al., ECCV 2022, Sec. 3.1, Eq. (5)-(6)): cross-attention
becomes a k-means step. Each layer predicts per-pixel cluster logits with its
auxiliary clustering predictor, takes a hard argmax over the N clusters (one-hot,
stop-gradient; identical in training and inference), and updates the centres with
the per-cluster SUM of pixel values:  C_hat = C + argmax_N(Q^c (K^p)^T) V^p
(Video-kMaX, Shin et al. 2024, Eq. (2)). Self-attention among centres runs in
parallel from the same pre-update memory, followed by an FFN. Pixels are not
updated. In clip-kMaX the pixel features are [B, T*h, w, C] (frames stacked along
height) so one assignment covers all T*h*w pixels of a clip.

`cross_attention` selects the centre update for the paper's Table 4 baselines
(docs/model.md, "Cross-attention baselines"); 'kmeans' is clip-kMaX:
- 'standard': multi-head softmax cross-attention of the centres over all T*h*w
  clip pixels (Vaswani et al.; the normal cross-attention of Video-kMaX Tab. 4);
- 'latent_memory': TubeFormer-style (Kim et al., CVPR 2022): a learned latent
  memory of `latent_memory_size` tokens first attends (softmax) over all T*h*w
  pixels, then the centres attend (softmax) over the latent tokens only.
"""

from typing import Dict, Sequence

import keras
import tensorflow as tf

from deeplab2_vkmax import common
from deeplab2_vkmax.model.heads import kmax_prediction_head
from deeplab2_vkmax.model.layers import checkpoint_naming
from deeplab2_vkmax.model.layers import conv_bn_act
from deeplab2_vkmax.model.layers import drop_path
from deeplab2_vkmax.model.layers import normalization
from deeplab2_vkmax.model.layers import resize
from deeplab2_vkmax.model import transformer_decoder

_PACKAGE = 'deeplab2_vkmax'
_gelu = conv_bn_act.get_activation('gelu')
# Centre update of a transformer layer (Video-kMaX Tab. 4); the first is clip-kMaX.
CROSS_ATTENTIONS = transformer_decoder.CROSS_ATTENTIONS


def _multi_head_attention(query, key, value, num_heads: int):
  """Softmax attention of query [B, N, E] over key / value [B, L, E] -> [B, N, E].

  Scaled dot products per head (E / heads channels each); the softmax runs over
  all L positions, in float32 under mixed precision.
  """
  batch, num_queries, channels = tf.shape(query)[0], tf.shape(query)[1], query.shape[-1]
  depth = channels // num_heads
  split = lambda x: tf.reshape(x, [batch, -1, num_heads, depth])  # [B, *, heads, d]
  logits = tf.einsum('bnhd,blhd->bhnl', split(query), split(key)) * depth ** -0.5
  attention = tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
                      value.dtype)  # [B, heads, N, L]: softmax over the L positions.
  retrieved = tf.einsum('bhnl,blhd->bnhd', attention, split(value))  # [B, N, h, d]
  return tf.reshape(retrieved, [batch, num_queries, channels])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MemorySelfAttention(keras.layers.Layer):
  """Multi-head self-attention among cluster centres from a fused qkv tensor.

  Similarities and retrieved values are batch-normalised per head
  (`_batch_norm_similarity` [heads], `_batch_norm_retrieved_value`
  [1, heads, 1, dv]), as in MaX-DeepLab's dual-path transformer.

  Args:
    num_heads: attention heads.
    query_key_channels: total query (= key) channels.
    value_channels: total value channels.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.

  Input qkv [B, N, 2*query_key_channels + value_channels]; output
  [B, N, value_channels].
  """

  def __init__(self, *, num_heads: int = 8, query_key_channels: int = 128,
               value_channels: int = 256, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if query_key_channels % num_heads or value_channels % num_heads:
      raise ValueError(
          f'channels ({query_key_channels}, {value_channels}) must be divisible '
          f'by num_heads={num_heads}.')
    self.num_heads = num_heads
    self.query_key_channels = query_key_channels
    self.value_channels = value_channels
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(momentum=bn_momentum, epsilon=bn_epsilon,
              synchronized=use_sync_batchnorm)
    self._value_depth = value_channels // num_heads
    self._batch_norm_similarity = normalization.make_batch_norm(
        name='_batch_norm_similarity', axis=1, **bn)
    self._batch_norm_retrieved_value = normalization.AxisBatchNormalization(
        param_shape=(1, num_heads, 1, self._value_depth),
        name='_batch_norm_retrieved_value', **bn)

  def build(self, input_shape):
    self._batch_norm_similarity.build((None, self.num_heads, None, None))
    self._batch_norm_retrieved_value.build(
        (None, self.num_heads, None, self._value_depth))
    self.built = True

  def call(self, inputs, training=False):
    num_slots = tf.shape(inputs)[1]
    query, key, value = tf.split(
        inputs, [self.query_key_channels, self.query_key_channels,
                 self.value_channels], axis=-1)
    split_heads = lambda x: tf.reshape(x, [-1, num_slots, self.num_heads,
                                           x.shape[-1] // self.num_heads])
    query, key, value = split_heads(query), split_heads(key), split_heads(value)
    similarity = tf.einsum('bnhd,bmhd->bhnm', query, key)  # [B, heads, N, N]
    similarity = self._batch_norm_similarity(similarity, training=training)
    # Softmax in float32 under mixed precision, back to the compute dtype.
    attention = tf.cast(tf.nn.softmax(tf.cast(similarity, tf.float32), axis=-1),
                        similarity.dtype)
    retrieved = tf.einsum('bhnm,bmhd->bhnd', attention, value)  # [B, h, N, dv]
    retrieved = self._batch_norm_retrieved_value(retrieved, training=training)
    retrieved = tf.transpose(retrieved, [0, 2, 1, 3])  # [B, N, h, dv]
    return tf.reshape(retrieved, [-1, num_slots, self.value_channels])

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.value_channels,)

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_heads': self.num_heads,
        'query_key_channels': self.query_key_channels,
        'value_channels': self.value_channels,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
    })
    return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KMaXTransformerLayer(keras.layers.Layer):
  """One kMaX layer: k-means cross-attention + self-attention + FFN on centres.

  Args:
    num_classes: real classes C of the auxiliary class head.
    channels: centre channels E.
    num_heads: self-attention heads.
    ffn_channels: FFN hidden channels.
    pixel_space_head_channels, pixel_space_output_channels: auxiliary
      clustering predictor's pixel head options.
    drop_path_keep_prob: keep probability of the three residual branches.
    void_prior_prob, mask_bn_gamma_init: auxiliary head initialisation.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
    cross_attention: the centre update, one of `CROSS_ATTENTIONS` (module
      docstring); latent_memory_size: tokens of the 'latent_memory' update.

  Call on {'pixel_feature': [B, T*h, w, Cp], 'centers': [B, N, E]} with
  `num_frames` = T. Returns (centers [B, N, E], auxiliary prediction dict with
  PRED_PIXEL_SPACE_MASK_LOGITS [B, T*h, w, N], PRED_TRANSFORMER_CLASS_LOGITS
  [B, N, C + 1] and PRED_PIXEL_SPACE_NORMALIZED_FEATURE [B*T, h, w, D]) computed
  from the layer's input centres (DeepLab2's deep supervision: the feature feeds
  the auxiliary instance-discrimination loss).
  """

  def __init__(self, *, num_classes: int, channels: int = 256,
               num_heads: int = 8, ffn_channels: int = 2048,
               pixel_space_head_channels: int = 256,
               pixel_space_output_channels: int = 128,
               drop_path_keep_prob: float = 1.0, void_prior_prob: float = 0.9,
               mask_bn_gamma_init: float = 0.1, bn_momentum: float = 0.99,
               bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
               cross_attention: str = 'kmeans', latent_memory_size: int = 16,
               **kwargs):
    super().__init__(**kwargs)
    if channels % 2:
      raise ValueError(f'channels must be even, got {channels}.')
    if cross_attention not in CROSS_ATTENTIONS:
      raise ValueError(f'cross_attention must be one of {CROSS_ATTENTIONS}, got '
                       f'{cross_attention!r}.')
    if cross_attention != 'kmeans' and channels % num_heads:
      raise ValueError(f'channels ({channels}) must be divisible by num_heads '
                       f'({num_heads}) for {cross_attention} cross-attention.')
    self.cross_attention = cross_attention
    self.latent_memory_size = latent_memory_size
    self.num_classes = num_classes
    self.channels = channels
    self.num_heads = num_heads
    self.ffn_channels = ffn_channels
    self.pixel_space_head_channels = pixel_space_head_channels
    self.pixel_space_output_channels = pixel_space_output_channels
    self.drop_path_keep_prob = drop_path_keep_prob
    self.void_prior_prob = void_prior_prob
    self.mask_bn_gamma_init = mask_bn_gamma_init
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    conv1d = lambda name, filters, activation='none', gamma='ones', init=(
        'he_normal'): conv_bn_act.ConvBNAct(
            filters=filters, kernel_size=1, conv_type='1d',
            activation=activation, bn_gamma_initializer=gamma,
            kernel_initializer=init, name=name, **bn)
    # DeepLab2 initialises the value / qkv projections with the transformer
    # std (bottleneck channels)^-0.5.
    transformer_init = keras.initializers.TruncatedNormal(stddev=channels**-0.5)
    self._pixel_conv1_bn_act = conv1d('_pixel_conv1_bn_act', channels, 'gelu')
    self._pixel_v_conv_bn = conv1d('_pixel_v_conv_bn', channels,
                                   init=transformer_init)
    self._memory_conv1_bn_act = conv1d('_memory_conv1_bn_act', channels, 'gelu')
    self._memory_qkv_conv_bn = conv1d('_memory_qkv_conv_bn', 2 * channels,
                                      init=transformer_init)
    self._memory_attention = MemorySelfAttention(
        num_heads=num_heads, query_key_channels=channels // 2,
        value_channels=channels, name='_memory_attention', **bn)
    # Residual branches end in a zero-gamma BN so each layer starts as identity.
    self._memory_conv3_bn = conv1d('_memory_conv3_bn', channels, gamma='zeros')
    self._kmeans_memory_batch_norm_retrieved_value = (
        normalization.make_batch_norm(
            name='_kmeans_memory_batch_norm_retrieved_value',
            momentum=bn_momentum, epsilon=bn_epsilon,
            synchronized=use_sync_batchnorm))
    self._kmeans_memory_conv3_bn = conv1d('_kmeans_memory_conv3_bn', channels,
                                          gamma='zeros')
    self._memory_ffn_conv1_bn_act = conv1d('_memory_ffn_conv1_bn_act',
                                           ffn_channels, 'gelu')
    self._memory_ffn_conv2_bn = conv1d('_memory_ffn_conv2_bn', channels,
                                       gamma='zeros')
    self._auxiliary_clustering_predictor = (
        kmax_prediction_head.KMaXPredictionHead(
            num_classes=num_classes,
            pixel_space_head_channels=pixel_space_head_channels,
            pixel_space_output_channels=pixel_space_output_channels,
            void_prior_prob=void_prior_prob,
            mask_bn_gamma_init=mask_bn_gamma_init,
            name='_auxiliary_clustering_predictor', **bn))
    self._kmeans_drop_path = drop_path.DropPath(
        keep_prob=drop_path_keep_prob, name='_kmeans_drop_path')
    self._attention_drop_path = drop_path.DropPath(
        keep_prob=drop_path_keep_prob, name='_attention_drop_path')
    self._ffn_drop_path = drop_path.DropPath(
        keep_prob=drop_path_keep_prob, name='_ffn_drop_path')
    # The Table 4 baselines' own projections (k-means needs none: its
    # assignment comes from the auxiliary clustering predictor).
    if cross_attention != 'kmeans':
      self._cross_query_conv_bn = conv1d('_cross_query_conv_bn', channels,
                                         init=transformer_init)
      self._cross_key_conv_bn = conv1d('_cross_key_conv_bn', channels,
                                       init=transformer_init)
    if cross_attention == 'latent_memory':
      self._latent_query_conv_bn = conv1d('_latent_query_conv_bn', channels,
                                          init=transformer_init)
      self._latent_value_conv_bn = conv1d('_latent_value_conv_bn', channels,
                                          init=transformer_init)

  def build(self, input_shape):
    pixel_shape = input_shape['pixel_feature']
    c = self.channels
    self._pixel_conv1_bn_act.build((None, None, pixel_shape[-1]))
    self._pixel_v_conv_bn.build((None, None, c))
    self._memory_conv1_bn_act.build((None, None, c))
    self._memory_qkv_conv_bn.build((None, None, c))
    self._memory_attention.build((None, None, 2 * c))
    self._memory_conv3_bn.build((None, None, c))
    self._kmeans_memory_batch_norm_retrieved_value.build((None, None, c))
    self._kmeans_memory_conv3_bn.build((None, None, c))
    self._memory_ffn_conv1_bn_act.build((None, None, c))
    self._memory_ffn_conv2_bn.build((None, None, self.ffn_channels))
    self._auxiliary_clustering_predictor.build({
        'pixel_feature': (None, None, None, c),
        'class_embedding': (None, None, c), 'mask_embedding': (None, None, c)})
    if self.cross_attention != 'kmeans':
      self._cross_query_conv_bn.build((None, None, c))
      self._cross_key_conv_bn.build((None, None, c))
    if self.cross_attention == 'latent_memory':
      # A public attribute: tf.train.Checkpoint records it as `latent_memory`.
      self.latent_memory = self.add_weight(
          name='latent_memory', shape=(self.latent_memory_size, c),
          initializer=keras.initializers.TruncatedNormal(stddev=1.0))
      self._latent_query_conv_bn.build((None, None, c))
      self._latent_value_conv_bn.build((None, None, c))
    self.built = True

  def call(self, inputs, num_frames=1, training=False):
    pixels = inputs['pixel_feature']  # [B, T*h, w, Cp]
    centers = inputs['centers']  # [B, N, E]
    shape = tf.shape(pixels)
    batch, stacked_height, width = shape[0], shape[1], shape[2]
    flat_pixels = tf.reshape(_gelu(pixels), [batch, -1, pixels.shape[-1]])
    pixel_space = self._pixel_conv1_bn_act(flat_pixels, training=training)
    memory_space = self._memory_conv1_bn_act(centers, training=training)

    # Assignment step, from the input centres (Eq. (2) argmax).
    pixel_space_2d = tf.reshape(pixel_space,
                                [batch, stacked_height, width, self.channels])
    aux = self._auxiliary_clustering_predictor(
        {'pixel_feature': resize.unstack_frames(pixel_space_2d, num_frames),
         'class_embedding': memory_space, 'mask_embedding': memory_space},
        num_frames=num_frames, training=training)
    pixel_value = self._pixel_v_conv_bn(pixel_space, training=training)  # [B, THW, E]
    if self.cross_attention == 'kmeans':
      mask_logits = aux[common.PRED_PIXEL_SPACE_MASK_LOGITS]  # [B, T*h, w, N]
      num_slots = tf.shape(centers)[1]
      flat_logits = tf.reshape(mask_logits, [batch, -1, num_slots])  # [B, THW, N]
      assignment = tf.stop_gradient(
          tf.one_hot(tf.argmax(flat_logits, axis=-1), num_slots,
                     dtype=pixel_space.dtype))  # [B, THW, N]
      # Update step: per-cluster sum of the assigned pixel values.
      kmeans_update = tf.einsum('blm,bld->bmd', assignment, pixel_value)
    else:
      kmeans_update = self._baseline_update(memory_space, pixel_space, pixel_value,
                                            training)  # [B, N, E]
    kmeans_update = self._kmeans_memory_batch_norm_retrieved_value(
        kmeans_update, training=training)
    kmeans_update = self._kmeans_memory_conv3_bn(kmeans_update, training=training)

    # Self-attention among centres, in parallel from the same memory_space.
    qkv = self._memory_qkv_conv_bn(memory_space, training=training)
    attention = _gelu(self._memory_attention(qkv, training=training))
    attention = self._memory_conv3_bn(attention, training=training)

    centers = _gelu(
        centers + self._kmeans_drop_path(kmeans_update, training=training) +
        self._attention_drop_path(attention, training=training))
    ffn = self._memory_ffn_conv1_bn_act(centers, training=training)
    ffn = self._memory_ffn_conv2_bn(ffn, training=training)
    centers = _gelu(centers + self._ffn_drop_path(ffn, training=training))
    return centers, aux

  def _baseline_update(self, memory_space, pixel_space, pixel_value, training):
    """The centre update of the 'standard' / 'latent_memory' baselines, [B, N, E].

    Args:
      memory_space: [B, N, E] centres after their input projection.
      pixel_space: [B, T*h*w, E] clip pixels after their input projection.
      pixel_value: [B, T*h*w, E] the pixels' values (as k-means uses).
    """
    query = self._cross_query_conv_bn(memory_space, training=training)  # [B, N, E]
    if self.cross_attention == 'standard':
      key = self._cross_key_conv_bn(pixel_space, training=training)  # [B, THW, E]
      return _multi_head_attention(query, key, pixel_value, self.num_heads)
    # Latent memory: M learned tokens read the clip, the centres read the tokens.
    batch = tf.shape(memory_space)[0]
    latent = tf.tile(tf.cast(self.latent_memory, memory_space.dtype)[None],
                     [batch, 1, 1])  # [B, M, E]
    latent_query = self._latent_query_conv_bn(latent, training=training)
    pixel_key = self._cross_key_conv_bn(pixel_space, training=training)
    latent = latent + _multi_head_attention(latent_query, pixel_key, pixel_value,
                                            self.num_heads)  # [B, M, E]
    latent_value = self._latent_value_conv_bn(latent, training=training)
    return _multi_head_attention(query, latent, latent_value, self.num_heads)

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_classes': self.num_classes, 'channels': self.channels,
        'num_heads': self.num_heads, 'ffn_channels': self.ffn_channels,
        'pixel_space_head_channels': self.pixel_space_head_channels,
        'pixel_space_output_channels': self.pixel_space_output_channels,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'void_prior_prob': self.void_prior_prob,
        'mask_bn_gamma_init': self.mask_bn_gamma_init,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
        'cross_attention': self.cross_attention,
        'latent_memory_size': self.latent_memory_size,
    })
    return config


class _KMaXBlockGroup(keras.layers.Layer):
  """Holds one kMaX layer as `_block1_transformer`.

  Mirrors DeepLab2's one-block group so checkpoint keys read
  `_kmax_decoder/{i}/_block1_transformer/...`. Internal: rebuilt by its owner.
  """

  def __init__(self, layer: 'KMaXTransformerLayer', **kwargs):
    super().__init__(**kwargs)
    self._block1_transformer = layer

  def build(self, input_shape):
    self._block1_transformer.build(input_shape)
    self.built = True

  def call(self, inputs, num_frames=1, training=False):
    return self._block1_transformer(inputs, num_frames=num_frames,
                                    training=training)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KMaXTransformerDecoder(keras.layers.Layer):
  """Learnable cluster centres refined by kMaX layers on OS32, OS16, OS8 features.

  Sublayers (DeepLab2 names): `cluster_centers` [1, N, E] (truncated normal,
  std `center_init_stddev`), `_kmax_decoder/{i}/_block1_transformer`,
  `_class_embedding_projection`, `_mask_embedding_projection`.

  Args:
    num_classes: real classes C of the auxiliary class heads.
    num_mask_slots: number of cluster centres N.
    block_counts: kMaX layers per input feature (OS32, OS16, OS8).
    channels: centre channels E.
    num_heads: self-attention heads.
    ffn_channels: FFN hidden channels.
    pixel_space_head_channels, pixel_space_output_channels: auxiliary pixel
      head options.
    drop_path_keep_prob: keep probability of every residual branch.
    void_prior_prob, mask_bn_gamma_init: auxiliary head initialisation.
    center_init_stddev: stddev of the centres' truncated-normal init.
    bn_momentum, bn_epsilon, use_sync_batchnorm: BN options.
    cross_attention, latent_memory_size: as `KMaXTransformerLayer`, for every layer.

  Call on a sequence of len(block_counts) stacked feature maps
  [B, T*h_i, w_i, C_i], coarsest first, with `num_frames` = T. Returns a dict:
    'centers' [B, N, E] (final cluster centres),
    'class_embedding' [B, N, E], 'mask_embedding' [B, N, E],
    'aux_outputs': tuple (one per layer) of dicts with
      PRED_PIXEL_SPACE_MASK_LOGITS [B, T*h_i, w_i, N],
      PRED_TRANSFORMER_CLASS_LOGITS [B, N, C + 1] and
      PRED_PIXEL_SPACE_NORMALIZED_FEATURE [B*T, h_i, w_i, D].
  """

  def __init__(self, *, num_classes: int, num_mask_slots: int = 128,
               block_counts: Sequence[int] = (2, 2, 2), channels: int = 256,
               num_heads: int = 8, ffn_channels: int = 2048,
               pixel_space_head_channels: int = 256,
               pixel_space_output_channels: int = 128,
               drop_path_keep_prob: float = 1.0, void_prior_prob: float = 0.9,
               mask_bn_gamma_init: float = 0.1, center_init_stddev: float = 1.0,
               bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
               use_sync_batchnorm: bool = False, cross_attention: str = 'kmeans',
               latent_memory_size: int = 16, **kwargs):
    super().__init__(**kwargs)
    self.cross_attention = cross_attention
    self.latent_memory_size = latent_memory_size
    self.num_classes = num_classes
    self.num_mask_slots = num_mask_slots
    self.block_counts = tuple(block_counts)
    self.channels = channels
    self.num_heads = num_heads
    self.ffn_channels = ffn_channels
    self.pixel_space_head_channels = pixel_space_head_channels
    self.pixel_space_output_channels = pixel_space_output_channels
    self.drop_path_keep_prob = drop_path_keep_prob
    self.void_prior_prob = void_prior_prob
    self.mask_bn_gamma_init = mask_bn_gamma_init
    self.center_init_stddev = center_init_stddev
    self.bn_momentum = bn_momentum
    self.bn_epsilon = bn_epsilon
    self.use_sync_batchnorm = use_sync_batchnorm
    bn = dict(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
              use_sync_batchnorm=use_sync_batchnorm)
    layer_kwargs = dict(
        num_classes=num_classes, channels=channels, num_heads=num_heads,
        ffn_channels=ffn_channels,
        pixel_space_head_channels=pixel_space_head_channels,
        pixel_space_output_channels=pixel_space_output_channels,
        drop_path_keep_prob=drop_path_keep_prob,
        void_prior_prob=void_prior_prob, mask_bn_gamma_init=mask_bn_gamma_init,
        cross_attention=cross_attention, latent_memory_size=latent_memory_size,
        **bn)
    self._feature_index = [i for i, count in enumerate(self.block_counts)
                           for _ in range(count)]
    groups = [
        _KMaXBlockGroup(KMaXTransformerLayer(name='_block1_transformer',
                                             **layer_kwargs),
                        name=f'_kmax_block_group{index}')
        for index in range(len(self._feature_index))]
    self._kmax_decoder = checkpoint_naming.LayerList(groups,
                                                     name='_kmax_decoder')
    self._class_embedding_projection = conv_bn_act.ConvBNAct(
        filters=channels, kernel_size=1, conv_type='1d', activation='gelu',
        name='_class_embedding_projection', **bn)
    self._mask_embedding_projection = conv_bn_act.ConvBNAct(
        filters=channels, kernel_size=1, conv_type='1d', activation='gelu',
        name='_mask_embedding_projection', **bn)

  def build(self, input_shape):
    self.cluster_centers = self.add_weight(
        name='cluster_centers', shape=(1, self.num_mask_slots, self.channels),
        initializer=keras.initializers.TruncatedNormal(
            stddev=self.center_init_stddev))
    for index, feature_index in enumerate(self._feature_index):
      self._kmax_decoder[index].build(
          {'pixel_feature': input_shape[feature_index],
           'centers': (None, self.num_mask_slots, self.channels)})
    self._kmax_decoder.build()
    self._class_embedding_projection.build((None, None, self.channels))
    self._mask_embedding_projection.build((None, None, self.channels))
    self.built = True

  def call(self, inputs, num_frames=1, training=False) -> Dict[str, tf.Tensor]:
    if len(inputs) != len(self.block_counts):
      raise ValueError(f'Expected {len(self.block_counts)} feature maps, got '
                       f'{len(inputs)}.')
    batch = tf.shape(inputs[0])[0]
    centers = tf.tile(tf.convert_to_tensor(self.cluster_centers),
                      [batch, 1, 1])  # [B, N, E]
    aux_outputs = []
    for index, feature_index in enumerate(self._feature_index):
      centers, aux = self._kmax_decoder[index](
          {'pixel_feature': inputs[feature_index], 'centers': centers},
          num_frames=num_frames, training=training)
      aux_outputs.append(aux)
    return {
        'centers': centers,
        'class_embedding': self._class_embedding_projection(
            centers, training=training),
        'mask_embedding': self._mask_embedding_projection(
            centers, training=training),
        'aux_outputs': tuple(aux_outputs),
    }

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_classes': self.num_classes, 'num_mask_slots': self.num_mask_slots,
        'block_counts': list(self.block_counts), 'channels': self.channels,
        'num_heads': self.num_heads, 'ffn_channels': self.ffn_channels,
        'pixel_space_head_channels': self.pixel_space_head_channels,
        'pixel_space_output_channels': self.pixel_space_output_channels,
        'drop_path_keep_prob': self.drop_path_keep_prob,
        'void_prior_prob': self.void_prior_prob,
        'mask_bn_gamma_init': self.mask_bn_gamma_init,
        'center_init_stddev': self.center_init_stddev,
        'bn_momentum': self.bn_momentum, 'bn_epsilon': self.bn_epsilon,
        'use_sync_batchnorm': self.use_sync_batchnorm,
        'cross_attention': self.cross_attention,
        'latent_memory_size': self.latent_memory_size,
    })
    return config
