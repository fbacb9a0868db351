"""The stages — ingest, release, deliver — as thin shells over the domain, Kafka and state layers."""
