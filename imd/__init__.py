"""imd: an instance-manager daemon for SPDK-based block-storage nodes.

Layers, outermost first (each only imports the ones below it):

* ``imd.api``        gRPC wire edge: protobuf <-> domain, error -> status.
* ``imd.services``   request semantics: validation, V1/V2 routing.
* ``imd.supervisor`` the registry of supervised processes, ports, logs, events.
* ``imd.edges``      the OS: spawning, pidfds, /proc, health probes.
"""

__version__ = "0.1.0"
