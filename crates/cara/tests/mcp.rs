//! MCP tool servers behind the Gate, end to end.
