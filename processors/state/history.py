"""Reading sync history: a company's records from its partition of the history topic, folded
(each idempotency key once) into the report. `crm-sync history` and the worker's `/history`
endpoint both answer this way, so they always agree, and no worker keeps history in memory.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message

from processors.config import Config
from processors.domain.history import DEFAULT_TIMEZONE, HistoryRecord, fold, local_day, report
from processors.kafka import clients
from processors.kafka.producer import partition_for
from processors.kafka.read import TopicReader


def read_records(config: Config, company_id: str, timeout: float = 30.0) -> list[HistoryRecord]:
    """The company's records now on the history topic (its one partition only), oldest first."""
    topic = config.topics.history
    records: list[HistoryRecord] = []
    prefix = f"{company_id}/".encode()

    def keep(msg: Message) -> None:
        key, value = msg.key(), msg.value()
        # Keys are `company/…` (records before idempotency keys: the bare company id).
        if key is not None and (key.startswith(prefix) or key == prefix[:-1]) and value is not None:
            try:
                record = HistoryRecord.from_json(value)
            except (ValueError, TypeError):
                return  # not ours: counting it is impossible, failing the whole report is worse
            if record.company_id == company_id:
                records.append(record)

    with TopicReader(clients.librdkafka(config), topic) as reader:
        partitions = reader.partitions(timeout)
        if not partitions:
            raise ValueError(f"history topic {topic} not found")
        reader.assign([partition_for(company_id.encode(), len(partitions))])
        reader.read_to_end(keep, timeout)
    return records


def history_from_topic(config: Config, company_id: str, days: int, now_ms: int, timezone_name: str | None = None) -> dict[str, Any]:
    """The report of the company's last `days` local days (days follow its settings' time zone,
    else the latest record's)."""
    records = read_records(config, company_id)
    tz = timezone_name or (records[-1].timezone if records else DEFAULT_TIMEZONE)
    body = report(fold(records), today=local_day(now_ms, tz), days=days)
    return {"company_id": company_id, "timezone": tz, "days": days, **body}
