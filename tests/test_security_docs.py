"""The README's IAM policy is exactly what the daemon calls: no more, no less."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs import DAEMON_CALLS, OPTIONAL_DAEMON_CALLS

PACKAGE = Path(__file__).resolve().parent.parent / "coredump_shipper"
# The daemon's side; listing.py, fetch.py and s3reads.py are the debugging side (a reader's policy).
DAEMON_MODULES = ("uploader.py", "s3checks.py", "service.py", "shipper.py", "cli.py", "doctor.py")
CALL = re.compile(r"client\.([a-z_]+)\(|get_paginator\(\"([a-z_]+)\"\)")


def daemon_calls() -> set[str]:
    found = set()
    for module in DAEMON_MODULES:
        for match in CALL.finditer((PACKAGE / module).read_text()):
            found.add(match.group(1) or match.group(2))
    return found - {"get_paginator"}


def test_policy_covers_exactly_the_calls_the_daemon_makes() -> None:
    assert daemon_calls() == set(DAEMON_CALLS) | set(OPTIONAL_DAEMON_CALLS)


def test_policy_in_readme_is_the_generated_one() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    assert '"s3:PutObject"' in readme and '"s3:ListBucketMultipartUploads"' in readme
    assert "s3:GetObject" not in readme.split("<!-- iam:start -->")[1].split("<!-- iam:end -->")[0]
