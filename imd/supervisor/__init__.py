"""Supervision: the registry of processes, their ports, logs and events."""
