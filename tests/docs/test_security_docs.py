"""The documented IAM policy is exactly what the daemon calls: no more, no less."""

from __future__ import annotations

import re
from pathlib import Path

from tools import readme
from tools.readme import DAEMON_CALLS, OPTIONAL_DAEMON_CALLS

PACKAGE = Path(__file__).resolve().parent.parent.parent / "coredump_shipper"
# The daemon's side; browse/ (ls, fetch) and s3/reads.py are the debugging side (a reader's policy).
DAEMON_MODULES = (
    "s3/store.py",
    "diagnostics/s3store.py",
    "daemon/service.py",
    "ship/shipper.py",
    "cli.py",
    "diagnostics/doctor.py",
)
CALL = re.compile(r"client\.([a-z_]+)\(|get_paginator\(\"([a-z_]+)\"\)")


def daemon_calls() -> set[str]:
    found = set()
    for module in DAEMON_MODULES:
        for match in CALL.finditer((PACKAGE / module).read_text()):
            found.add(match.group(1) or match.group(2))
    return found - {"get_paginator"}


def test_policy_covers_exactly_the_calls_the_daemon_makes() -> None:
    assert daemon_calls() == set(DAEMON_CALLS) | set(OPTIONAL_DAEMON_CALLS)


def test_documented_policy_is_the_generated_one() -> None:
    policy = readme.block("iam")
    assert '"s3:PutObject"' in policy and '"s3:ListBucketMultipartUploads"' in policy
    assert "s3:GetObject" not in policy
