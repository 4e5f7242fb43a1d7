"""The ETag contract (integrity.py), table-driven: what can be compared, and what a mismatch is."""

from __future__ import annotations

import hashlib

import pytest

from coredump_shipper.bucket.integrity import (
    VERIFIED,
    IntegrityError,
    answer_opaque_reason,
    check_etag,
    combine,
    multipart_etag,
    opaque_reason,
)

MD5 = hashlib.md5(b"core", usedforsecurity=False).hexdigest()


@pytest.mark.parametrize("etag", [f'"{MD5}"', MD5, f'"{MD5.upper()}"', f' "{MD5}" '])
def test_an_md5_etag_of_the_bytes_sent_verifies(etag: str) -> None:
    assert check_etag("PutObject", etag, MD5, "") == VERIFIED


def test_another_md5_is_damage() -> None:
    other = hashlib.md5(b"c0re", usedforsecurity=False).hexdigest()
    with pytest.raises(IntegrityError) as raised:
        check_etag("UploadPart 3", f'"{other}"', MD5, "")
    assert raised.value.operation == "UploadPart 3" and raised.value.transient
    assert other in raised.value.message and MD5 in raised.value.message


@pytest.mark.parametrize(
    ("etag", "shown"),
    [("", "none"), ('"abc"', "abc"), (f'"{MD5}-2"', f"{MD5}-2"), ('"W/xyz"', "w/xyz")],
)
def test_an_etag_not_of_the_md5_shape_is_not_verified_and_says_so(etag: str, shown: str) -> None:
    verification = check_etag("PutObject", etag, MD5, "")
    assert not verification.verified
    assert shown in verification.reason and "None" not in verification.reason


def test_encryption_whose_etags_are_not_md5s_is_never_compared() -> None:
    verification = check_etag("PutObject", '"00000000000000000000000000000000"', MD5, "SSE aws:kms")
    assert not verification.verified and verification.reason == "SSE aws:kms"


@pytest.mark.parametrize(
    ("args", "opaque"),
    [
        ({}, False),
        ({"ServerSideEncryption": "AES256"}, False),
        ({"ServerSideEncryption": "aws:kms"}, True),
        ({"ServerSideEncryption": "aws:kms:dsse"}, True),
        ({"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k"}, True),
    ],
)
def test_which_object_arguments_make_etags_opaque(args: dict[str, str], opaque: bool) -> None:
    assert bool(opaque_reason(args)) == opaque


def test_a_bucket_default_of_sse_kms_is_seen_in_the_answer() -> None:
    assert answer_opaque_reason({"ServerSideEncryption": "aws:kms", "ETag": '"x"'})
    assert not answer_opaque_reason({"ServerSideEncryption": "AES256"})


def test_multipart_etag_is_the_md5_of_the_parts_md5s_and_their_count() -> None:
    parts = [b"a" * 10, b"b" * 20, b"c"]
    digests = [hashlib.md5(part, usedforsecurity=False).digest() for part in parts]
    expected = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + "-3"
    assert multipart_etag(digests) == expected
    assert check_etag("CompleteMultipartUpload", f'"{expected}"', expected, "") == VERIFIED
    with pytest.raises(IntegrityError):
        check_etag("CompleteMultipartUpload", f'"{expected[:-1]}4"', expected, "")


def test_an_object_is_verified_only_when_every_check_was() -> None:
    unverified = check_etag("UploadPart 2", '"xyz"', MD5, "")
    assert combine([VERIFIED, VERIFIED]) == VERIFIED
    assert combine([VERIFIED, unverified, VERIFIED]) == unverified
