"""The hostile records of chaos scenario m are what they claim: the 1.01 MB one is well-formed
(only the product's validation refuses it) and the absurd count is refused by the decoder, for
every input kind. Judged by the product's own ingest, as the worker would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from chaos_fuzz import base_records  # noqa: E402
from chaos_hostile import OVERSIZED_BYTES, absurd_count, oversized  # noqa: E402
from processors.codec import Codec  # noqa: E402
from processors.domain.deadletter import Source  # noqa: E402
from processors.domain.ingest import ingest  # noqa: E402
from processors.domain.model import CompanySettings, MeetingTypeSettings  # noqa: E402

CODEC = Codec()


class NoSettings:
    """No company is configured: the records must be refused before planning looks."""

    def company(self, company_id: str) -> CompanySettings | None:
        return None

    def meeting_type(self, company_id: str, meeting_type_id: str) -> MeetingTypeSettings | None:
        return None


VALUES = [(kind, value) for kind, values in base_records(CODEC, "acme").items() for _, value in values]


@pytest.mark.parametrize(("make", "stage", "size"), [(oversized, "validate", OVERSIZED_BYTES), (absurd_count, "decode", None)])
@pytest.mark.parametrize(("kind", "value"), VALUES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(VALUES)])
def test_hostile_record_is_dead_lettered_at_its_stage(kind: str, value: bytes, make, stage: str, size: int | None) -> None:
    bad = make(value)
    if size is not None:
        assert len(bad) == size
    verdict = ingest(CODEC.decode, Source(kind, 0, 0, b"acme", bad), NoSettings(), 0, 3000)
    assert verdict.dead_letter is not None and verdict.dead_letter["stage"] == stage
