"""Pure decisions: events, settings rules, planning, rendering, release bookkeeping, delivery
routing, history counting. No Kafka, Faust, HTTP or CRM client here (an import contract)."""
