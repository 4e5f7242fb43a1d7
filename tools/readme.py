"""Generated parts of the user docs (README.md and docs/*.md), so the docs cannot drift from the code.

    python -m tools.readme          # rewrite every generated block where it lives
    python -m tools.readme --check  # exit 1 if a page is out of date

A block is the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` for a NAME of BLOCKS; it
may live on any page of `pages()`, and moving it to another page needs no change here.
tests/docs/test_docs.py fails when a page differs from what this would write, or when a block is
missing or appears twice.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from coredump_shipper.config.settings import SETTINGS
from coredump_shipper.ops.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


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


# Every S3 call the daemon makes, and the IAM action that allows it (tests/docs/test_security_docs.py
# checks this against the code, so the documented policy is exactly what the code needs).
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


PACKAGE = ROOT / "coredump_shipper"
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


def pages() -> list[Path]:
    """Every page a generated block may live on: the README and the guides under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:start -->\n)(.*?)(\n<!-- {name}:end -->)", re.S)


def render(text: str) -> str:
    """The text with every generated block in it rewritten from the code."""
    for name, make in BLOCKS.items():
        text = _pattern(name).sub(rf"\g<1>{_escape(make())}\g<3>", text)
    return text


def _escape(replacement: str) -> str:
    return replacement.replace("\\", "\\\\")


def homes() -> dict[str, list[Path]]:
    """Each block's name and the pages that hold it (one, when the docs are right)."""
    found: dict[str, list[Path]] = {name: [] for name in BLOCKS}
    for page in pages():
        text = page.read_text()
        for name in BLOCKS:
            found[name] += [page] * len(_pattern(name).findall(text))
    return found


def block(name: str) -> str:
    """The current text of block `name`, read from the page it lives on."""
    found = homes()[name]
    if len(found) != 1:
        raise LookupError(f"block {name} is on {len(found)} pages, not one: {found}")
    match = _pattern(name).search(found[0].read_text())
    return match.group(2) if match else ""


def stale() -> list[Path]:
    """The pages whose generated blocks differ from what the code says."""
    return [page for page in pages() if render(text := page.read_text()) != text]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        out_of_date = stale()
        for page in out_of_date:
            print(f"{page.relative_to(ROOT)} is out of date: python -m tools.readme", file=sys.stderr)
        return 1 if out_of_date else 0
    for page in pages():
        text = page.read_text()
        if (new := render(text)) != text:
            page.write_text(new)
            print(f"rewrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
