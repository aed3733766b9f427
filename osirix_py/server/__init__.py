"""The runtime that osirix-py server and the GUI embed."""
