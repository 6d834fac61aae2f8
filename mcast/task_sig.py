"""Signed tasks: the server signs what an agent runs, the agent checks it before storing it.

A task of a policy decides what runs on a machine and when: the package (its id and hash), the
command line, the schedule, the run-as user and where it runs from. The policy travels over
HTTP, so whoever answers for the server's address could rewrite it. The server therefore signs
every task with its Ed25519 key (the one that signs snapshots, ``DATA/signing.key``) and the
agent verifies the signature with its pinned trust key (``DATA/signing.pub``) before it stores
the task; a task whose signature is missing or does not verify is refused.

The signature covers :data:`DOMAIN` followed by the msgpack array of the task's fields in a
fixed order (:func:`task_signing_bytes`), never the XML text: one XML text can be written in
many ways, and the domain prefix keeps a task signature from ever verifying as a snapshot
signature (or the other way round). The computer's GUID is one of the fields, so a task signed
for one machine does not verify on another. This module owns that encoding, signing and
verification; it is pure (no clock, no files).
"""

from __future__ import annotations

from dataclasses import replace

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import TrustError
from .fleet import PolicyTask

DOMAIN = b"mcast-task-v1\0"
SIGNATURE_BYTES = 64  # Ed25519


class TaskSignatureError(TrustError):
    """A task's signature is missing, malformed, or does not verify with the trust key."""


def task_signing_bytes(computer: str, task: PolicyTask) -> bytes:
    """The exact bytes a task signature covers: the domain, then every field of the task
    that decides what runs and when (everything but the signature), in a fixed order."""
    body = [
        computer,
        task.task_id,
        task.package_id,
        task.package_name,
        task.package_hash,
        task.package_size,
        task.package_version,
        task.command,
        task.schedule,
        task.credentials,
        task.run_from,
    ]
    if task.same_content_as:  # absent: the bytes of a task before renewals existed
        body.append(list(task.same_content_as))
    return DOMAIN + bytes(msgpack.packb(body, use_bin_type=True))


def sign_task(key: Ed25519PrivateKey, computer: str, task: PolicyTask) -> PolicyTask:
    """``task`` with its signature for ``computer`` (a lower-case GUID, as the policy has it)."""
    return replace(task, signature=key.sign(task_signing_bytes(computer, task)))


def verify_task(public: Ed25519PublicKey, computer: str, task: PolicyTask) -> PolicyTask:
    """``task`` if its signature for ``computer`` verifies with ``public``, else
    :class:`TaskSignatureError` saying whether it was missing or wrong."""
    if len(task.signature) != SIGNATURE_BYTES:
        raise TaskSignatureError(f"task {task.task_id}: missing or malformed signature")
    try:
        public.verify(task.signature, task_signing_bytes(computer, task))
    except InvalidSignature:
        raise TaskSignatureError(
            f"task {task.task_id}: bad signature (changed in transit, signed for another"
            " computer, or by another key)"
        ) from None
    return task
