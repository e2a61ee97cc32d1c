"""Integration tests run against the real frameworks, in the environment ``.ci/run`` builds for them
(``pip install -e ".[test,ultralytics,torchvision]"``); in the core environment they skip, saying why.

With ``DETLOSS_REQUIRE_INTEGRATIONS=1`` (set by ``.ci/run``) a missing framework or a skipped test is an
error: a skipped integration test is not a tested one.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

REQUIRED = os.environ.get("DETLOSS_REQUIRE_INTEGRATIONS") == "1"


def pytest_configure(config):
    missing = [m for m in ("ultralytics", "torchvision") if importlib.util.find_spec(m) is None]
    if REQUIRED and missing:
        raise pytest.UsageError(f"DETLOSS_REQUIRE_INTEGRATIONS=1 but {missing} cannot be imported here")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRED and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped where integrations are required: {report.longrepr}"
