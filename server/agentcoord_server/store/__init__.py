"""The store layer: one module per area, Redis and Lua only, no gRPC types (DESIGN.md)."""
