//! The JSON shapes of the Gemini API (`generateContent`, `streamGenerateContent`,
//! `models.list`). Decoding is lenient: optional fields may be missing and unknown ones
//! are ignored.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{ChatMessage, ChatRequest, ProviderError, ToolCallRequest, Usage};

/// The schema keys Gemini accepts in function parameters (its `Schema` object, a subset
/// of OpenAPI 3.0). Anything else (`additionalProperties`, `$schema`, `$ref`, `oneOf`,
/// `const`, ...) makes the API reject the whole request, so it is dropped.
const SCHEMA_KEYS: &[&str] = &[
    "anyOf",
    "default",
    "description",
    "enum",
    "example",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "nullable",
    "pattern",
    "properties",
    "propertyOrdering",
    "required",
    "title",
    "type",
];

/// The prefix of the tool call ids this client makes up when Gemini sends none; such ids
/// are never sent back to Gemini.
pub(super) const LOCAL_ID_PREFIX: &str = "call_";

/// Whether `id` is one this client made up (`call_<n>`), not one Gemini issued.
fn is_local_id(id: &str) -> bool {
    id.strip_prefix(LOCAL_ID_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The request body of `generateContent` and `streamGenerateContent`.
///
/// Tool results are matched to their call by function name (Gemini's rule), found through
/// the `tool_call_id` of the assistant message that made the call; a result whose id no
/// earlier call had is refused. Ids Gemini issued are sent back too. A tool result goes
/// out as `{"content": <text>}`, the text exactly as the Gate released it. Arguments that
/// are not a JSON object go back to Gemini as `{}`: its `args` must be an object.
pub(super) fn encode_request(req: &ChatRequest) -> Result<Value, ProviderError> {
    let mut system_parts = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut push = |role: &'static str, parts: Vec<Value>| {
        if parts.is_empty() {
            return;
        }
        match contents.last_mut() {
            // Gemini wants turns to alternate; consecutive same-role turns merge.
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    };
    for msg in &req.messages {
        match msg {
            ChatMessage::System { content } => system_parts.push(json!({ "text": content })),
            ChatMessage::User { content } => push("user", vec![json!({ "text": content })]),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut parts = Vec::new();
                if let Some(text) = content.as_deref().filter(|t| !t.is_empty()) {
                    parts.push(json!({ "text": text }));
                }
                for call in tool_calls {
                    names.insert(call.id.as_str(), call.name.as_str());
                    let args = match serde_json::from_str::<Value>(&call.arguments) {
                        Ok(Value::Object(map)) => Value::Object(map),
                        _ => json!({}),
                    };
                    let mut function_call = json!({ "name": call.name, "args": args });
                    if !is_local_id(&call.id) {
                        function_call["id"] = json!(call.id);
                    }
                    let mut part = json!({ "functionCall": function_call });
                    if let Some(signature) = &call.signature {
                        part["thoughtSignature"] = json!(signature);
                    }
                    parts.push(part);
                }
                push("model", parts);
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => {
                let name = names.get(tool_call_id.as_str()).ok_or_else(|| {
                    ProviderError::Protocol(format!(
                        "the tool result for call {tool_call_id:?} answers no earlier tool call"
                    ))
                })?;
                let mut function_response =
                    json!({ "name": name, "response": { "content": content } });
                if !is_local_id(tool_call_id) {
                    function_response["id"] = json!(tool_call_id);
                }
                push(
                    "user",
                    vec![json!({ "functionResponse": function_response })],
                );
            }
        }
    }
    let mut body = Map::new();
    body.insert(
        "contents".into(),
        contents
            .into_iter()
            .map(|(role, parts)| json!({ "role": role, "parts": parts }))
            .collect(),
    );
    if !system_parts.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system_parts }));
    }
    if !req.tools.is_empty() {
        let declarations: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                let mut decl = json!({ "name": t.name, "description": t.description });
                let parameters = clean_schema(&t.parameters);
                // Gemini refuses an object schema without properties; a tool that takes
                // no arguments declares no parameters.
                let has_properties = parameters
                    .get("properties")
                    .and_then(Value::as_object)
                    .is_some_and(|p| !p.is_empty());
                if has_properties {
                    decl["parameters"] = parameters;
                }
                decl
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    let mut generation = Map::new();
    if let Some(t) = req.temperature.filter(|t| t.is_finite()) {
        // Through the shortest decimal form, so 0.2f32 goes out as 0.2.
        if let Some(n) = t
            .to_string()
            .parse()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            generation.insert("temperature".into(), Value::Number(n));
        }
    }
    if let Some(max) = req.max_tokens {
        generation.insert("maxOutputTokens".into(), json!(max));
    }
    if !generation.is_empty() {
        body.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(Value::Object(body))
}

/// A JSON Schema cut down to what Gemini's `Schema` accepts, at every level. A list of
/// types (`["string", "null"]`) becomes one type with `nullable`, or an `anyOf`.
pub(super) fn clean_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return json!({});
    };
    let mut out = Map::new();
    for (key, value) in map {
        if !SCHEMA_KEYS.contains(&key.as_str()) {
            continue;
        }
        let value = match (key.as_str(), value) {
            ("properties", Value::Object(props)) => Value::Object(
                props
                    .iter()
                    .map(|(name, s)| (name.clone(), clean_schema(s)))
                    .collect(),
            ),
            ("properties", _) => continue,
            ("items", s) => clean_schema(s),
            ("anyOf", Value::Array(options)) => options.iter().map(clean_schema).collect(),
            ("anyOf", _) => continue,
            ("type", Value::Array(types)) => {
                let mut types: Vec<&Value> = types.iter().collect();
                let before = types.len();
                types.retain(|t| t.as_str() != Some("null"));
                if types.len() < before {
                    out.insert("nullable".into(), json!(true));
                }
                match types.as_slice() {
                    [] => continue,
                    [one] => (*one).clone(),
                    many => {
                        out.insert(
                            "anyOf".into(),
                            many.iter().map(|t| json!({ "type": t })).collect(),
                        );
                        continue;
                    }
                }
            }
            _ => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    Value::Object(out)
}

/// One `GenerateContentResponse`: a whole answer, or one chunk of a stream.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateResponse {
    pub(super) candidates: Option<Vec<Candidate>>,
    pub(super) prompt_feedback: Option<PromptFeedback>,
    pub(super) usage_metadata: Option<UsageMetadata>,
    pub(super) model_version: Option<String>,
    /// Sent instead of a chunk when the stream fails midway.
    pub(super) error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate {
    pub(super) index: Option<u32>,
    pub(super) content: Option<Content>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Content {
    pub(super) parts: Option<Vec<Part>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Part {
    pub(super) text: Option<String>,
    /// A thought summary, not part of the answer.
    pub(super) thought: Option<bool>,
    pub(super) function_call: Option<FunctionCall>,
    /// The opaque signature of the model's thinking that led to this part; Gemini wants
    /// it back on the same part in later turns.
    pub(super) thought_signature: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct FunctionCall {
    pub(super) id: Option<String>,
    pub(super) name: Option<String>,
    pub(super) args: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    pub(super) block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
}

impl UsageMetadata {
    /// Thinking tokens count as completion tokens: they are generated and billed as output.
    pub(super) fn into_usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_token_count.unwrap_or(0),
            completion_tokens: self.candidates_token_count.unwrap_or(0)
                + self.thoughts_token_count.unwrap_or(0),
        }
    }
}

/// Our `finish_reason` for Gemini's: `STOP` is `stop`, or `tool_calls` when the turn
/// calls tools; `MAX_TOKENS` is `length`; any other (`SAFETY`, `RECITATION`,
/// `MALFORMED_FUNCTION_CALL`, ...) is lowercased.
pub(super) fn finish_reason(gemini: &str, has_calls: bool) -> String {
    match gemini {
        "STOP" if has_calls => "tool_calls".into(),
        "STOP" => "stop".into(),
        "MAX_TOKENS" => "length".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// A tool call as it arrived: id if Gemini sent one, name, arguments as JSON text, and
/// the part's thought signature.
pub(super) struct Call {
    pub(super) id: Option<String>,
    pub(super) name: String,
    pub(super) arguments: String,
    pub(super) signature: Option<String>,
}

pub(super) fn decode_call(call: FunctionCall, signature: Option<String>) -> Call {
    let arguments = match call.args {
        None | Some(Value::Null) => "{}".to_string(),
        Some(args) => args.to_string(),
    };
    Call {
        id: call.id.filter(|id| !id.is_empty()),
        name: call.name.unwrap_or_default(),
        arguments,
        signature: signature.filter(|s| !s.is_empty()),
    }
}

/// A tool call with its final id.
pub(super) fn tool_call(
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
) -> ToolCallRequest {
    ToolCallRequest {
        id,
        name,
        arguments,
        signature,
    }
}

/// The message of an error body `{"error":{"code","message","status"}}` (also inside a
/// one-element array, as the JSON-array stream sends it), as `STATUS: message`.
pub(super) fn error_message(body: &Value) -> Option<String> {
    let error = match body {
        Value::Array(items) => items.first()?.get("error")?,
        other => other.get("error")?,
    };
    let message = match error {
        Value::String(s) => return Some(s.clone()),
        e => e.get("message").and_then(Value::as_str),
    };
    let status = error.get("status").and_then(Value::as_str);
    match (status, message) {
        (Some(s), Some(m)) => Some(format!("{s}: {m}")),
        (None, Some(m)) => Some(m.to_string()),
        (Some(s), None) => Some(s.to_string()),
        (None, None) => None,
    }
}

/// The wait a `google.rpc.RetryInfo` detail of an error body asks for (`"retryDelay":
/// "37s"`), used when there is no `Retry-After` header.
pub(super) fn retry_delay(body: &Value) -> Option<Duration> {
    let details = body.pointer("/error/details")?.as_array()?;
    details.iter().find_map(|d| {
        let delay = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
        let secs: f64 = delay.parse().ok()?;
        (0.0..86_400.0 * 365.0)
            .contains(&secs)
            .then(|| Duration::from_secs_f64(secs))
    })
}

/// The model names of `GET /v1beta/models`, without their `models/` prefix.
pub(super) fn decode_models(body: &Value) -> Result<Vec<String>, ProviderError> {
    let models = body
        .get("models")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Protocol("the model list has no models array".into()))?;
    Ok(models
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .map(|n| n.strip_prefix("models/").unwrap_or(n).to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use expect_test::expect;
    use serde_json::json;

    use super::{clean_schema, error_message, is_local_id, retry_delay};

    #[test]
    fn schemas_lose_what_gemini_rejects_at_every_level() {
        let schema = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "path": { "type": "string", "description": "A path", "minLength": 1 },
                "mode": { "type": ["string", "null"], "enum": ["r", "w"], "const": "r" },
                "either": { "type": ["string", "integer"] },
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": { "type": "string" },
                        "properties": { "k": { "type": "integer", "exclusiveMinimum": 0 } },
                        "$ref": "#/definitions/x"
                    }
                },
                "alt": { "anyOf": [{ "type": "string", "examples": ["a"] }, { "type": "number" }] }
            },
            "required": ["path"],
            "definitions": { "x": {} }
        });
        let cleaned =
            serde_json::to_string(&carapace_testkit::sorted_keys(&clean_schema(&schema))).unwrap();
        expect![[r#"{"properties":{"alt":{"anyOf":[{"type":"string"},{"type":"number"}]},"either":{"anyOf":[{"type":"string"},{"type":"integer"}]},"items":{"items":{"properties":{"k":{"type":"integer"}},"type":"object"},"type":"array"},"mode":{"enum":["r","w"],"nullable":true,"type":"string"},"path":{"description":"A path","minLength":1,"type":"string"}},"required":["path"],"type":"object"}"#]]
        .assert_eq(&cleaned);
    }

    #[test]
    fn error_bodies_give_status_and_message() {
        let body = json!({ "error": { "code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED" } });
        assert_eq!(
            error_message(&body).as_deref(),
            Some("RESOURCE_EXHAUSTED: Quota exceeded")
        );
        assert_eq!(
            error_message(&json!([body])).as_deref(),
            Some("RESOURCE_EXHAUSTED: Quota exceeded")
        );
        assert_eq!(error_message(&json!({ "nope": 1 })), None);
    }

    #[test]
    fn retry_info_gives_the_wait() {
        let body = json!({ "error": { "details": [
            { "@type": "type.googleapis.com/google.rpc.QuotaFailure" },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s" }
        ] } });
        assert_eq!(retry_delay(&body), Some(Duration::from_secs(37)));
        let half = json!({ "error": { "details": [{ "retryDelay": "0.5s" }] } });
        assert_eq!(retry_delay(&half), Some(Duration::from_millis(500)));
        assert_eq!(
            retry_delay(&json!({ "error": { "details": [{ "retryDelay": "-1s" }] } })),
            None
        );
        assert_eq!(retry_delay(&json!({ "error": {} })), None);
    }

    #[test]
    fn only_made_up_ids_are_local() {
        assert!(is_local_id("call_12"));
        assert!(!is_local_id("call_"));
        assert!(!is_local_id("call_x1"));
        assert!(!is_local_id("a8f2k1"));
    }
}
