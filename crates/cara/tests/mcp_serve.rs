//! `cara mcp serve` driven by the Python SDK client.
