"""Fan-out inside one process: rooms of connections with bounded outboxes (`hub.py`)
and who is connected (`presence.py`); `gateway/bus/` carries both across replicas."""
