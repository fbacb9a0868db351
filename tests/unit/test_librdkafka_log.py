"""librdkafka's self-retried notices stay out of the logs; its real warnings do not."""

from __future__ import annotations

import logging

import pytest

from processors.kafka.clients import LIBRDKAFKA_LOG


def test_a_coordinator_still_loading_is_not_logged_and_other_warnings_are(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LIBRDKAFKA_LOG.name):
        LIBRDKAFKA_LOG.warning("GETPID [rdkafka#producer-4] [thrd:main]: Failed to acquire transactional PID from broker "
                               "TxnCoordinator/1: Broker: Coordinator load in progress: retrying")
        LIBRDKAFKA_LOG.warning("FAIL [rdkafka#producer-1]: 127.0.0.1:9092/1: Connect failed: Connection refused")
    assert [r.getMessage()[:4] for r in caplog.records] == ["FAIL"]
