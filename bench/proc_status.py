"""Reads this process's memory counters from /proc/self/status (Linux).

`VmHWM` (peak resident set) sees TensorFlow's allocator, which Python's
`tracemalloc` does not. Imported by the bench scripts (run as `python bench/...`,
so this folder is on sys.path).
"""


def status_kib(field: str) -> int:
  """The value of `field` (e.g. 'VmRSS', 'VmHWM') in KiB."""
  with open('/proc/self/status') as status:
    for line in status:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise KeyError(field)
