"""Retry tiers as configured: names and bounds from the environment, where a wait goes, and the
start-up refusal of a configuration or a topic whose retention would expire actions unread."""

from __future__ import annotations

import pytest

from processors.config import Config
from processors.kafka.topics import needed_retention_ms, retention_problems, topic_specs

DAY_MS = 86_400_000


def test_each_wait_goes_to_its_tier_by_the_configured_bounds() -> None:
    config = Config.from_env({"CRM_SYNC_RETRY_SHORT_MAX_SECONDS": "30", "CRM_SYNC_RETRY_MEDIUM_MAX_SECONDS": "600",
                              "CRM_SYNC_TOPIC_RETRY_LONG": "eu.retry-long"})
    t = config.topics
    assert [config.retry_topic(ms) for ms in (-1, 30_000, 30_001, 600_000, 600_001, 7 * DAY_MS)] == [
        t.retry, t.retry, t.retry_medium, t.retry_medium, "eu.retry-long", "eu.retry-long"]
    assert config.retry_problems() == []


def test_every_tier_is_created_with_the_retry_retention() -> None:
    config = Config.from_env({"CRM_SYNC_RETRY_RETENTION_HOURS": "200"})
    specs = topic_specs(config)
    for tier in config.retry_tiers():
        assert specs[tier.topic] == {"retention.ms": str(200 * 3_600_000)}


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CRM_SYNC_RETRY_RETENTION_HOURS": "168"}, "CRM_SYNC_RETRY_RETENTION_HOURS: expected more than 169 hours"),
        ({"CRM_SYNC_RETRY_RETENTION_HOURS": "180", "CRM_SYNC_PAUSED_REPARK_SECONDS": "86400"}, "expected more than 192 hours"),
        ({"CRM_SYNC_RETRY_SHORT_MAX_SECONDS": "3600"}, "expected 0 < short < medium < 604800"),
        ({"CRM_SYNC_RETRY_MEDIUM_MAX_SECONDS": "700000"}, "expected 0 < short < medium < 604800"),
    ],
)
def test_a_configuration_whose_retention_does_not_outlast_the_longest_wait_is_refused(env: dict[str, str], problem: str) -> None:
    [found] = Config.from_env(env).retry_problems()
    assert problem in found


def test_an_existing_topic_with_too_short_a_retention_is_refused_and_forever_is_fine() -> None:
    config = Config()
    t = config.topics
    need = needed_retention_ms(config)
    assert need[t.retry_long] == 7 * DAY_MS + 3_600_000
    ok = {t.delay: 7 * DAY_MS, t.retry: 7 * DAY_MS, t.retry_medium: -1, t.retry_long: 8 * DAY_MS}
    assert retention_problems(config, ok) == []
    [problem] = retention_problems(config, {**ok, t.retry_long: 7 * DAY_MS})
    assert t.retry_long in problem and "raise its retention.ms" in problem
