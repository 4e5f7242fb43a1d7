"""Did the store keep the bytes that were sent? The one home of the ETag contract.

Without KMS or customer-provided keys, S3 and the stores compatible with it answer a PutObject and
each UploadPart with the MD5 of the bytes they received as the ETag, and a CompleteMultipartUpload
with the MD5 of the parts' binary MD5s followed by `-N` (N parts). The uploader computes the MD5 of
exactly the bytes it sends (the compressed part bodies) while it fills them, and compares.

An ETag cannot vouch for the bytes when the object is encrypted with SSE-KMS (`aws:kms`,
`aws:kms:dsse`) or SSE-C (asked for, or announced in the answer), or when it is not of the MD5 shape
(32 hex digits, plus `-N` for multipart) at all: such objects are stored, and the manifest says they
were not verified and why. A mismatch is never shipped: the uploader raises `IntegrityError`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from coredump_shipper.errors import S3Error

# The manifest's field, and its values.
MANIFEST_FIELD: Final = "verified"
VERIFIED_ETAG: Final = "etag-md5"
NOT_VERIFIED: Final = "no"

_SINGLE = re.compile(r"[0-9a-f]{32}")
_MULTIPART = re.compile(r"[0-9a-f]{32}-[1-9][0-9]*")
# Encryption whose ETags are not the MD5 of the object's bytes.
_OPAQUE_ENCRYPTION = ("aws:kms",)  # also aws:kms:dsse


class IntegrityError(S3Error):
    """The store's ETag shows it kept other bytes than were sent. Transient: the core is kept and
    shipped again (a body damaged on its way may arrive whole the next time)."""

    CODE: Final = "ETagMismatch"

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(operation, detail, code=self.CODE, transient=True)


@dataclass(frozen=True)
class Verification:
    """How one stored object was checked: `verified` or why not (`reason`)."""

    verified: bool
    reason: str = ""

    def manifest_fields(self) -> dict[str, str]:
        if self.verified:
            return {MANIFEST_FIELD: VERIFIED_ETAG}
        return {MANIFEST_FIELD: NOT_VERIFIED, "not-verified-reason": self.reason}


VERIFIED: Final = Verification(True)


def opaque_reason(object_args: Mapping[str, Any]) -> str:
    """Why the ETags of an object stored with these PutObject/CreateMultipartUpload arguments
    cannot be MD5s ("" if they can)."""
    sse = str(object_args.get("ServerSideEncryption", ""))
    if sse.startswith(_OPAQUE_ENCRYPTION):
        return f"SSE {sse}: ETags are not MD5s"
    if object_args.get("SSECustomerAlgorithm") or object_args.get("SSECustomerKey"):
        return "SSE-C: ETags are not MD5s"
    return ""


def answer_opaque_reason(answer: Mapping[str, Any]) -> str:
    """The same, from the store's answer (a bucket default of SSE-KMS is only seen here)."""
    sse = str(answer.get("ServerSideEncryption", ""))
    if sse.startswith(_OPAQUE_ENCRYPTION):
        return f"SSE {sse} (bucket default): ETags are not MD5s"
    if answer.get("SSECustomerAlgorithm"):
        return "SSE-C: ETags are not MD5s"
    return ""


def multipart_etag(digests: Sequence[bytes]) -> str:
    """The ETag S3 gives a multipart object made of parts with these MD5 digests."""
    joined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
    return f"{joined}-{len(digests)}"


def check_etag(operation: str, etag: str, expected: str, opaque: str) -> Verification:
    """Compare a store's ETag with what the bytes sent give (`expected`: hex MD5, or a multipart ETag).

    `opaque` is why ETags cannot be MD5s here ("" if they can). Raises IntegrityError on a mismatch.
    """
    if opaque:
        return Verification(False, opaque)
    value = etag.strip().strip('"').lower()
    shape = _MULTIPART if "-" in expected else _SINGLE
    if not shape.fullmatch(value):
        return Verification(False, f"{operation} answered an ETag not of the MD5 shape ({value or 'none'})")
    if value != expected:
        sent = "the MD5 of the parts' MD5s" if "-" in expected else "the MD5 of the bytes sent"
        raise IntegrityError(
            operation,
            f"the store answered ETag {value} but {sent} is {expected}: it kept other bytes than were sent",
        )
    return VERIFIED


def combine(verifications: Sequence[Verification]) -> Verification:
    """A multipart object is verified when every part and the completion were."""
    for verification in verifications:
        if not verification.verified:
            return verification
    return VERIFIED
