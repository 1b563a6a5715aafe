"""The layer rules of monitor/ ([tool.importlinter] in pyproject.toml) hold: no back-arrow, no cycle."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_contract_is_kept() -> None:
    # lint_imports configures logging with dictConfig, which disables every logger that exists: the tests
    # after this one that read their logs (caplog) would see nothing.
    loggers = [logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)]
    disabled = {logger: logger.disabled for logger in loggers}
    report = io.StringIO()
    try:
        with contextlib.redirect_stdout(report):
            code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    finally:
        for logger, was in disabled.items():
            logger.disabled = was
    assert code == 0, report.getvalue()
    assert "0 broken" in report.getvalue()
