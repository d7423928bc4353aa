"""A file or module of this repository as it is at another git commit, for side-by-side benches."""

import importlib.util
import os
import subprocess
import tempfile
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def file_at(ref: str, path: str, name: Optional[str] = None) -> str:
  """Writes `path` (relative to the repository root) as it is at git `ref` to a
  temporary file named `name` (default: the file's own name); returns its path."""
  source = subprocess.run(['git', 'show', f'{ref}:{path}'], check=True, cwd=REPO,
                          capture_output=True, text=True).stdout
  file_path = os.path.join(tempfile.mkdtemp(), name or os.path.basename(path))
  with open(file_path, 'w', encoding='utf-8') as f:
    f.write(source)
  return file_path


def module_at(ref: str, path: str):
  """Imports `path` (relative to the repository root) as it is at git `ref`.

  The source is written to a temporary file and imported from there (not exec'd
  from a string), so AutoGraph can read the source of its tf.functions. The
  module's own imports resolve to today's package.
  """
  name = os.path.splitext(os.path.basename(path))[0] + '_at_ref'
  file_path = file_at(ref, path, name + '.py')
  spec = importlib.util.spec_from_file_location(name, file_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
