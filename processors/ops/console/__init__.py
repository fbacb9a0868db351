"""The admin console (`crm-sync console`): the CLI's library API behind a small server-rendered web page."""
