"""
Types of C{uringreactor._pieces} (C{_pieces.c}), for mypy.
"""

from typing import Any

def byte_length(pieces: Any, /) -> int: ...
