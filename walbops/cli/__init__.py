"""The ``walbops`` command line: one module per command group (``<group>_cmd.py``)."""
