"""What the kernel hands over: the core_pattern line, the receiver's facts and records, its heartbeat."""
