//! The Gate's tools on the wire, as the agent socket (`tools.list`, `tools.call`) and the
//! API (`GET /api/sessions/{id}/tools`, `POST /api/sessions/{id}/tools/call`) both answer:
//! one shape for the list and one for a call's result, so a client of either door reads
//! the same JSON. A call here is one `Gate::call`; nothing is decided in this module.

use carapace_gate::{CallRequest, Gate, RawArgs};
use carapace_types::{GateError, Principal, SessionId};
use serde_json::{Value, json};

/// `{"tools": [{name, description, input_schema, effect}]}`: every tool the Gate offers
/// a session, with its closed schema and effect class.
pub(crate) fn list(gate: &Gate) -> Value {
    let tools: Vec<Value> = gate
        .tool_specs()
        .into_iter()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "input_schema": t.parameters,
                "effect": t.effect.as_str(),
            })
        })
        .collect();
    json!({ "tools": tools })
}

/// One Gate call of `tool` in `session` as `principal`; the result as
/// `{content, label, source}`, or the Gate's typed error.
pub(crate) async fn call(
    gate: &Gate,
    principal: &Principal,
    session: &SessionId,
    call_id: &str,
    tool: &str,
    args: &Value,
) -> Result<Value, GateError> {
    let out = gate
        .call(CallRequest {
            principal,
            session,
            call_id,
            tool,
            args: RawArgs::Json(args),
        })
        .await?;
    Ok(json!({
        "content": out.content,
        "label": out.label.to_string(),
        "source": out.source.as_string(),
    }))
}
