//! Built-in workspace tools: read_file, list_dir, write_file, search_files.
//!
//! Each wraps a `carapace_fs::Workspace` operation (which confines it to the workspace)
//! with a closed schema, an effect class and the provenance label of its result.

use std::sync::Arc;

use carapace_fs::{EntryKind, FsError, SearchOptions, Workspace};
use carapace_types::{Confidentiality, EffectClass, Integrity, Label, Source};
use serde_json::{Value, json};

use carapace_vault::Redaction;

use crate::catalog::{Catalog, ExecCtx, ExecFn, RawResult, ToolDef, ToolFailure, path_arg};

/// Names of the built-in tools, granted by default.
pub(crate) const NAMES: [&str; 4] = ["read_file", "list_dir", "write_file", "search_files"];

const DEFAULT_READ_BYTES: u64 = 64 * 1024;
const MAX_READ_BYTES: u64 = 1024 * 1024;
const MAX_LIST_ENTRIES: usize = 1000;
const MAX_WRITE_BYTES: usize = 1024 * 1024;
/// Longer than any secret the scrubber knows or any credential pattern it looks for.
const SCRUB_MARGIN_BYTES: u64 = 4096;

/// A file the owner put in the workspace: their private data, trusted as far as the
/// owner trusts it.
const USER_FILE: Label = Label {
    integrity: Integrity::Trusted,
    confidentiality: Confidentiality::Private,
};

pub(crate) fn catalog() -> Catalog {
    let mut c = Catalog::default();
    c.add(ToolDef::new(
        "read_file",
        "Read a UTF-8 text file from the workspace. Paths are relative to the workspace root.",
        EffectClass::Read,
        json!({
            "type": "object",
            "properties": {
                "path": { "type": "string", "minLength": 1, "description": "file path relative to the workspace" },
                "max_bytes": { "type": "integer", "minimum": 1, "maximum": MAX_READ_BYTES,
                               "description": "read at most this many bytes (default 65536)" }
            },
            "required": ["path"],
            "additionalProperties": false
        }),
        blocking(read_file),
    ).with_destinations(path_arg));
    c.add(ToolDef::new(
        "list_dir",
        "List a directory of the workspace (names, kinds, sizes). Symlinks are shown, not followed.",
        EffectClass::Read,
        json!({
            "type": "object",
            "properties": {
                "path": { "type": "string", "description": "directory relative to the workspace; default the root" }
            },
            "additionalProperties": false
        }),
        blocking(list_dir),
    ).with_destinations(path_arg));
    c.add(ToolDef::new(
        "write_file",
        "Create or replace a UTF-8 text file in the workspace (atomic).",
        EffectClass::Write,
        json!({
            "type": "object",
            "properties": {
                "path": { "type": "string", "minLength": 1, "description": "file path relative to the workspace" },
                "content": { "type": "string", "maxLength": MAX_WRITE_BYTES, "description": "the whole new content" },
                "create_dirs": { "type": "boolean", "description": "create missing parent directories (default false)" }
            },
            "required": ["path", "content"],
            "additionalProperties": false
        }),
        blocking(write_file),
    ).with_destinations(path_arg));
    c.add(ToolDef::new(
        "search_files",
        "Search text files of the workspace for a literal string; returns matching lines with paths and line numbers.",
        EffectClass::Read,
        json!({
            "type": "object",
            "properties": {
                "query": { "type": "string", "minLength": 1, "maxLength": 1000 },
                "path": { "type": "string", "description": "directory to search; default the root" },
                "case_insensitive": { "type": "boolean" },
                "max_matches": { "type": "integer", "minimum": 1, "maximum": 1000 }
            },
            "required": ["query"],
            "additionalProperties": false
        }),
        blocking(search_files),
    ).with_destinations(path_arg));
    c
}

/// Runs a blocking file operation on the blocking pool.
fn blocking(f: fn(&ExecCtx, &Value) -> Result<RawResult, ToolFailure>) -> ExecFn {
    Arc::new(move |ctx, args| {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&ctx, &args))
                .await
                .map_err(|_| ToolFailure("the tool failed unexpectedly".into()))?
        })
    })
}

fn fail(e: FsError) -> ToolFailure {
    ToolFailure(e.to_string())
}

fn str_arg<'a>(args: &'a Value, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The label of a file's content: what the agent wrote keeps the label it was written
/// with (so tainted data stays tainted after a round trip); anything else is the
/// owner's file.
fn file_label(ctx: &ExecCtx, path: &str, sha256_hex: &str) -> Result<(Label, Source), ToolFailure> {
    let written = ctx.store.agent_write(path).map_err(|e| {
        tracing::error!(error = %e, "provenance lookup failed");
        ToolFailure("could not look up the file's provenance".into())
    })?;
    Ok(match written {
        Some(w) if w.sha256_hex == sha256_hex => (w.label, Source::AgentFile),
        // The agent wrote it once but someone changed it since: it is the owner's now,
        // and still carries whatever the agent put in.
        Some(w) => (w.label.join(USER_FILE), Source::UserFile),
        // Content the agent wrote under another name (a symlink, a hard link, a copy)
        // still carries the label it was written with.
        None => match ctx.store.agent_write_label_by_digest(sha256_hex) {
            Ok(Some(label)) => (label.join(USER_FILE), Source::UserFile),
            Ok(None) => (USER_FILE, Source::UserFile),
            Err(e) => {
                tracing::error!(error = %e, "provenance lookup failed");
                return Err(ToolFailure(
                    "could not look up the file's provenance".into(),
                ));
            }
        },
    })
}

fn read_file(ctx: &ExecCtx, args: &Value) -> Result<RawResult, ToolFailure> {
    let ws: &Workspace = &ctx.workspace;
    let path = ws.check(str_arg(args, "path")).map_err(fail)?;
    let max = args
        .get("max_bytes")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_READ_BYTES);
    // Read a margin past the limit and scrub before cutting: a secret cut in two at the
    // limit would no longer be recognised by the sanitize stage.
    let mut file = ws
        .read_file(&path, max.saturating_add(SCRUB_MARGIN_BYTES))
        .map_err(fail)?;
    let redactions = match ctx.scrubber.scrub_counted(&mut file.text) {
        0 => Vec::new(),
        count => vec![Redaction {
            path: "/content".into(),
            count,
        }],
    };
    if file.text.len() as u64 > max {
        let mut end = max as usize;
        while !file.text.is_char_boundary(end) {
            end -= 1;
        }
        file.text.truncate(end);
        file.truncated = true;
    }
    let (label, source) = file_label(ctx, path.as_str(), &file.sha256_hex)?;
    Ok(RawResult {
        content: json!({
            "path": path.as_str(),
            "content": file.text,
            "truncated": file.truncated,
            "total_bytes": file.total_bytes,
        }),
        label,
        source,
        redactions,
    })
}

fn list_dir(ctx: &ExecCtx, args: &Value) -> Result<RawResult, ToolFailure> {
    let ws: &Workspace = &ctx.workspace;
    let path = ws
        .check(args.get("path").and_then(Value::as_str).unwrap_or("."))
        .map_err(fail)?;
    let listing = ws.list_dir(&path, MAX_LIST_ENTRIES).map_err(fail)?;
    let entries: Vec<Value> = listing
        .entries
        .iter()
        .map(|e| {
            let kind = match e.kind {
                EntryKind::File => "file",
                EntryKind::Dir => "dir",
                EntryKind::Symlink => "symlink",
                EntryKind::Other => "other",
            };
            let mut v = json!({ "name": e.name, "kind": kind, "size": e.size });
            if !e.name_is_utf8 {
                v["name_is_utf8"] = json!(false);
            }
            v
        })
        .collect();
    Ok(RawResult {
        content: json!({ "path": path.as_str(), "entries": entries, "truncated": listing.truncated }),
        label: USER_FILE,
        source: Source::Tool("list_dir".into()),
        redactions: Vec::new(),
    })
}

fn write_file(ctx: &ExecCtx, args: &Value) -> Result<RawResult, ToolFailure> {
    let ws: &Workspace = &ctx.workspace;
    let path = ws.check(str_arg(args, "path")).map_err(fail)?;
    let create_dirs = args
        .get("create_dirs")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let content = str_arg(args, "content");
    let out = ws
        .write_file(&path, content.as_bytes(), create_dirs)
        .map_err(fail)?;
    // The file carries everything the session had seen when it was written.
    ctx.store
        .record_agent_write(
            path.as_str(),
            &out.sha256_hex,
            ctx.session_label,
            &ctx.session,
            ctx.now_ms,
        )
        .map_err(|e| {
            tracing::error!(error = %e, "recording provenance failed");
            ToolFailure("the file was written but its provenance could not be recorded".into())
        })?;
    Ok(RawResult {
        content: json!({ "path": path.as_str(), "bytes": out.bytes, "created": out.created }),
        label: Label::TRUSTED_PUBLIC,
        source: Source::Tool("write_file".into()),
        redactions: Vec::new(),
    })
}

fn search_files(ctx: &ExecCtx, args: &Value) -> Result<RawResult, ToolFailure> {
    let ws: &Workspace = &ctx.workspace;
    let path = ws
        .check(args.get("path").and_then(Value::as_str).unwrap_or("."))
        .map_err(fail)?;
    let opts = SearchOptions {
        case_insensitive: args
            .get("case_insensitive")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_matches: args
            .get("max_matches")
            .and_then(Value::as_u64)
            .unwrap_or(100) as usize,
        max_file_bytes: 4 * 1024 * 1024,
    };
    // Whole lines are scrubbed before they are cut to excerpts (see `search_redacted`).
    let scrubbed = std::cell::Cell::new(0usize);
    let redact = |line: &str| {
        let mut text = line.to_string();
        let n = ctx.scrubber.scrub_counted(&mut text);
        scrubbed.set(scrubbed.get() + n);
        (n > 0).then_some(text)
    };
    let found = ws
        .search_redacted(&path, str_arg(args, "query"), &opts, &redact)
        .map_err(fail)?;
    // Matched lines are file content: the result carries the join of their labels.
    let mut label = USER_FILE;
    let mut seen = std::collections::BTreeSet::new();
    for m in &found.matches {
        if seen.insert(m.path.as_str())
            && let Ok(Some(w)) = ctx.store.agent_write(&m.path)
        {
            label = label.join(w.label);
        }
    }
    let matches: Vec<Value> = found
        .matches
        .iter()
        .map(|m| json!({ "path": m.path, "line": m.line_number, "text": m.line }))
        .collect();
    Ok(RawResult {
        content: json!({ "matches": matches, "truncated": found.truncated, "files_scanned": found.files_scanned }),
        label,
        source: Source::Tool("search_files".into()),
        redactions: match scrubbed.get() {
            0 => Vec::new(),
            count => vec![Redaction {
                path: "/matches".into(),
                count,
            }],
        },
    })
}

/// A tool that does nothing, for measuring the Gate's own cost (`--features noop-tool`;
/// never granted by default configuration).
#[cfg(feature = "noop-tool")]
pub(crate) fn noop() -> ToolDef {
    ToolDef::new(
        "noop",
        "Does nothing; for benchmarks of the Gate.",
        EffectClass::Read,
        json!({ "type": "object", "additionalProperties": false }),
        Arc::new(|_ctx, _args| {
            Box::pin(async {
                Ok(RawResult {
                    content: json!({}),
                    label: Label::TRUSTED_PUBLIC,
                    source: Source::Tool("noop".into()),
                    redactions: Vec::new(),
                })
            })
        }),
    )
}
