"""Fan-out inside one process: rooms of connections (`hub.py`) with bounded outboxes
(`outbox.py`), and who is connected (`presence.py`); `gateway/bus/` carries both across
replicas."""
