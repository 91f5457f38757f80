//! MCP tool servers behind the Gate.
