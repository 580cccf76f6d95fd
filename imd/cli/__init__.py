"""The ``imd`` command: ``imd serve`` and client commands."""
