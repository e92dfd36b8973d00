"""The error types the command line maps to exit codes (DESIGN §6).

A `UserError` is bad input: the message names the input and the problem in one line, and the CLI exits 2
without a traceback. A `GateError` is a quality or validation gate that did not hold (exit 3).
"""


class UserError(Exception):
    """Bad input from the user: a path, a file, a recipe key, a budget. Exit code 2."""


class GateError(Exception):
    """A measured gate failed (ONNX validation, minimum quality retention). Exit code 3."""
