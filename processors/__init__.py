"""crm-sync: meeting-booking events → Salesforce ToDos and HubSpot meetings/notes, via Kafka."""

import warnings
from importlib import metadata

# confluent-kafka's schema-registry client imports authlib's httpx integration, which warns on import.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")


def version() -> str:
    """The installed package's version: what `crm-sync --version` prints and `crm_sync_build_info` carries."""
    try:
        return metadata.version("crm-sync")
    except metadata.PackageNotFoundError:
        return "unknown"
