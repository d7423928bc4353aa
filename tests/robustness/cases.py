"""Bad inputs for every command-line entry point, and what each must answer.

Each `Case` runs one command (a subprocess: the behaviour under test is the
program's exit code and output) in its own folder, after its `setup` wrote the
inputs there. `run_cases` runs them two at a time. `errors_doc` renders the
results as docs/errors.md, so the document always shows the messages the
programs print today (tests/robustness/test_bad_input.py keeps it in sync;
`python tests/robustness/cases.py` rewrites it).
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / 'configs' / 'synthetic' / 'clip_kmax_tiny.textproto'

TRAIN = ('trainer/train.py',)
EVALUATE = ('-m', 'deeplab2_vkmax.evaluation.evaluate')
EXPORT = ('-m', 'deeplab2_vkmax.export_model')
STEP = ('-m', 'deeplab2_vkmax.data.build_step_data')
VIPSEG = ('-m', 'deeplab2_vkmax.data.build_vipseg_data')
PREDICT = ('-m', 'deeplab2_vkmax.tools.predict')

_NAMES = {TRAIN: 'python trainer/train.py', EVALUATE: 'evaluate', EXPORT: 'export_model',
          STEP: 'build_step_data', VIPSEG: 'build_vipseg_data', PREDICT: 'vkmax-predict'}


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  Attributes:
    name: Identifier (the test id).
    entry: Which program (one of the tuples above).
    what: The bad input, in words (the docs/errors.md row).
    args: Arguments; '{dir}' is replaced by the case's folder.
    code: The expected exit code.
    expect: A regex the last stderr line (the stdout's for help) must match.
    setup: Writes the case's inputs into its folder.
    stdout: Whether `expect` is matched against stdout (help) instead.
  """
  name: str
  entry: Sequence[str]
  what: str
  args: Sequence[str]
  code: int
  expect: str
  setup: Optional[Callable[[pathlib.Path], None]] = None
  stdout: bool = False


@dataclasses.dataclass
class Result:
  case: Case
  code: int
  stdout: str
  stderr: str
  seconds: float

  @property
  def message(self) -> str:
    """The line the user reads: the last non-empty stderr (or stdout) line."""
    text = self.stdout if self.case.stdout else self.stderr
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ''

  def traceback(self) -> bool:
    return 'Traceback (most recent call last)' in self.stderr + self.stdout


# ----------------------------------------------------------------------------
# Inputs.


def _png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


def _step_tree(root: pathlib.Path, frames: Sequence[int] = (0, 1), size=(8, 12),
               label_size=None, semantic: int = 0, instance: int = 0) -> None:
  """A KITTI-STEP val split, one sequence '0000', in the official encodings."""
  height, width = size
  label_height, label_width = label_size or size
  for frame in frames:
    _png(root / 'step' / 'images' / 'val' / '0000' / f'{frame:06d}.png',
         np.full((height, width, 3), 90, np.uint8))
    panoptic = np.zeros((label_height, label_width, 3), np.uint8)
    panoptic[..., 0] = semantic
    panoptic[..., 1], panoptic[..., 2] = divmod(instance, 256)
    _png(root / 'step' / 'panoptic_maps' / 'val' / '0000' / f'{frame:06d}.png', panoptic)


def _touch(path: pathlib.Path, text: str = '') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _config(root: pathlib.Path, text: Optional[str] = None, **replace: str) -> None:
  text = TINY_CONFIG.read_text() if text is None else text
  for old, new in replace.items():
    assert old in text, old
    text = text.replace(old, new)
  _touch(root / 'config.textproto', text)


def _frames(root: pathlib.Path, sizes: Sequence[tuple]) -> None:
  for index, (height, width) in enumerate(sizes):
    _png(root / 'frames' / f'frame{index}.png', np.zeros((height, width, 3), np.uint8))


def _saved_model_of(dataset: str) -> Callable[[pathlib.Path], None]:
  """A folder with the config an exported SavedModel carries (trained on `dataset`)."""

  def setup(root):
    text = TINY_CONFIG.read_text().replace('dataset: "synthetic"', f'dataset: "{dataset}"')
    _touch(root / 'model' / 'config.textproto', text)
    _touch(root / 'val-00000-of-00001.tfrecord')

  return setup


def _both(*setups):
  def setup(root):
    for one in setups:
      one(root)
  return setup


def _file(name: str):
  return lambda root: _touch(root / name, 'not a folder')


_VALID_EVAL = ('--saved_model={dir}/model', '--dataset=synthetic',
               '--file_pattern={dir}/val-*.tfrecord', '--output_dir={dir}/out')
_STEP_ARGS = ('--step_root={dir}/step', '--output_dir={dir}/out', '--splits=val')
_PREDICT = ('--input={dir}/frames', '--saved_model={dir}/model', '--output_dir={dir}/out',
            '--no_progress')


# ----------------------------------------------------------------------------
# The cases.

CASES: List[Case] = [
    # python trainer/train.py
    Case('train_help', TRAIN, '`--help`', ['--help'], 0, r'--config_file', stdout=True),
    Case('train_no_config', TRAIN, 'no `--config_file`', [], 2,
         r'^error: flag --config_file=None: .* \(see --help\)$'),
    Case('train_missing_config', TRAIN, '`--config_file` that does not exist',
         ['--config_file={dir}/nope.textproto'], 2, r'^error: .*nope\.textproto'),
    Case('train_misspelled_field', TRAIN, 'a misspelled config field',
         ['--config_file={dir}/config.textproto'], 2,
         r'^error: .*config\.textproto.*num_mask_slotz',
         lambda d: _config(d, num_mask_slots='num_mask_slotz')),
    Case('train_tiny_crop', TRAIN, 'a crop smaller than the output stride 32',
         ['--config_file={dir}/config.textproto'], 2,
         r'^error: .*config\.textproto.*crop_size',
         lambda d: _config(d, text=re.sub(r'crop_size: \[\d+, \d+\]', 'crop_size: [3, 3]',
                                          TINY_CONFIG.read_text()))),
    Case('train_bad_mode', TRAIN, 'an unknown `--mode`',
         ['--config_file=' + str(TINY_CONFIG), '--mode=fit'], 2,
         r'^error: flag --mode=fit: value should be one of'),
    Case('train_extra_argument', TRAIN, 'a stray positional argument',
         ['--config_file=' + str(TINY_CONFIG), 'extra'], 2, r'^error: unexpected arguments'),
    Case('train_model_dir_is_file', TRAIN, '`--model_dir` that is a file',
         ['--config_file=' + str(TINY_CONFIG), '--model_dir={dir}/runs'], 2,
         r'^error: --model_dir=.*runs is a file, not a folder', _file('runs')),
    Case('train_num_gpus', TRAIN, '`--num_gpus=1` on a machine without a GPU',
         ['--config_file=' + str(TINY_CONFIG), '--num_gpus=1', '--model_dir={dir}/runs'], 1,
         r'^error: --num_gpus=1 but TensorFlow sees 0 GPU'),
    Case('train_negative_gpus', TRAIN, '`--num_gpus=-1`',
         ['--config_file=' + str(TINY_CONFIG), '--num_gpus=-1', '--model_dir={dir}/runs'], 2,
         r'^error: flag --num_gpus=-1: -1 is not a non-negative integer'),
    # evaluate
    Case('eval_help', EVALUATE, '`--help`', ['--help'], 0, r'--saved_model', stdout=True),
    Case('eval_missing_flags', EVALUATE, 'no `--saved_model`', [], 2,
         r'^error: flag --saved_model=None'),
    Case('eval_no_saved_model', EVALUATE, '`--saved_model` that does not exist',
         list(_VALID_EVAL), 1, r'^error: --saved_model=.*model: no such folder',
         lambda d: _touch(d / 'val-00000-of-00001.tfrecord')),
    Case('eval_unknown_dataset', EVALUATE, 'an unknown `--dataset`',
         [*_VALID_EVAL, '--dataset=kitti'], 1, r'^error: .*kitti',
         _saved_model_of('synthetic')),
    Case('eval_no_records', EVALUATE, '`--file_pattern` that matches nothing',
         [*_VALID_EVAL, '--file_pattern={dir}/nothing-*'], 1, r'^error: file_pattern .* matches no file',
         _saved_model_of('synthetic')),
    Case('eval_clip_length', EVALUATE, '`--clip_length=0`', [*_VALID_EVAL, '--clip_length=0'],
         1, r'^error: clip_length must be >= 1; received 0', _saved_model_of('synthetic')),
    Case('eval_workers', EVALUATE, '`--num_workers=0`', [*_VALID_EVAL, '--num_workers=0'],
         1, r'^error: num_workers must be >= 1; received 0', _saved_model_of('synthetic')),
    Case('eval_bad_metric', EVALUATE, 'an unknown metric in `--metrics`',
         [*_VALID_EVAL, '--metrics=stq,pq9'], 1, r'^error: .*pq9', _saved_model_of('synthetic')),
    Case('eval_bad_save_format', EVALUATE, 'an unknown `--save_predictions` format',
         [*_VALID_EVAL, '--save_predictions=coco'], 1, r'^error: unknown --save_predictions "coco"',
         _saved_model_of('synthetic')),
    Case('eval_output_is_file', EVALUATE, '`--output_dir` that is a file', list(_VALID_EVAL), 1,
         r'^error: --output_dir=.*out is a file, not a folder',
         _both(_saved_model_of('synthetic'), _file('out'))),
    Case('eval_dataset_mismatch', EVALUATE, 'a `--dataset` the model was not trained on',
         [*_VALID_EVAL, '--dataset=kitti_step'], 1,
         r'^error: .*model: the model was trained on "synthetic" .* but --dataset=kitti_step',
         _saved_model_of('synthetic')),
    # export_model
    Case('export_help', EXPORT, '`--help`', ['--help'], 0, r'--checkpoint_path', stdout=True),
    Case('export_missing_flags', EXPORT, 'no `--checkpoint_path`',
         ['--config_file=' + str(TINY_CONFIG), '--output_path={dir}/export'], 2,
         r'^error: flag --checkpoint_path=None'),
    Case('export_no_checkpoint', EXPORT, '`--checkpoint_path` that is no checkpoint',
         ['--config_file=' + str(TINY_CONFIG), '--checkpoint_path={dir}/ckpt-7',
          '--output_path={dir}/export'], 1, r'^error: no checkpoint at ".*ckpt-7"'),
    Case('export_empty_run_dir', EXPORT, '`--checkpoint_path`: a folder without checkpoints',
         ['--config_file=' + str(TINY_CONFIG), '--checkpoint_path={dir}',
          '--output_path={dir}/export'], 1, r'^error: no checkpoint found in directory'),
    Case('export_truncated_checkpoint', EXPORT, '`--checkpoint_path`: a truncated checkpoint',
         ['--config_file=' + str(TINY_CONFIG), '--checkpoint_path={dir}/ckpt-7',
          '--output_path={dir}/export'], 1, r'^error: checkpoint ".*ckpt-7" does not read',
         lambda d: (_touch(d / 'ckpt-7.index', 'half an index'),
                    _touch(d / 'ckpt-7.data-00000-of-00001'))),
    Case('export_output_parent_is_file', EXPORT, '`--output_path` inside a file',
         ['--config_file=' + str(TINY_CONFIG), '--checkpoint_path={dir}/ckpt-7',
          '--output_path={dir}/file/export'], 1, r'^error: the folder of --output_path=.* is a file',
         _both(_file('file'), lambda d: (_touch(d / 'ckpt-7.index'),))),
    # Converters (build_step_data; the others share the same CLI and checks).
    Case('convert_help', STEP, '`--help`', ['--help'], 0, r'--step_root', stdout=True),
    Case('convert_missing_root', STEP, 'no `--step_root`', ['--output_dir={dir}/out'], 2,
         r'^error: flag --step_root=None'),
    Case('convert_root_not_folder', STEP, '`--step_root` that does not exist',
         list(_STEP_ARGS), 1, r'^error: --step_root=.*step is not a folder'),
    Case('convert_negative_shards', STEP, '`--num_shards=-1`', [*_STEP_ARGS, '--num_shards=-1'],
         1, r'^error: --num_shards must be >= 0', _step_tree),
    Case('convert_output_is_file', STEP, '`--output_dir` that is a file', list(_STEP_ARGS), 1,
         r'^error: --output_dir=.*out is a file, not a folder', _both(_step_tree, _file('out'))),
    Case('convert_missing_split', STEP, 'a split without its folder',
         [*_STEP_ARGS, '--splits=val,train'], 1,
         r"^error: Image folder .*images/train for split 'train' does not exist", _step_tree),
    Case('convert_missing_label', STEP, 'a frame without its label', list(_STEP_ARGS), 1,
         r'^error: .*000001', lambda d: (_step_tree(d), os.remove(
             d / 'step' / 'panoptic_maps' / 'val' / '0000' / '000001.png'))),
    Case('convert_size_mismatch', STEP, 'a label of another size than its image',
         list(_STEP_ARGS), 1, r'^error: .*000000\.png: label size 4x12 .* does not match',
         lambda d: _step_tree(d, label_size=(4, 12))),
    Case('convert_corrupt_png', STEP, 'a truncated image PNG', list(_STEP_ARGS), 1,
         r'^error: .*images/val/0000/000001\.png: corrupt or unreadable image',
         lambda d: (_step_tree(d), _touch(d / 'step/images/val/0000/000001.png', 'PNG'))),
    Case('convert_unknown_class', STEP, 'a class id outside the data set', list(_STEP_ARGS),
         1, r'^error: .*000000\.png: unknown class ids \[40\]',
         lambda d: _step_tree(d, semantic=40)),
    Case('convert_instance_range', STEP, 'an instance id that does not fit the divisor',
         list(_STEP_ARGS), 1, r'^error: .*000000\.png: instance id 1200 does not fit',
         lambda d: _step_tree(d, semantic=11, instance=1200)),
    Case('convert_frame_gap', STEP, 'a gap in a sequence\'s frame numbers (a warning)',
         list(_STEP_ARGS), 0,
         r'^warning: val sequence 0000: frame numbers jump 1 -> 4 \(missing frames\?\)',
         lambda d: _step_tree(d, frames=(0, 1, 4))),
    # vkmax-predict
    Case('predict_help', PREDICT, '`--help`', ['--help'], 0, r'--input', stdout=True),
    Case('predict_no_model', PREDICT, 'none of `--saved_model`, `--tflite`, `--checkpoint_path`',
         ['--input=x.mp4', '--output_dir={dir}/out'], 2,
         r'give exactly one of --saved_model, --tflite or --checkpoint_path'),
    Case('predict_no_config', PREDICT, '`--checkpoint_path` without `--config_file`',
         ['--input=x.mp4', '--checkpoint_path={dir}', '--output_dir={dir}/out'], 2,
         r'--checkpoint_path needs --config_file'),
    Case('predict_clip_length', PREDICT, '`--clip_length=0`', [*_PREDICT, '--clip_length=0'], 2,
         r'--clip_length must be >= 1, got 0'),
    Case('predict_fps', PREDICT, '`--fps=0`', [*_PREDICT, '--fps=0'], 2, r'--fps must be > 0'),
    Case('predict_no_input', PREDICT, '`--input` that does not exist', list(_PREDICT), 1,
         r'^error: .*frames: no such video file, frame folder or glob'),
    Case('predict_not_an_image', PREDICT, 'a frame folder with a non-image file', list(_PREDICT),
         1, r'^error: .*frame2\.png: not an image',
         lambda d: (_frames(d, [(8, 8)] * 2), _touch(d / 'frames' / 'frame2.png', 'text'))),
    Case('predict_frame_sizes', PREDICT, 'frames of different sizes', list(_PREDICT), 1,
         r'^error: .*frame10\.png: frame size 9x8 \(HxW\) differs from the first frame',
         lambda d: _frames(d, [(8, 8)] * 10 + [(9, 8)])),
    Case('predict_output_is_file', PREDICT, '`--output_dir` that is a file', list(_PREDICT), 1,
         r'^error: --output_dir=.*out is a file, not a folder',
         _both(lambda d: _frames(d, [(8, 8)]), _file('out'))),
    Case('predict_output_not_empty', PREDICT, 'a non-empty `--output_dir` without `--overwrite`',
         list(_PREDICT), 1, r'^error: .*out: --output_dir is not empty; pass --overwrite',
         _both(lambda d: _frames(d, [(8, 8)]), lambda d: _touch(d / 'out' / 'old.png'))),
    Case('predict_bad_saved_model', PREDICT, '`--saved_model` that is no SavedModel',
         list(_PREDICT), 1, r'^error: .*model',
         _both(lambda d: _frames(d, [(8, 8)]), lambda d: (d / 'model').mkdir())),
    Case('predict_missing_tflite', PREDICT, '`--tflite` file that does not exist',
         ['--input={dir}/frames', '--tflite={dir}/clip.tflite', '--output_dir={dir}/out'], 1,
         r'^error: .*clip\.tflite: no such TFLite file', lambda d: _frames(d, [(8, 8)])),
    Case('predict_tflite_no_description', PREDICT,
         '`--tflite` without the `.tflite.json` export_model writes beside it',
         ['--input={dir}/frames', '--tflite={dir}/clip.tflite', '--output_dir={dir}/out'], 1,
         r'^error: .*clip\.tflite: no clip\.tflite\.json beside the TFLite model',
         _both(lambda d: _frames(d, [(8, 8)]), lambda d: _touch(d / 'clip.tflite', 'x'))),
]

# Cases whose program loads TensorFlow before it can answer (about 5 s each, the
# rest answer in under a second): the slow tier runs them, the fast tier the rest
# (and checks that those stay quick).
LOADS_TENSORFLOW = frozenset({
    'train_num_gpus', 'export_no_checkpoint', 'export_empty_run_dir',
    'export_truncated_checkpoint', 'export_output_parent_is_file',
    'predict_bad_saved_model', 'predict_missing_tflite', 'predict_tflite_no_description',
    'convert_missing_split', 'convert_missing_label', 'convert_size_mismatch',
    'convert_instance_range', 'convert_unknown_class', 'convert_corrupt_png',
    'convert_frame_gap'})


def _command(case: Case, folder: pathlib.Path) -> List[str]:
  return [sys.executable, *case.entry, *(a.replace('{dir}', str(folder)) for a in case.args)]


def run_case(case: Case, root: pathlib.Path) -> Result:
  import time  # pylint: disable=g-import-not-at-top
  folder = root / case.name
  folder.mkdir(parents=True, exist_ok=True)
  if case.setup is not None:
    case.setup(folder)
  env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES='')
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # The programs must quiet TensorFlow themselves.
  start = time.perf_counter()
  done = subprocess.run(_command(case, folder), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  return Result(case, done.returncode, done.stdout, done.stderr,
                time.perf_counter() - start)


def run_cases(cases: Sequence[Case], root: pathlib.Path,
              parallel: int = 2) -> Dict[str, Result]:
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    results = pool.map(lambda c: run_case(c, root), cases)
    return {r.case.name: r for r in results}


def errors_doc(results: Dict[str, Result], root: pathlib.Path) -> str:
  """docs/errors.md: per program, each bad input and the line the user reads."""
  lines = [
      '# Bad input and what you see',
      '',
      'Every entry point answers a mistake with one line that names the file or flag,',
      'and a non-zero exit code; no traceback (set `VKMAX_TRACEBACK=1` to get one).',
      'Generated from `tests/robustness/cases.py`, which runs each case and checks',
      'the message and exit code (`python tests/robustness/cases.py` rewrites this',
      'file; the test fails when it is out of date). Paths are shown relative to',
      'the case folder.',
      '',
      'Checked elsewhere, in process: a truncated newest checkpoint is skipped with',
      '`warning: skipped checkpoint <run>/ckpt-N: it does not read (...)` and the run',
      'resumes from the one before (tests/trainer/test_checkpoints.py); a truncated',
      'video warns `warning: <video>: decoded M of the N frames the video announces`',
      '(tests/tools/test_predict_inputs.py).',
  ]
  for entry, title in _NAMES.items():
    rows = [r for r in results.values() if tuple(r.case.entry) == entry]
    if not rows:
      continue
    lines += ['', f'## {title}', '', '| Bad input | Exit | Message |', '|---|---|---|']
    for result in rows:
      if result.case.stdout:
        lines.append(f'| {result.case.what} | {result.code} | (the usage, on stdout) |')
        continue
      message = result.message.replace(str(root / result.case.name) + '/', '')
      message = message.replace(str(root / result.case.name), '.').replace('|', '\\|')
      lines.append(f'| {result.case.what} | {result.code} | `{message}` |')
  return '\n'.join(lines) + '\n'


DOC = REPO / 'docs' / 'errors.md'

if __name__ == '__main__':
  with tempfile.TemporaryDirectory() as tmp:
    DOC.write_text(errors_doc(run_cases(CASES, pathlib.Path(tmp)), pathlib.Path(tmp)))
  print(f'wrote {DOC}')
