"""The edge: who is asking, from where, and what a connection may cost: tokens
and keys, origins, forwarded headers, passwords, throttles, connection limits,
and secrets kept out of logs."""
