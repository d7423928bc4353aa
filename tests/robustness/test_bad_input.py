"""Every entry point answers bad input with one line and a non-zero exit code.

The cases and their expected messages are in cases.py; they run once per
session, two programs at a time (most exit before TensorFlow loads).
"""

import re

import pytest

import cases


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  root = tmp_path_factory.mktemp('robustness')
  return root, cases.run_cases(cases.CASES, root)


@pytest.mark.parametrize('case', cases.CASES, ids=lambda c: c.name)
def test_bad_input_gets_one_clear_line(results, case):
  _, by_name = results
  result = by_name[case.name]
  report = f'exit {result.code}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}'
  assert result.code == case.code, report
  # Help: the flags on stdout; an error: its last stderr line.
  assert re.search(case.expect, result.stdout if case.stdout else result.message), report
  assert not result.traceback(), report
  # TensorFlow's start-up lines (INFO, and the cuInit ERROR of GPU-less
  # machines) never bury the message.
  assert 'cuInit' not in result.stderr and 'oneDNN' not in result.stderr, report


def test_help_answers_before_tensorflow_loads(results):
  _, by_name = results
  slow = {name: round(r.seconds, 1) for name, r in by_name.items()
          if name.endswith('_help') and r.seconds > 3.0}
  # TensorFlow alone takes about 5 s to import here: a help in under 3 s
  # (generous for a loaded machine) did not import it.
  assert not slow, slow


def test_errors_doc_shows_todays_messages(results):
  root, by_name = results
  expected = cases.errors_doc(by_name, root)
  assert cases.DOC.read_text() == expected, (
      'docs/errors.md is out of date: run python tests/robustness/cases.py')
