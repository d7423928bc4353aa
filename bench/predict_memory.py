r"""Peak memory and speed of vkmax-predict on a long synthetic video.

  python bench/predict_memory.py [--num_frames=2000] [--height=64 --width=128]
      [--work_dir=/tmp/vkmax_predict_bench] [--mode=near_online] [--queue_depths=2,0]

1. Exports the tiny clip-kMaX (untrained, thresholds at 0 so every frame has
   segments and things to track) as a SavedModel.
2. Writes a synthetic MP4 of `num_frames` frames (one synthetic val sequence).
3. Runs `python -m deeplab2_vkmax.tools.predict` on it and samples the child's
   peak RSS (VmHWM) and current RSS (VmRSS) from /proc/<pid>/status every 50 ms,
   noting them when the 200th overlay PNG appears and the last values before the
   process exits. (The peak is set early, by the SavedModel load; the current RSS
   is the sharper test of growth.)
4. Prints a Markdown table of both at frame 200 and at the end, growth in %, and
   the frames/s the CLI reports (decode + model + association + all writers, and
   each stage's own rate), once per `--queue_depths` entry (2: the model stage
   runs in a thread up to 2 clips ahead; 0: the stages one after the other).

Linux only (/proc).
"""

import argparse
import os
import re
import subprocess
import sys
import time

import cv2

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _export(path: str) -> None:
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import config as config_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import export_model  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax import builder  # pylint: disable=g-import-not-at-top
  from deeplab2_vkmax.model import clip_kmax  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(3)  # Several stuff and thing segments per frame.
  config = config_lib.load_experiment_config(
      os.path.join(_REPO, 'configs', 'synthetic', 'clip_kmax_tiny.textproto'))
  config = config_lib.keep_every_segment(config)
  model = clip_kmax.ClipKMaX(**clip_kmax.tiny_model_kwargs(num_classes=6))
  model(tf.zeros([1, 2, 65, 129, 3]), training=False)
  descriptor = dataset_lib.get_dataset_descriptor('synthetic')
  export_model.export_saved_model(model, builder.build_post_processor(config, descriptor),
                                  config, path)


def _write_video(path: str, num_frames: int, height: int, width: int) -> None:
  from deeplab2_vkmax.data import synthetic  # pylint: disable=g-import-not-at-top
  params = synthetic.SyntheticParams(num_val_sequences=1, val_frames=num_frames,
                                     height=height, width=width)
  frames = synthetic.generate_sequence(params, 'val', 0).images
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (width, height))
  for frame in frames:
    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  writer.release()


def _rss_mib(pid: int):
  """(peak RSS VmHWM, current RSS VmRSS) of `pid` in MiB, or None once it exited."""
  values = {}
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith(('VmHWM:', 'VmRSS:')):
          values[line[:5]] = int(line.split()[1]) / 1024.0
  except OSError:
    return None
  if len(values) != 2:
    return None
  return values['VmHWM'], values['VmRSS']


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_frames', type=int, default=2000)
  parser.add_argument('--early_frame', type=int, default=200)
  parser.add_argument('--height', type=int, default=64)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--mode', default='near_online', choices=('near_online', 'online'))
  parser.add_argument('--work_dir', default='/tmp/vkmax_predict_bench')
  parser.add_argument('--queue_depths', default='2,0')
  args = parser.parse_args()
  for depth in (int(d) for d in args.queue_depths.split(',')):
    _run(args, depth)


def _run(args, queue_depth: int) -> None:

  os.makedirs(args.work_dir, exist_ok=True)
  saved_model = os.path.join(args.work_dir, 'saved_model')
  video = os.path.join(args.work_dir, f'synthetic_{args.num_frames}.mp4')
  output_dir = os.path.join(args.work_dir, 'out')
  if not os.path.isdir(saved_model):
    _export(saved_model)
  if not os.path.isfile(video):
    _write_video(video, args.num_frames, args.height, args.width)
  overlays = os.path.join(output_dir, 'overlays')
  if os.path.isdir(overlays):
    for name in os.listdir(overlays):
      os.remove(os.path.join(overlays, name))

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  start = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, '-m', 'deeplab2_vkmax.tools.predict', f'--input={video}',
       f'--saved_model={saved_model}', f'--output_dir={output_dir}', f'--mode={args.mode}',
       '--no_progress', '--overwrite', f'--queue_depth={queue_depth}'],
      stderr=subprocess.PIPE, text=True, env=env, cwd=_REPO)
  early = last = None  # (peak RSS, current RSS)
  while process.poll() is None:
    sample = _rss_mib(process.pid)
    if sample is not None:
      last = sample
    if early is None and last is not None and os.path.isdir(overlays) and (
        len(os.listdir(overlays)) >= args.early_frame):
      early = last
    time.sleep(0.05)
  stderr = process.stderr.read()
  wall = time.perf_counter() - start
  if process.returncode != 0:
    raise SystemExit(f'vkmax-predict failed:\n{stderr[-3000:]}')
  written = len(os.listdir(overlays))
  match = re.search(r'\(([\d.]+) frames/s; (.*)\)', stderr)
  fps = float(match.group(1)) if match else float('nan')
  stages = match.group(2) if match else '?' 
  def growth(index):
    return 100.0 * (last[index] - early[index]) / early[index]
  print(f'\n--queue_depth={queue_depth}\n')
  print(f'| frames ({args.height}x{args.width}, {args.mode}) | RSS measure | at frame '
        f'{args.early_frame} | at frame {written} | growth |')
  print('| --- | --- | --- | --- | --- |')
  for index, name in enumerate(('peak (VmHWM)', 'current (VmRSS)')):
    print(f'| {written} | {name} | {early[index]:.0f} MiB | {last[index]:.0f} MiB | '
          f'{growth(index):+.1f} % |')
  print(f'\nframes/s reported by the CLI (decode + model + association + all writers): '
        f'{fps:.1f} ({stages}); wall time of the CLI process: {wall:.0f} s')
  if written != args.num_frames:
    raise SystemExit(f'expected {args.num_frames} frames, wrote {written}')


if __name__ == '__main__':
  main()
