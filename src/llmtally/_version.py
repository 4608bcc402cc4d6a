"""The version, in a leaf module every layer may import (the facade re-exports it)."""

__all__ = ["__version__"]

__version__ = "0.1.0"
