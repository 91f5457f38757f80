//! MCP servers' tools as Gate tools: `SERVER__TOOL`, looked up in the hub's current
//! list, every call through the same stages as a built-in tool.
//!
//! A call's destination is the server (`mcp:SERVER`, and `host:HOST` for a server
//! reached over HTTP), so policy, plans and "for this session" answers name where the
//! arguments go. Results are scrubbed before they are cut, and labelled at least as the
//! tool's class says (open-world tools' results are untrusted).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carapace_fs::Workspace;
use carapace_mcp::{CallToolResult, Hub, McpTool};
use carapace_policy::Destination;
use carapace_types::Source;
use carapace_vault::Redaction;
use serde_json::{Value, json};

use crate::Scrubber;
use crate::catalog::{ExecFn, RawResult, ToolDef, ToolFailure};

/// The Gate's definitions of the MCP tools, by name.
type Defs = Arc<HashMap<String, Arc<ToolDef>>>;

/// The hub and the Gate's definitions of its current tools.
pub(crate) struct McpTools {
    hub: Hub,
    /// Hosts of servers reached over HTTP, by server name.
    hosts: HashMap<String, String>,
    /// Rebuilt when the hub's version moves.
    cache: Mutex<(u64, Defs)>,
    /// Bytes of a result kept, by server.
    caps: HashMap<String, usize>,
    /// Call deadlines, by server.
    timeouts: HashMap<String, Duration>,
}

/// How the Gate reaches MCP servers.
#[derive(Clone)]
pub struct McpSetup {
    /// The running servers.
    pub hub: Hub,
    /// Per server: the HTTP host its calls go to (none for stdio servers), the bytes of
    /// a result kept, and the call deadline.
    pub servers: Vec<McpServerInfo>,
}

/// What the Gate knows of one server beyond its tools.
#[derive(Clone, Debug)]
pub struct McpServerInfo {
    /// The server's name.
    pub name: String,
    /// The host of its URL, for a streamable HTTP server.
    pub host: Option<String>,
    /// Bytes of a result kept.
    pub max_result_bytes: usize,
    /// The longest one call may take.
    pub call_timeout: Duration,
}

impl McpTools {
    pub fn new(setup: McpSetup) -> McpTools {
        let mut hosts = HashMap::new();
        let mut caps = HashMap::new();
        let mut timeouts = HashMap::new();
        for s in setup.servers {
            if let Some(h) = s.host {
                hosts.insert(s.name.clone(), h);
            }
            caps.insert(s.name.clone(), s.max_result_bytes);
            timeouts.insert(s.name, s.call_timeout);
        }
        McpTools {
            hub: setup.hub,
            hosts,
            cache: Mutex::new((u64::MAX, Arc::default())),
            caps,
            timeouts,
        }
    }

    /// The current definitions, rebuilt only when the hub's tool lists changed.
    pub fn defs(&self) -> Arc<HashMap<String, Arc<ToolDef>>> {
        let snap = self.hub.snapshot();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != snap.version {
            let mut defs = HashMap::with_capacity(snap.tools.len());
            for (name, tool) in &snap.tools {
                match self.def(tool.clone()) {
                    Ok(d) => {
                        defs.insert(name.clone(), Arc::new(d));
                    }
                    Err(e) => tracing::warn!(tool = %name, error = %e, "MCP tool not offered"),
                }
            }
            *cache = (snap.version, Arc::new(defs));
        }
        cache.1.clone()
    }

    /// Every server's state, for `cara mcp list`.
    pub fn status(&self) -> Value {
        json!({ "servers": self.hub.status() })
    }

    /// One server's tools with their class and why; `None`: no such server.
    pub fn tools_of(&self, server: &str) -> Option<Value> {
        let tools = self.hub.tools_of(server)?;
        let status = self.hub.status().into_iter().find(|s| s.name == server);
        Some(json!({
            "server": server,
            "tools": tools.iter().map(|t| tool_json(t)).collect::<Vec<_>>(),
            "skipped": status.map(|s| s.skipped).unwrap_or_default(),
        }))
    }

    /// `cara mcp test`: a fresh connection's tools, or what failed.
    pub async fn test(&self, server: &str) -> Option<Value> {
        let result = self.hub.test(server).await?;
        Some(match result {
            Ok(tools) => json!({
                "server": server,
                "ok": true,
                "tools": tools.iter().map(|t| tool_json(t)).collect::<Vec<_>>(),
            }),
            Err(e) => json!({ "server": server, "ok": false, "error": e }),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<ToolDef>> {
        if !name.contains(carapace_mcp::SEPARATOR) {
            return None;
        }
        self.defs().get(name).cloned()
    }

    fn def(&self, tool: Arc<McpTool>) -> Result<ToolDef, String> {
        let hub = self.hub.clone();
        let cap = self.caps.get(&tool.server).copied().unwrap_or(256 * 1024);
        let exec_tool = tool.clone();
        let exec: ExecFn = Arc::new(move |ctx, args| {
            let hub = hub.clone();
            let tool = exec_tool.clone();
            Box::pin(async move {
                let result = hub
                    .call(&tool, args)
                    .await
                    .map_err(|e| ToolFailure(e.to_string()))?;
                shape(&tool, result, cap, &ctx.scrubber)
            })
        });
        let mut dests = vec![Destination::mcp(tool.server.as_str())];
        if let Some(h) = self.hosts.get(&tool.server) {
            dests.push(Destination::host(h.as_str()));
        }
        let description = if tool.description.is_empty() {
            format!("Tool {} of the MCP server {}.", tool.remote, tool.server)
        } else {
            tool.description.clone()
        };
        let mut def = ToolDef::dynamic(
            Cow::Owned(tool.name.clone()),
            Cow::Owned(description),
            tool.class.effect,
            tool.schema.clone(),
            exec,
        )?
        .with_destinations(move |_: &Value, _: &Workspace| dests.clone())
        .with_result(tool.class.result, Some(Source::Tool(tool.name.clone())));
        def.timeout = self.timeouts.get(&tool.server).copied();
        Ok(def)
    }
}

/// An MCP result as the model sees it: the text of one text block, or the blocks (media
/// described, not passed), scrubbed and then cut to `cap` bytes in all.
fn shape(
    tool: &McpTool,
    result: CallToolResult,
    cap: usize,
    scrubber: &Scrubber,
) -> Result<RawResult, ToolFailure> {
    let mut redactions = Vec::new();
    let mut budget = cap;
    let mut cut = false;
    let mut take = |text: String, path: String, budget: &mut usize| -> String {
        let mut text = text;
        let count = scrubber.scrub_counted(&mut text);
        if count > 0 {
            redactions.push(Redaction { path, count });
        }
        if text.len() > *budget {
            let mut end = *budget;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            cut = true;
        }
        *budget -= text.len();
        text
    };
    let mut blocks = Vec::new();
    for (i, block) in result.content.into_iter().enumerate() {
        let wire = serde_json::to_value(&block).unwrap_or(Value::Null);
        blocks.push(block_json(wire, i, &mut |t, p| take(t, p, &mut budget)));
    }
    let structured = result.structured_content.map(|mut v| {
        // Structured content repeats the text (SDKs send both); it is scrubbed whole and
        // dropped when it does not fit what is left.
        let found = scrubber.scrub_json_report(&mut v);
        redactions.extend(found.into_iter().map(|r| Redaction {
            path: format!("/structured{}", r.path),
            count: r.count,
        }));
        v
    });
    let structured = structured.filter(|v| {
        let n = v.to_string().len();
        n <= budget || {
            cut = true;
            false
        }
    });
    if result.is_error == Some(true) {
        let text: Vec<String> = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let mut message = format!("{} reported an error: {}", tool.name, text.join("\n"));
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        return Err(ToolFailure(message));
    }
    let content = match (&blocks[..], &structured) {
        ([one], None) if one.get("type") == Some(&json!("text")) && !cut => one["text"].clone(),
        _ => {
            let mut doc = json!({ "content": blocks });
            if let Some(s) = structured {
                doc["structured"] = s;
            }
            if cut {
                doc["truncated"] = json!(format!("the result was cut to {cap} bytes"));
            }
            doc
        }
    };
    Ok(RawResult {
        content,
        label: tool.class.result,
        source: Source::Tool(tool.name.clone()),
        redactions,
    })
}

/// One content block, from its wire form (`text`, `image`, `audio`, `resource_link`,
/// `resource`); media is described, not passed on.
fn block_json(block: Value, i: usize, take: &mut dyn FnMut(String, String) -> String) -> Value {
    let field = |k: &str| {
        block
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match block
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
    {
        "text" => {
            json!({ "type": "text", "text": take(field("text"), format!("/content/{i}/text")) })
        }
        kind @ ("image" | "audio") => json!({
            "type": kind,
            "omitted": format!(
                "{} {kind}, {} bytes of base64 (not shown to the model)",
                cut(&field("mimeType"), 64),
                field("data").len()
            ),
        }),
        "resource_link" => json!({
            "type": "resource_link",
            "uri": take(field("uri"), format!("/content/{i}/uri")),
            "name": take(field("name"), format!("/content/{i}/name")),
        }),
        "resource" => {
            let r = block.get("resource").cloned().unwrap_or(Value::Null);
            match r.get("text").and_then(Value::as_str) {
                Some(text) => json!({
                    "type": "resource",
                    "uri": take(r.get("uri").and_then(Value::as_str).unwrap_or_default().to_string(), format!("/content/{i}/uri")),
                    "text": take(text.to_string(), format!("/content/{i}/text")),
                }),
                None => {
                    json!({ "type": "resource", "omitted": "binary resource (not shown to the model)" })
                }
            }
        }
        _ => json!({ "type": "other", "omitted": "content of a kind Carapace does not pass on" }),
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn tool_json(t: &McpTool) -> Value {
    json!({
        "name": t.name,
        "remote": t.remote,
        "effect": t.class.effect.as_str(),
        "result": format!("{}/{}", t.class.result.integrity.as_str(), t.class.result.confidentiality.as_str()),
        "why": t.class.why,
        "annotations": t.annotations,
        "description": t.description,
        "input_schema": t.schema,
    })
}
