"""HMAC signing of control envelopes: what a trainer with a shared secret accepts and refuses."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import pytest

from bus.codec import canonical_bytes, decode, encode
from bus.envelope import Envelope
from bus.signing import InvalidSignature, Verifier, sign, signature, verify

SECRET = "s3cret-shared-by-trainer-and-voters"


def vote(**overrides: object) -> Envelope:
    fields: dict[str, object] = {
        "type": "VOTE",
        "run_id": "run-1",
        "source": "voter-a",
        "data": {"decision": "stop", "reason": "val_loss plateau", "scores": [0.5, 0.4]},
        "epoch": 3,
        "iteration": 120,
    }
    fields.update(overrides)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_signature_is_hmac_sha256_of_the_canonical_bytes() -> None:
    env = vote()
    expected = hmac.new(SECRET.encode(), canonical_bytes(env), hashlib.sha256).hexdigest()
    assert sign(env, SECRET).sig == expected
    assert signature(env, SECRET) == expected


def test_signed_envelope_verifies_with_str_or_equal_bytes_secret() -> None:
    signed = sign(vote(), SECRET)
    assert verify(signed, SECRET)
    assert verify(signed, SECRET.encode())
    assert sign(vote(id=signed.id, ts=signed.ts), SECRET.encode()).sig == signed.sig


def test_signature_survives_the_wire_and_resigning() -> None:
    signed = sign(vote(), SECRET)
    received = decode(encode(signed))
    assert verify(received, SECRET)
    # `sig` is not covered by the signature, so signing a signed envelope is idempotent.
    assert sign(received, SECRET).sig == signed.sig


def test_signature_does_not_depend_on_map_key_order() -> None:
    env = vote(data={"a": 1, "b": {"x": 1, "y": 2}})
    reordered = dataclasses.replace(env, data={"b": {"y": 2, "x": 1}, "a": 1})
    assert verify(reordered.with_sig(sign(env, SECRET).sig), SECRET)


def test_wrong_secret_does_not_verify() -> None:
    assert not verify(sign(vote(), SECRET), "another-secret")


@pytest.mark.parametrize(
    "tamper",
    [
        {"data": {"decision": "continue", "reason": "val_loss plateau", "scores": [0.5, 0.4]}},
        {"type": "TERMINATE"},
        {"source": "voter-b"},
        {"run_id": "run-2"},
        {"epoch": 4},
        {"iteration": 121},
        {"ts": 0.0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_any_tampered_field_breaks_the_signature(tamper: dict[str, object]) -> None:
    signed = sign(vote(), SECRET)
    forged = dataclasses.replace(signed, **tamper)  # type: ignore[arg-type]
    assert not verify(forged, SECRET)


@pytest.mark.parametrize("sig", ["", "00" * 32, "zz", "é" * 64, "\udcff"])
def test_garbage_signatures_are_rejected_without_crashing(sig: str) -> None:
    assert not verify(vote().with_sig(sig), SECRET)
    assert not Verifier(SECRET).check(vote().with_sig(sig))


def test_unsigned_envelope_does_not_verify() -> None:
    assert not verify(vote(), SECRET)


def test_verifier_with_secret_refuses_unsigned_and_forged_and_accepts_signed() -> None:
    verifier = Verifier(SECRET)
    signed = sign(vote(), SECRET)
    assert verifier.enabled
    assert verifier.check(signed)
    assert verifier.require(signed) is signed
    assert not verifier.check(vote())
    forged = dataclasses.replace(signed, data={"decision": "continue"})
    assert not verifier.check(forged)

    with pytest.raises(InvalidSignature, match=rf"unsigned envelope 'VOTE' \(id {signed.id}\)"):
        verifier.require(vote(id=signed.id))
    with pytest.raises(InvalidSignature, match=r"bad signature.*voter-a"):
        verifier.require(forged)


def test_verifier_without_secret_accepts_everything() -> None:
    verifier = Verifier(None)
    assert not verifier.enabled
    assert verifier.check(vote())
    assert verifier.check(vote().with_sig("forged"))
    assert verifier.require(vote().with_sig("forged")).sig == "forged"


@pytest.mark.parametrize(
    ("secret", "error"), [("", ValueError), (b"", ValueError), (42, TypeError)]
)
def test_unusable_secrets_are_refused(secret: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="secret"):
        Verifier(secret)  # type: ignore[arg-type]
    with pytest.raises(error, match="secret"):
        sign(vote(), secret)  # type: ignore[arg-type]


def test_the_documented_test_vector_of_docs_protocol_md() -> None:
    # Pinned from docs/protocol.md section 4, which clients in other languages implement.
    env = Envelope(
        v=1,
        id="01HZX3K6Y0ABCDEFGHJKMNPQRS",
        run_id="r1",
        type="EPOCH_COMPLETED",
        source="trainer:0",
        ts=1700000000.5,
        epoch=2,
        iteration=300,
        data={"b": 1, "a": [1, 2], "aa": {"z": 1, "y": b"x"}},
    )
    canonical = bytes.fromhex(
        "89a17601a26964ba3031485a58334b36593041424344454647484a4b4d4e50515253a27473cb41d954fc40200000"
        "a46461746183a161920102a16201a2616182a179c40178a17a01a474797065af45504f43485f434f4d504c455445"
        "44a565706f636802a672756e5f6964a27231a6736f75726365a9747261696e65723a30a9697465726174696f6ecd"
        "012c"
    )
    documented_sig = "6725e5bed721ace0eccddb845a52b8f037cfc7d8109a11fa72386619337ec7cc"
    assert canonical_bytes(env) == canonical
    assert hmac.new(b"secret", canonical, hashlib.sha256).hexdigest() == documented_sig
    assert sign(env, "secret").sig == documented_sig
    assert verify(env.with_sig(documented_sig), "secret")
