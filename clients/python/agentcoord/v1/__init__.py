"""Generated from proto/agentcoord/v1 by make generate; do not edit."""
