"""Key Broker Service."""
