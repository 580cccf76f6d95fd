"""The OS edge: everything that talks to the kernel or to a child's sockets."""
