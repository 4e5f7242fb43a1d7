"""Which pods' cores are never shipped: excluded namespaces, a pod label selector, a pod's own opt-out.

A core's memory holds whatever the process held: tokens, keys, customer data. An operator can keep
whole namespaces out (`--exclude-namespaces`, globs), ship only pods that match a label selector
(`--pod-selector`), and a team can opt one pod out with the annotation
`coredump-shipper.io/capture: "false"`. The decision needs the pod, so it is made on the pod pinned
when the core was found (pinning.py); a core whose pod is not known is shipped.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from coredump_shipper.kube.pods import Pod

# The bounded values of coredump_shipper_excluded_total{reason}.
REASONS = ("namespace", "pod_selector", "pod_annotation")
_KEY = r"(?:[a-z0-9.-]{1,253}/)?[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?"
_TERM = re.compile(rf"\s*(?P<neg>!)?\s*(?P<key>{_KEY})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_VALUE}))?\s*")


@dataclass(frozen=True)
class Requirement:
    """One term of an equality-based label selector: `k=v`, `k!=v`, `k` (has it) or `!k` (has not)."""

    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Kubernetes' equality-based selector syntax; ValueError on anything else (e.g. `in (...)`)."""
    requirements = []
    for term in (t for t in text.split(",") if t.strip()):
        match = _TERM.fullmatch(term)
        if match is None or (match["neg"] and match["op"]):
            raise ValueError(f"{term.strip()!r} is not k=v, k!=v, k or !k")
        if match["op"] is None:
            requirements.append(Requirement(match["key"], "!exists" if match["neg"] else "exists"))
        else:
            op = "!=" if match["op"] == "!=" else "="
            requirements.append(Requirement(match["key"], op, match["value"] or ""))
    return tuple(requirements)


@dataclass(frozen=True)
class CaptureFilter:
    exclude_namespaces: tuple[str, ...] = ()
    selector: tuple[Requirement, ...] = ()

    @property
    def label_keys(self) -> tuple[str, ...]:
        """Labels the pod cache must keep for the selector."""
        return tuple(dict.fromkeys(r.key for r in self.selector))

    @property
    def configured(self) -> bool:
        return bool(self.exclude_namespaces or self.selector)

    def excluded(self, pod: Pod) -> str | None:
        """Why this pod's cores are not shipped (one of REASONS), or None to ship them."""
        if any(fnmatch.fnmatchcase(pod.namespace, glob) for glob in self.exclude_namespaces):
            return "namespace"
        labels = dict(pod.labels)
        if not all(r.matches(labels) for r in self.selector):
            return "pod_selector"
        if pod.capture_opt_out:
            return "pod_annotation"
        return None
