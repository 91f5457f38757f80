//! Outbound HTTP for tools: SSRF guard, host allowlists, credential injection, limits.
