"""One router per resource: sequences, definitions, and the service's own health."""
