"""`cnnlab check`: a learner's own layers and optimizers against JAX, lax and optax references.

    report = check("my_conv.py:conv2d")          # or check("my.py:conv", against="conv2d")
    report.passed, report.tables, report.hints, report.speed

Files: `catalogue` (contracts and references), `cases` (the battery), `learner` (finding the
learner's code, signatures), `calls` (calling either form), `numeric` (tolerances, finite
differences), `hints` (known mistakes), `runner` (the checks), `timing` (speed), `report`
(tables and JSON), `templates` (files to fill in).
"""

from cnnlab.check.catalogue import CATALOGUE, get_entry
from cnnlab.check.runner import Report, check
from cnnlab.check.templates import template

__all__ = ["CATALOGUE", "Report", "check", "get_entry", "template"]
