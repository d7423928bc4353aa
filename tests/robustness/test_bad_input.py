"""Every entry point answers bad input with one line and a non-zero exit code.

The cases and their expected messages are in cases.py; they run two programs at
a time. Cases that answer before TensorFlow loads run in the fast tier; the
ones whose program loads TensorFlow first (`cases.LOADS_TENSORFLOW`, about 5 s
each) and the docs/errors.md check, which needs every case, in the slow tier.
"""

import re

import pytest

import cases

QUICK = [c for c in cases.CASES if c.name not in cases.LOADS_TENSORFLOW]
LOADING = [c for c in cases.CASES if c.name in cases.LOADS_TENSORFLOW]


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return tmp_path_factory.mktemp('robustness')


@pytest.fixture(scope='module')
def quick_results(root):
  return cases.run_cases(QUICK, root)


@pytest.fixture(scope='module')
def loading_results(root):
  return cases.run_cases(LOADING, root)


def _check(result, case):
  report = f'exit {result.code}\nstdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}'
  assert result.code == case.code, report
  # Help: the flags on stdout; an error: its last stderr line.
  assert re.search(case.expect, result.stdout if case.stdout else result.message), report
  assert not result.traceback(), report
  # TensorFlow's start-up lines (INFO, and the cuInit ERROR of GPU-less
  # machines) never bury the message.
  assert 'cuInit' not in result.stderr and 'oneDNN' not in result.stderr, report


@pytest.mark.parametrize('case', QUICK, ids=lambda c: c.name)
def test_bad_input_gets_one_clear_line(quick_results, case):
  _check(quick_results[case.name], case)


@pytest.mark.slow
@pytest.mark.parametrize('case', LOADING, ids=lambda c: c.name)
def test_bad_input_found_after_tensorflow_loads_gets_one_clear_line(loading_results, case):
  _check(loading_results[case.name], case)


def test_quick_cases_answer_before_tensorflow_loads(quick_results):
  # TensorFlow alone takes about 5 s to import here: an answer in under 3 s
  # (generous for a loaded machine) did not import it. Help must always be
  # quick; a case that starts loading TensorFlow belongs in LOADS_TENSORFLOW.
  slow = {name: round(r.seconds, 1) for name, r in quick_results.items() if r.seconds > 3.0}
  assert not slow, slow


@pytest.mark.slow
def test_errors_doc_shows_todays_messages(root, quick_results, loading_results):
  by_name = {**quick_results, **loading_results}
  ordered = {case.name: by_name[case.name] for case in cases.CASES}
  expected = cases.errors_doc(ordered, root)
  assert cases.DOC.read_text() == expected, (
      'docs/errors.md is out of date: run python tests/robustness/cases.py')
