//! Input schemas as the server declares them, closed so unknown fields are refused.
//!
//! A server's schema usually leaves `additionalProperties` open; the Gate refuses
//! arguments the tool does not name (they are how a model smuggles data past argument
//! constraints). Each object schema without its own `additionalProperties` is closed:
//! with `additionalProperties: false`, or, where `allOf`/`anyOf`/`oneOf` spread the
//! properties over branches (so that keyword would refuse valid input), with a
//! `propertyNames` list of every name the object and its branches declare.

use serde_json::{Map, Value, json};

/// The largest schema accepted, in bytes of JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// The deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// Keywords whose value is a schema.
const ONE: &[&str] = &[
    "items",
    "additionalItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "additionalProperties",
    "unevaluatedItems",
    "unevaluatedProperties",
];
/// Keywords whose value is a list of schemas.
const LIST: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value maps names to schemas.
const MAP: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Combinators whose branches may declare the object's properties.
const BRANCHES: &[&str] = &["allOf", "anyOf", "oneOf"];

/// Closes `schema` (an object schema at the top, as MCP requires); the error says why
/// a schema is refused.
pub fn close(schema: &Map<String, Value>) -> Result<Value, String> {
    let size = serde_json::to_vec(schema)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_SCHEMA_BYTES {
        return Err(format!(
            "its input schema is {size} bytes; at most {MAX_SCHEMA_BYTES} are accepted"
        ));
    }
    let mut root = Value::Object(schema.clone());
    match root.get("type") {
        None => {
            root["type"] = json!("object");
        }
        Some(Value::String(t)) if t == "object" => {}
        Some(other) => {
            return Err(format!("its input schema has type {other}, not \"object\""));
        }
    }
    if has_remote_ref(&root) {
        return Err("its input schema refers to another document ($ref); only local references (#...) are followed".into());
    }
    close_in(&mut root, 0, false)?;
    Ok(root)
}

fn has_remote_ref(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| {
            (k == "$ref" || k == "$dynamicRef") && v.as_str().is_some_and(|r| !r.starts_with('#'))
                || has_remote_ref(v)
        }),
        Value::Array(a) => a.iter().any(has_remote_ref),
        _ => false,
    }
}

/// `partial`: a branch of `allOf`/`anyOf`/`oneOf`, which declares part of its parent's
/// properties; the parent closes over the branches' names together.
fn close_in(v: &mut Value, depth: usize, partial: bool) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("its input schema nests deeper than {MAX_DEPTH}"));
    }
    let Value::Object(m) = v else {
        return Ok(());
    };
    for k in ONE {
        if let Some(s) = m.get_mut(*k) {
            close_in(s, depth + 1, false)?;
        }
    }
    for k in LIST {
        if let Some(Value::Array(items)) = m.get_mut(*k) {
            for s in items {
                close_in(s, depth + 1, BRANCHES.contains(k))?;
            }
        }
    }
    for k in MAP {
        if let Some(Value::Object(entries)) = m.get_mut(*k) {
            for s in entries.values_mut() {
                close_in(s, depth + 1, false)?;
            }
        }
    }
    if partial {
        return Ok(());
    }
    let is_object = m.get("type") == Some(&json!("object")) || m.contains_key("properties");
    if !is_object
        || matches!(
            m.get("additionalProperties"),
            Some(Value::Bool(false)) | Some(Value::Object(_))
        )
    {
        return Ok(());
    }
    if m.contains_key("patternProperties") && m.get("additionalProperties").is_none() {
        // Names matching a pattern are declared; closing the rest keeps them.
        m.insert("additionalProperties".into(), Value::Bool(false));
        return Ok(());
    }
    let spread = BRANCHES.iter().any(|k| m.contains_key(*k));
    if spread {
        let mut names: Vec<String> = declared(m);
        for k in BRANCHES {
            if let Some(Value::Array(items)) = m.get(*k) {
                for b in items {
                    if let Value::Object(b) = b {
                        names.extend(declared(b));
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        m.remove("additionalProperties");
        m.insert("propertyNames".into(), json!({ "enum": names }));
    } else {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    Ok(())
}

fn declared(m: &Map<String, Value>) -> Vec<String> {
    m.get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(v: Value) -> Value {
        close(v.as_object().unwrap()).unwrap()
    }

    fn valid(schema: &Value, args: Value) -> bool {
        jsonschema::validator_for(schema).unwrap().is_valid(&args)
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let s = closed(json!({
            "type": "object",
            "properties": {
                "a": { "type": "string" },
                "opts": { "type": "object", "properties": { "x": { "type": "integer" } } },
                "list": { "type": "array", "items": { "$ref": "#/$defs/Item" } }
            },
            "$defs": { "Item": { "type": "object", "properties": { "n": { "type": "integer" } } } }
        }));
        assert!(valid(
            &s,
            json!({ "a": "x", "opts": { "x": 1 }, "list": [{ "n": 1 }] })
        ));
        assert!(!valid(&s, json!({ "a": "x", "smuggled": "data" })));
        assert!(!valid(&s, json!({ "opts": { "x": 1, "y": 2 } })));
        assert!(!valid(&s, json!({ "list": [{ "n": 1, "extra": true }] })));
    }

    #[test]
    fn branches_keep_their_properties() {
        let s = closed(json!({
            "type": "object",
            "properties": { "kind": { "type": "string" } },
            "anyOf": [
                { "properties": { "path": { "type": "string" } }, "required": ["path"] },
                { "properties": { "url": { "type": "string" } }, "required": ["url"] }
            ]
        }));
        assert!(valid(&s, json!({ "kind": "a", "path": "x" })));
        assert!(valid(&s, json!({ "url": "x" })));
        assert!(!valid(&s, json!({ "url": "x", "other": 1 })));
    }

    #[test]
    fn declared_openness_and_typeless_roots() {
        // A map the server declares as such stays a map.
        let s = closed(
            json!({ "type": "object", "properties": { "tags": { "type": "object", "additionalProperties": { "type": "string" } } } }),
        );
        assert!(valid(&s, json!({ "tags": { "any": "thing" } })));
        assert!(!valid(&s, json!({ "tags": { "any": 1 } })));
        // No type at the root: an object, closed.
        let s = closed(json!({ "properties": { "a": {} } }));
        assert!(!valid(&s, json!({ "b": 1 })));
        assert!(!valid(&s, json!("text")));
        // An empty schema takes no arguments at all.
        let s = closed(json!({ "type": "object" }));
        assert!(valid(&s, json!({})));
        assert!(!valid(&s, json!({ "x": 1 })));
    }

    #[test]
    fn hostile_schemas_are_refused() {
        let m = |v: Value| close(v.as_object().unwrap());
        assert!(
            m(json!({ "type": "array" }))
                .unwrap_err()
                .contains("not \"object\"")
        );
        assert!(
            m(json!({ "properties": { "a": { "$ref": "https://evil.example/s.json" } } }))
                .unwrap_err()
                .contains("$ref")
        );
        assert!(m(json!({ "properties": { "a": { "$ref": "file:///etc/passwd" } } })).is_err());
        let mut deep = json!({ "type": "string" });
        for _ in 0..40 {
            deep = json!({ "type": "object", "properties": { "a": deep } });
        }
        assert!(m(deep).unwrap_err().contains("deeper"));
        let big = json!({ "type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES) });
        assert!(m(big).unwrap_err().contains("bytes"));
    }
}
