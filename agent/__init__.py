"""convert-agent: turns folders into conversion inboxes for the api2convert REST API v2."""

__version__ = "0.1.0"
