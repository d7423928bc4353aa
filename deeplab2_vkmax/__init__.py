"""deeplab2_vkmax: Video-kMaX (clip-kMaX + HiLA-MB) in TensorFlow 2 / Keras 3."""

__version__ = '0.1.0'
