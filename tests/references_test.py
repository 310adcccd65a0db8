"""A missing reference skips on a developer's machine and fails under CI."""

import pytest

from tests import references


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception),
                                        ("", pytest.skip.Exception),
                                        ("false", pytest.skip.Exception)])
def test_missing_reference(monkeypatch, ci, outcome):
  monkeypatch.setenv("CI", ci)
  with pytest.raises(outcome, match="no_such_reference_module is not available"):
    references.require("no_such_reference_module")
  assert references.require("numpy").__name__ == "numpy"
