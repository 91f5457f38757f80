//! End-to-end tests of the `cara` binary: each starts the real daemon in a temporary
//! data directory on a loopback port, with a scripted fake OpenAI server as its model
//! provider, and drives it like a user would (HTTP, WebSocket, the CLI and the REPL).
//!
//! One test binary, as in ripgrep: the modules below are its features; `util` holds the
//! helpers.

mod util;

mod approvals;
mod auth;
mod bad_input;
mod cli;
mod durability;
mod injection;
mod mcp;
mod mcp_serve;
mod openai_api;
mod openai_python;
mod path_escapes;
mod providers;
mod rules;
mod sandbox;
mod secrets;
mod shell_mode;
mod shim;
mod system;
mod websocket;
