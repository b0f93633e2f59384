# Generated from ../_async by `make generate` (unasync); do not edit.
