//! A server's tool list turned into the Gate's tools: names, descriptions, closed
//! schemas, effect classes.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::effect::classify;
use crate::hub::{MAX_DESCRIPTION, MAX_TOOLS, McpTool, SEPARATOR, Skipped};

/// The longest tool name model providers accept.
const MAX_NAME: usize = 64;

/// Converts a listing; tools that cannot be offered are skipped with the reason.
pub(crate) fn convert(
    cfg: &ServerConfig,
    listed: Vec<rmcp::model::Tool>,
) -> (Vec<Arc<McpTool>>, Vec<Skipped>) {
    let mut tools = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = BTreeSet::new();
    let networked = cfg.networked();
    for t in listed {
        let remote = t.name.to_string();
        let skip = |reason: String| Skipped {
            remote: cut(&remote, 128),
            reason,
        };
        if tools.len() == MAX_TOOLS {
            skipped.push(skip(format!(
                "the server lists more than {MAX_TOOLS} tools"
            )));
            continue;
        }
        let name = format!("{}{SEPARATOR}{}", cfg.name, model_safe(&remote));
        if remote.is_empty() || name.len() > MAX_NAME {
            skipped.push(skip(format!(
                "`{}` is empty or longer than {MAX_NAME} characters",
                cut(&name, 80)
            )));
            continue;
        }
        if !seen.insert(name.clone()) {
            skipped.push(skip(format!(
                "its name becomes `{name}`, which another tool of the server already has"
            )));
            continue;
        }
        let schema = match crate::schema::close(&t.input_schema) {
            Ok(s) => s,
            Err(e) => {
                skipped.push(skip(e));
                continue;
            }
        };
        if let Err(e) = jsonschema::validator_for(&schema) {
            skipped.push(skip(format!(
                "its input schema does not compile: {}",
                cut(&e.to_string(), 200)
            )));
            continue;
        }
        let class = classify(t.annotations.as_ref(), cfg.tools.get(&remote), networked);
        let description = clean(t.description.as_deref().unwrap_or_default());
        tools.push(Arc::new(McpTool {
            name,
            server: cfg.name.clone(),
            remote,
            description,
            schema,
            class,
            annotations: t
                .annotations
                .as_ref()
                .and_then(|a| serde_json::to_value(a).ok()),
        }));
    }
    (tools, skipped)
}

/// Characters other than letters, digits, `_` and `-` become `_` (providers refuse
/// them in tool names).
fn model_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A description as the model sees it: no control or bidi characters, cut.
fn clean(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| {
            if c == '\n' || c == '\t' {
                c
            } else if c.is_control() || crate::is_bidi(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    cut(kept.trim(), MAX_DESCRIPTION)
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerConfig, Transport};
    use carapace_types::EffectClass;
    use serde_json::json;

    fn cfg() -> ServerConfig {
        ServerConfig::new(
            "gh",
            Transport::Stdio {
                command: vec!["x".into()],
                env: vec![],
                sandbox: None,
                egress: None,
            },
        )
    }

    fn tool(name: &str, schema: serde_json::Value) -> rmcp::model::Tool {
        serde_json::from_value(
            json!({ "name": name, "description": "d\u{202e}x\u{7}", "inputSchema": schema }),
        )
        .unwrap()
    }

    #[test]
    fn names_schemas_and_descriptions_are_made_safe() {
        let (tools, skipped) = convert(
            &cfg(),
            vec![
                tool(
                    "create.issue",
                    json!({ "type": "object", "properties": { "t": { "type": "string" } } }),
                ),
                tool("create/issue", json!({ "type": "object" })),
                tool(&"x".repeat(80), json!({ "type": "object" })),
                tool(
                    "remote",
                    json!({ "type": "object", "properties": { "a": { "$ref": "http://evil/x" } } }),
                ),
                tool("list", json!({ "type": "array" })),
            ],
        );
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0].name, "gh__create_issue");
        assert_eq!(tools[0].remote, "create.issue");
        assert_eq!(tools[0].description, "d x");
        assert_eq!(tools[0].schema["additionalProperties"], json!(false));
        // No annotations: the strictest class.
        assert_eq!(tools[0].class.effect, EffectClass::Egress);
        let reasons: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(skipped.len(), 4, "{reasons:?}");
        assert!(reasons[0].contains("already has"), "{reasons:?}");
        assert!(reasons[1].contains("longer than 64"), "{reasons:?}");
        assert!(reasons[2].contains("$ref"), "{reasons:?}");
        assert!(reasons[3].contains("not \"object\""), "{reasons:?}");
    }
}
