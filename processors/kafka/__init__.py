"""The one Kafka layer: client configs, the explicit-commit group consumer, the delay releaser,
the send/ack contract, read-to-end, topic creation and checks, consumer lag."""
