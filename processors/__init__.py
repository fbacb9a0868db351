"""crm-sync: meeting-booking events → Salesforce ToDos and HubSpot meetings/notes, via Kafka."""

import warnings
from importlib import metadata

from authlib.deprecate import AuthlibDeprecationWarning

# confluent-kafka's schema-registry client imports authlib's httpx integration, which warns on
# import. authlib puts an "always" filter for its warnings first when `authlib.deprecate` is
# imported, so ours must come after that import to win.
warnings.filterwarnings("ignore", category=AuthlibDeprecationWarning)


def version() -> str:
    """The installed package's version: what `crm-sync --version` prints and `crm_sync_build_info` carries."""
    try:
        return metadata.version("crm-sync")
    except metadata.PackageNotFoundError:
        return "unknown"
