"""Operator tools: the `crm-sync` CLI, the settings admin, failure history (DLQ) tools, the
upstream publisher SDK and `./dev run`."""
