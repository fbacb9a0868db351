"""crm-sync: meeting-booking events → Salesforce ToDos and HubSpot meetings/notes, via Kafka."""

import warnings

# confluent-kafka's schema-registry client imports authlib's httpx integration, which warns on import.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")
