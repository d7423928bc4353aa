"""The backbone registry: every `BackboneOptions.name`, with what it is and where
its ImageNet weights come from. No TensorFlow: config validation reads it.

`clip_kmax.ENCODERS` builds an encoder for each name, `pretrained_weights` loads
each `keras_application`'s weight file, and `config` accepts exactly these names.
"""

import dataclasses
from typing import Dict, Optional


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One encoder choice.

  Attributes:
    family: 'resnet', 'axial_resnet' or 'convnext' (the encoder module).
    has_os2: the encoder has an output-stride-2 endpoint (decoder_output_stride 2).
    keras_application: the Keras Applications model whose ImageNet weight file
      `pretrained_weights` loads, or None.
  """
  family: str
  has_os2: bool
  keras_application: Optional[str]


BACKBONES: Dict[str, Backbone] = {
    # DeepLab2's kMaX ResNet-50 layout.
    'resnet50': Backbone('resnet', True, 'ResNet50'),
    # The same variables in Keras Applications' ResNet50 layout (max pool, stride
    # on the 1x1 conv), in which its ImageNet weights were trained.
    'resnet50_keras': Backbone('resnet', True, 'ResNet50'),
    # DeepLab2's name for Axial-ResNet-50 (the MaX-DeepLab-S backbone), the
    # paper's "Axial-ResNet50-B1".
    'axial_resnet50': Backbone('axial_resnet', True, None),
    'convnext_tiny': Backbone('convnext', False, 'ConvNeXtTiny'),
    'convnext_small': Backbone('convnext', False, 'ConvNeXtSmall'),
    'convnext_base': Backbone('convnext', False, 'ConvNeXtBase'),
    'convnext_large': Backbone('convnext', False, 'ConvNeXtLarge'),
}
NAMES = tuple(BACKBONES)
