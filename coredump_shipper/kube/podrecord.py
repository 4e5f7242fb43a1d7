"""The pod a core came from, pinned beside it as ``.<core>.pod.json`` when the core is found.

A pod can be gone by the time its core is uploaded: a Job's pod finishes, a Deployment replaces it,
S3 is down for an hour, the shipper restarts and forgets the deleted pods it knew. So the pod is
looked up once, when the core is found, and what was learnt is written beside the core; every upload
attempt, in this process or the next, reads it back and ships under the same namespace, workload and
key. This module is the file's one home: its name, its format, writing it (atomically: a temporary
file renamed in), reading it (as hostile input: bounded, never following links, a regular file with
one name owned by this uid and writable by no one else, every field checked, bound to the core by
inode and size). Removing it with its core or when it is orphaned: core/companions.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from coredump_shipper.kube.pods import Container, Pod

log = logging.getLogger(__name__)

SUFFIX = ".pod.json"
TEMP_SUFFIX = ".pod.json.tmp"
FORMAT = 1
MAX_BYTES = 16 * 1024
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SECTIONS = frozenset({"containers", "initContainers", "ephemeralContainers"})


def record_name(core_name: str) -> str:
    return f".{core_name}{SUFFIX}"


def temp_name(core_name: str) -> str:
    """The record while it is written, renamed to record_name() once complete."""
    return f".{core_name}{TEMP_SUFFIX}"


def _pod_json(pod: Pod, container: Container | None) -> dict[str, Any]:
    return {
        "uid": pod.uid,
        "namespace": pod.namespace,
        "name": pod.name,
        "hostname": pod.hostname,
        "owner_kind": pod.owner_kind,
        "owner_name": pod.owner_name,
        "labels": dict(pod.labels),
        "capture": not pod.capture_opt_out,
        "container": None
        if container is None
        else {
            "name": container.name,
            "image": container.image,
            "image_id": container.image_id,
            "container_id": container.container_id,
            "section": container.section,
        },
    }


def write(
    directory: Path, core_name: str, inode: int, size: int, pod: Pod, container: Container | None
) -> None:
    """Pin `pod` to the core with this inode and size. Blocking; raises OSError."""
    final = directory / record_name(core_name)
    temp = directory / temp_name(core_name)
    body = json.dumps(
        {"format": FORMAT, "inode": inode, "size": size, "pod": _pod_json(pod, container)}, sort_keys=True
    ).encode()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by a process killed half-way
    fd = os.open(temp, _WRITE_FLAGS, 0o600)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    os.replace(temp, final)


class _Invalid(ValueError):
    pass


def _text(data: dict[str, Any], name: str, limit: int, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise _Invalid(f"{name} is not printable text of 1..{limit} characters")
    return value


def _container(data: Any) -> Container | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _Invalid("container is not an object")
    section = _text(data, "section", 32)
    if section not in _SECTIONS:
        raise _Invalid("container section is unknown")
    return Container(
        name=_text(data, "name", 253) or "",
        image=_text(data, "image", 1024) or "",
        image_id=_text(data, "image_id", 1024, optional=True),
        container_id=_text(data, "container_id", 128, optional=True),
        section=section,
    )


def parse(text: bytes, inode: int, size: int) -> tuple[Pod, Container | None]:
    """Validate a record for the core with this inode and size; raise ValueError if it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _Invalid(f"not a format {FORMAT} pod record")
    if (data.get("inode"), data.get("size")) != (inode, size):
        raise _Invalid("it describes another file (inode or size differ)")
    pod = data.get("pod")
    if not isinstance(pod, dict):
        raise _Invalid("pod is not an object")
    uid = _text(pod, "uid", 36) or ""
    if not _UID.fullmatch(uid):
        raise _Invalid("uid has the wrong form")
    labels = pod.get("labels")
    if not isinstance(labels, dict) or len(labels) > 64:
        raise _Invalid("labels are not an object of at most 64 labels")
    for key, value in labels.items():
        if not isinstance(value, str) or len(key) > 317 or len(value) > 63:
            raise _Invalid("a label is not text of a label's size")
    if type(pod.get("capture")) is not bool:
        raise _Invalid("capture is not true or false")
    container = _container(pod.get("container"))
    found = Pod(
        uid=uid,
        namespace=_text(pod, "namespace", 63) or "",
        name=_text(pod, "name", 253) or "",
        hostname=_text(pod, "hostname", 63) or "",
        host_network=False,
        labels=tuple(sorted(labels.items())),
        containers=(container,) if container else (),
        regular_containers=1 if container and container.section == "containers" else 0,
        owner_kind=_text(pod, "owner_kind", 253, optional=True),
        owner_name=_text(pod, "owner_name", 253, optional=True),
        created=None,
        capture_opt_out=not pod["capture"],
    )
    return found, container


def read(directory: Path, core_name: str, inode: int, size: int) -> tuple[Pod, Container | None] | None:
    """The pinned pod of this core, or None when there is none or it cannot be trusted. Blocking."""
    path = directory / record_name(core_name)
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("pod record %r not read: %s", str(path), error.strerror)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > MAX_BYTES:
            raise _Invalid("not a small regular file with one name")
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise _Invalid("not written by this shipper (owner or mode differ)")
        return parse(os.read(fd, MAX_BYTES + 1), inode, size)
    except (OSError, ValueError, RecursionError) as error:
        log.warning("pod record %r ignored: %s", str(path), error)
        return None
    finally:
        os.close(fd)
