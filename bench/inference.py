r"""Inference speed: an older commit's forward against today's serving paths.

  python bench/inference.py --ref=1d64af9~1 [--models=r50,demo] [--rounds=4]
      [--frames=1] [--skip_tflite] [--work_dir=/tmp/vkmax_inference_bench]

For each model (`r50`: configs/kitti_step/clip_kmax_r50.textproto at its 385x1249
eval crop; `demo`: the tiny synthetic config at 65x129, post-processing thresholds
at 0 so the untrained model keeps segments) two worker processes are started:

- `ref`: the package of git `--ref`, checked out in a worktree under
  `--work_dir` (protos compiled there), builds the model and times what a caller
  ran at that commit: the forward (`model(images, training=False)`, a
  tf.function returning the model's outputs) then the post-processor
  ("forward;post", the baseline), and both in one tf.function ("forward+post",
  where graph pruning drops the outputs the post-processor does not read).
- `now`: this checkout times the bare forward, forward;post and forward+post as
  above, the exported SavedModel's
  `serving_default` (uint8 in: pre-processing + model + post-processing), and the
  float32 TFLite export on the LiteRT interpreter (XNNPACK, 2 threads).

Both workers hold the same weights (the `now` worker writes a checkpoint, the `ref`
worker restores it) and the same uint8 input. Every variant is called once to
trace, then the parent alternates single calls across all variants of both
workers for `--rounds` rounds, so machine load hits them alike. Prints the median
seconds per call and each variant's ratio to the ref's forward;post (median of
per-round ratios).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MODELS = {
    'r50': ('configs/kitti_step/clip_kmax_r50.textproto', (385, 1249)),
    'demo': ('configs/synthetic/clip_kmax_tiny.textproto', (65, 129)),
}
REF_VARIANTS = ('forward;post', 'forward+post')
NOW_VARIANTS = ('forward', 'forward;post', 'forward+post', 'saved_model', 'tflite')


# ----------------------------------------------------------------------------
# Workers (one process each; they speak line by line on stdin / stdout).


def _build(model_name: str, frames: int):
  """(model, post_processor, config, uint8 clip) of the named model."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top
  config_path, (height, width) = _MODELS[model_name]
  config = config_lib.load_experiment_config(os.path.join(_REPO, config_path))
  if model_name == 'demo':
    # config.keep_every_segment, written out: the ref worker imports the package
    # of an older commit, which may not have that helper.
    evaluator = config.evaluator_options
    evaluator.transformer_post_processing = 'pixelwise'
    evaluator.pixel_confidence_threshold = 0.0
    masks = evaluator.maskwise_postprocessing
    masks.transformer_class_confidence_threshold_thing = 0.0
    masks.transformer_class_confidence_threshold_stuff = 0.0
    masks.overlapping_threshold = 0.0
    evaluator.thing_area_limit = evaluator.stuff_area_limit = 0
  config.eval_dataset_options.clip_length = frames
  keras.utils.set_random_seed(3)
  descriptor = dataset_lib.get_dataset_descriptor(config.train_dataset_options.dataset)
  model = builder.build_model(config, descriptor)
  model(tf.zeros([1, frames, height, width, 3]), training=False)
  post_processor = builder.build_post_processor(config, dataset_lib.get_dataset_descriptor(
      config.eval_dataset_options.dataset))
  clip = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), np.uint8)
  return model, post_processor, config, clip


def _forward_and_post(model, post_processor, clip):
  """{'forward+post': one tf.function, 'forward;post': two calls}.

  In one tf.function, graph pruning drops every model output the post-processor
  does not read; two calls (the model's outputs returned, then post-processed)
  compute and return everything the forward returns.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = tf.constant(clip[None].astype('float32'))
  size = tf.constant(clip.shape[1:3])

  @tf.function
  def fused(images):
    return post_processor(model(images, training=False), size)
  forward = tf.function(lambda images: model(images, training=False))
  post = tf.function(lambda outputs: post_processor(outputs, size))
  return {'forward+post': lambda: fused(images), 'forward;post': lambda: post(forward(images))}


def _worker(args) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model, post_processor, config, clip = _build(args.model, args.frames)
  checkpoint = tf.train.Checkpoint(**model.checkpoint_items)
  calls = {}
  if args.worker == 'ref':
    checkpoint.read(args.checkpoint).expect_partial()
    calls.update(_forward_and_post(model, post_processor, clip))
  else:
    from deeplab2_vkmax import export_model  # pylint: disable=g-import-not-at-top
    checkpoint.write(args.checkpoint)
    images = tf.constant(clip[None].astype('float32'))
    forward = tf.function(lambda images: model(images, training=False))
    calls['forward'] = lambda: forward(images)
    calls.update(_forward_and_post(model, post_processor, clip))
    saved_model = os.path.join(args.work_dir, f'saved_model_{args.model}')
    export_model.export_saved_model(model, post_processor, config, saved_model)
    serving = tf.saved_model.load(saved_model).signatures['serving_default']
    uint8_clip = tf.constant(clip)
    calls['saved_model'] = lambda: serving(input_tensor=uint8_clip)
    if not args.skip_tflite:
      from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
      path = export_model.export_tflite(
          export_model.ClipKMaXExportModule(model, post_processor), clip.shape[:3],
          os.path.join(args.work_dir, f'{args.model}.tflite'))
      interpreter = litert.Interpreter(model_path=path, num_threads=2)
      interpreter.allocate_tensors()
      index = interpreter.get_input_details()[0]['index']

      def run_tflite():
        interpreter.set_tensor(index, clip)
        interpreter.invoke()
      calls['tflite'] = run_tflite
  for call in calls.values():  # Trace / warm up.
    call()
  print(json.dumps({'ready': sorted(calls)}), flush=True)
  for line in sys.stdin:
    name = line.strip()
    start = time.perf_counter()
    result = calls[name]()
    if isinstance(result, dict):  # Wait for the values, not just the dispatch.
      for value in result.values():
        value.numpy()
    print(json.dumps({'seconds': time.perf_counter() - start}), flush=True)


# ----------------------------------------------------------------------------
# Parent.


class _Worker:

  def __init__(self, kind: str, args, checkpoint: str, pythonpath: str):
    command = [sys.executable, os.path.abspath(__file__), f'--worker={kind}',
               f'--model={args.model}', f'--frames={args.frames}',
               f'--checkpoint={checkpoint}', f'--work_dir={args.work_dir}']
    if args.skip_tflite:
      command.append('--skip_tflite')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=pythonpath)
    self.kind = kind
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True, env=env, cwd=pythonpath)
    self.variants = self._read()['ready']

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      raise SystemExit(f'the {self.kind} worker died (exit {self.process.wait()})')
    return json.loads(line)

  def time(self, variant: str) -> float:
    self.process.stdin.write(variant + '\n')
    self.process.stdin.flush()
    return self._read()['seconds']

  def close(self):
    self.process.stdin.close()
    self.process.wait()


def _worktree(ref: str, work_dir: str) -> str:
  sha = subprocess.run(['git', 'rev-parse', '--short', ref], check=True, cwd=_REPO,
                       capture_output=True, text=True).stdout.strip()
  path = os.path.join(work_dir, f'ref_{sha}')
  if not os.path.isdir(path):
    subprocess.run(['git', 'worktree', 'add', '--detach', path, sha], check=True, cwd=_REPO,
                   capture_output=True)
    import glob  # pylint: disable=g-import-not-at-top
    import grpc_tools  # pylint: disable=g-import-not-at-top
    from grpc_tools import protoc  # pylint: disable=g-import-not-at-top
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')
    for proto in sorted(glob.glob(os.path.join(path, 'deeplab2_vkmax', 'protos', '*.proto'))):
      protoc.main(['protoc', f'-I{path}', f'-I{well_known}', f'--python_out={path}',
                   os.path.relpath(proto, path)])
  return path


def _bench_model(args, ref_path: str) -> None:
  checkpoint = os.path.join(tempfile.mkdtemp(dir=args.work_dir), 'weights')
  now = _Worker('now', args, checkpoint, _REPO)  # Writes the checkpoint first.
  ref = _Worker('ref', args, checkpoint, ref_path)
  variants = ([(ref, v) for v in REF_VARIANTS] +
              [(now, v) for v in NOW_VARIANTS if v in now.variants])
  times = {(w.kind, v): [] for w, v in variants}
  for _ in range(args.rounds):
    for worker, variant in variants:
      times[(worker.kind, variant)].append(worker.time(variant))
  ref.close()
  now.close()
  baseline = times[('ref', 'forward;post')]
  height, width = _MODELS[args.model][1]
  print(f'\n{args.model} at T={args.frames}, {height}x{width}, {args.rounds} alternating '
        f'rounds (ref = {args.ref}):\n')
  print('| variant | median s / call | ratio to ref forward;post |')
  print('| --- | --- | --- |')
  for (kind, variant), values in times.items():
    ratio = statistics.median(v / b for v, b in zip(values, baseline))
    print(f'| {kind} {variant} | {statistics.median(values):.4f} | {ratio:.3f}x |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ref', default='1d64af9~1',
                      help='git ref whose forward is the baseline (default: the commit '
                      'before inference stopped computing the training-only outputs)')
  parser.add_argument('--models', default='r50,demo')
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--frames', type=int, default=1)
  parser.add_argument('--skip_tflite', action='store_true')
  parser.add_argument('--work_dir', default=os.path.join(tempfile.gettempdir(),
                                                         'vkmax_inference_bench'))
  parser.add_argument('--worker', choices=('ref', 'now'), help=argparse.SUPPRESS)
  parser.add_argument('--model', help=argparse.SUPPRESS)
  parser.add_argument('--checkpoint', help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  if args.worker:
    _worker(args)
    return
  ref_path = _worktree(args.ref, args.work_dir)
  for model in args.models.split(','):
    args.model = model
    _bench_model(args, ref_path)


if __name__ == '__main__':
  main()
