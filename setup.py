"""Installs deeplab2_vkmax; compiles the config protos as part of every build.

`pip install -e ".[test]"` is the only set-up step: the `.proto` files under
`deeplab2_vkmax/protos/` are compiled here with the protoc shipped in grpcio-tools
(pinned in pyproject.toml), so users never run protoc by hand. The top-level
`trainer/` and `evaluation/` folders install as `deeplab2_vkmax.trainer` and
`deeplab2_vkmax.evaluation`, never as top-level packages of those names.
"""

import glob
import os

import setuptools
from setuptools.command.build_py import build_py

_ROOT = os.path.dirname(os.path.abspath(__file__))


def compile_protos() -> None:
  """Compiles deeplab2_vkmax/protos/*.proto into *_pb2.py next to them."""
  from grpc_tools import protoc  # pylint: disable=g-import-not-at-top
  import grpc_tools  # pylint: disable=g-import-not-at-top

  well_known = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')
  protos = sorted(glob.glob(os.path.join(_ROOT, 'deeplab2_vkmax', 'protos', '*.proto')))
  for proto in protos:
    relative = os.path.relpath(proto, _ROOT)
    status = protoc.main(['grpc_tools.protoc', f'-I{_ROOT}', f'-I{well_known}',
                          f'--python_out={_ROOT}', relative])
    if status != 0:
      raise RuntimeError(f'protoc failed (exit {status}) on {relative}')


class BuildPyWithProtos(build_py):
  """build_py that compiles the protos first (wheel and editable builds)."""

  def run(self):
    compile_protos()
    super().run()


# Editable installs do not always run build_py, and a source checkout needs the
# generated modules too: compile whenever setup.py runs.
compile_protos()

_PACKAGES = ['deeplab2_vkmax'] + [
    'deeplab2_vkmax.' + p for p in setuptools.find_packages('deeplab2_vkmax')]
_PACKAGE_DIR = {
    'deeplab2_vkmax': 'deeplab2_vkmax',
    'deeplab2_vkmax.trainer': 'trainer',
    'deeplab2_vkmax.evaluation': 'evaluation',
}
for _top in ('trainer', 'evaluation'):
  _PACKAGES.append(f'deeplab2_vkmax.{_top}')
  for _sub in setuptools.find_packages(_top):
    _PACKAGES.append(f'deeplab2_vkmax.{_top}.{_sub}')
    _PACKAGE_DIR[f'deeplab2_vkmax.{_top}.{_sub}'] = os.path.join(_top, *_sub.split('.'))

setuptools.setup(
    name='deeplab2_vkmax',
    version='0.1.0',
    description='Video-kMaX (clip-kMaX + HiLA-MB) video panoptic segmentation in TF2/Keras 3.',
    license='Apache-2.0',  # The LICENSE file; DeepLab2's own license.
    python_requires='>=3.10',
    packages=_PACKAGES,
    package_dir=_PACKAGE_DIR,
    package_data={'deeplab2_vkmax': ['protos/*.proto']},
    cmdclass={'build_py': BuildPyWithProtos},
    install_requires=[
        'tensorflow==2.20.*',
        'tf-models-official==2.20.*',
        'keras>=3.10,<4',
        'numpy<2.4',
        'scipy',
        'pycocotools',
        'absl-py',
        'pillow',
        'protobuf>=7.35.1,<8',
        'grpcio-tools==1.85.1',
        'tqdm',
        'ai-edge-litert',  # The TFLite interpreter (vkmax-predict --tflite).
        'opencv-python-headless',
    ],
    extras_require={'test': ['pytest>=7']},
    entry_points={'console_scripts': ['vkmax-predict = deeplab2_vkmax.tools.predict:main']},
)
