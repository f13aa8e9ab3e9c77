"""Event transport below the UPS core: per-subscriber queues in Redis, the process-wide
notification hub, and the two senders — WebSocket frames and DIMSE N-EVENT-REPORTs."""
