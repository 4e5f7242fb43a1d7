"""Generated parts of README.md, so the docs cannot drift from the code.

`python -m tests.docs` rewrites the blocks between `<!-- NAME:start -->` and `<!-- NAME:end -->`;
tests/test_docs.py fails when README.md differs from what this would write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from coredump_shipper.config.settings import SETTINGS
from coredump_shipper.ops.metrics import Metrics

README = Path(__file__).resolve().parent.parent / "README.md"


def settings_table() -> str:
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        env = f"`{setting.env}`" + "".join(f", `{alias}`" for alias in setting.aliases)
        if setting.default is None:
            default = "required"
        elif setting.default == "":
            default = "(see meaning)"
        else:
            default = f"`{setting.default}`"
        rows.append(f"| `{setting.flag}` | {env} | {default} | {setting.help} |")
    return "\n".join(rows)


def metrics_table() -> str:
    """Every coredump_shipper_* metric with its type, labels and help, from a live registry."""
    metrics = Metrics(process=False)
    rows = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for family in metrics.registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        labels = sorted({name for sample in family.samples for name in sample.labels} - {"le"})
        if family.type == "info":
            labels = []
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        rows.append(f"| `{family.name}{suffix}` | {family.type} | {shown} | {family.documentation} |")
    return "\n".join(rows)


# Every S3 call the daemon makes, and the IAM action that allows it (tests/test_security_docs.py
# checks this against the code, so the README's policy is exactly what the code needs).
DAEMON_CALLS = {
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "delete_object": "s3:DeleteObject",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "head_bucket": "s3:ListBucket",
}
BUCKET_LEVEL = {"s3:ListBucket", "s3:ListBucketMultipartUploads"}
# Calls the daemon makes only on some stores, whose action stays out of the policy on purpose:
# s3:GetObject would let every node read every core. HeadObject re-reads the ETag of a multipart
# object when the store's CompleteMultipartUpload answer has none (Ceph RGW 16); without the
# permission that object's manifest says `verified: no`.
OPTIONAL_DAEMON_CALLS = {"head_object": "s3:GetObject"}


def iam_policy() -> str:
    actions = sorted(set(DAEMON_CALLS.values()))
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ShipCores",
                "Effect": "Allow",
                "Action": [a for a in actions if a not in BUCKET_LEVEL],
                "Resource": "arn:aws:s3:::my-cores/*",
            },
            {
                "Sid": "FindOwnUploads",
                "Effect": "Allow",
                "Action": [a for a in actions if a in BUCKET_LEVEL],
                "Resource": "arn:aws:s3:::my-cores",
            },
        ],
    }
    return "```json\n" + json.dumps(policy, indent=2) + "\n```"


PACKAGE = README.parent / "coredump_shipper"
# Kubernetes API calls are written `client.call("verb", RESOURCE, ...)` and `client.watch(RESOURCE, ...)`.
_KUBE_CALL = re.compile(r"\.call\(\s*\"([a-z]+)\",\s*([A-Z_]+)\b|\.watch\(\s*([A-Z_]+)\b")


# The chart's uninstall hook runs this module under a Role of its own, not the shipper's ClusterRole.
HOOK_MODULE = "kube/restorewait.py"


def kube_calls(*, hook: bool = False) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every Kubernetes API call in the shipper's code (with `hook`:
    in the uninstall hook's module instead)."""
    from coredump_shipper.kube import api

    found = set()
    for module in sorted(PACKAGE.rglob("*.py")):
        if (module.relative_to(PACKAGE).as_posix() == HOOK_MODULE) != hook:
            continue
        for match in _KUBE_CALL.finditer(module.read_text()):
            verb = match.group(1) or "watch"
            resource: api.Resource = getattr(api, match.group(2) or match.group(3))
            found.add((resource.group, resource.plural, verb))
    return found


def kube_rules() -> list[dict[str, list[str]]]:
    """The ClusterRole rules that allow exactly kube_calls(): groups sharing resource and verbs merged."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for group, plural, verb in kube_calls():
        verbs.setdefault((group, plural), set()).add(verb)
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, plural), allowed in sorted(verbs.items()):
        merged.setdefault((plural, tuple(sorted(allowed))), []).append(group)
    return [
        {"apiGroups": groups, "resources": [plural], "verbs": list(allowed)}
        for (plural, allowed), groups in sorted(merged.items(), key=lambda item: item[0][0], reverse=True)
    ]


def rbac_rules() -> str:
    lines = ["```yaml", "rules:"]
    for rule in kube_rules():
        groups = ", ".join(json.dumps(group) for group in rule["apiGroups"])
        lines.append(f"  - apiGroups: [{groups}]")
        lines.append(f"    resources: [{', '.join(rule['resources'])}]")
        lines.append(f"    verbs: [{', '.join(rule['verbs'])}]")
    return "\n".join([*lines, "```"])


BLOCKS: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "metrics": metrics_table,
    "iam": iam_policy,
    "rbac": rbac_rules,
}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
        text = pattern.sub(rf"\g<1>{_escape(make())}\g<2>", text)
    return text


def _escape(replacement: str) -> str:
    return replacement.replace("\\", "\\\\")


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
