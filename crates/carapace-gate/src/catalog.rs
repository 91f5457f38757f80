//! Tool definitions: name, closed schema, effect class, executor.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use carapace_fs::Workspace;
use carapace_policy::Destination;
use carapace_store::Store;
use carapace_types::{EffectClass, ErrorCode, GateError, Label, SessionId, Source, Stage};
use carapace_vault::Redaction;
use serde_json::Value;

/// A tool as offered to the model: name, description and the JSON Schema of its
/// arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The tool name.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// Closed JSON Schema of the arguments.
    pub parameters: Value,
    /// The effect class (declared, or overridden in config).
    pub effect: EffectClass,
    /// The least label of its results (declared, or overridden in config).
    pub result_floor: Label,
}

/// What an executor may use. Built by the Gate after every check passed.
pub(crate) struct ExecCtx {
    pub workspace: Arc<Workspace>,
    pub store: Arc<Store>,
    pub session: SessionId,
    pub session_label: Label,
    pub now_ms: i64,
    /// For executors that must scrub before they cut (a secret cut in two is no longer
    /// recognisable by the sanitize stage).
    pub scrubber: std::sync::Arc<crate::Scrubber>,
    /// Credentials released for this call (network tools only).
    pub injections: Vec<carapace_egress::Injection>,
    /// The session's own host list, which narrows the network tools' (None: no list).
    pub egress_hosts: Option<Vec<String>>,
}

/// An executor's own result, before sanitising.
pub(crate) struct RawResult {
    pub content: Value,
    pub label: Label,
    pub source: Source,
    /// What the executor already scrubbed itself (before cutting text to a limit, where
    /// a secret cut in two would no longer be recognised); the Gate reports these with
    /// its own finds.
    pub redactions: Vec<Redaction>,
}

/// An executor failure, worded for the model (no host paths, no internals).
#[derive(Debug)]
pub(crate) struct ToolFailure(pub String);

pub(crate) type ExecFuture = Pin<Box<dyn Future<Output = Result<RawResult, ToolFailure>> + Send>>;
pub(crate) type ExecFn = Arc<dyn Fn(ExecCtx, Value) -> ExecFuture + Send + Sync>;

/// Extracts where a call reaches from its validated arguments; paths are resolved by the
/// same check the file tools use.
pub(crate) type DestFn = Arc<dyn Fn(&Value, &Workspace) -> Vec<Destination> + Send + Sync>;

pub(crate) struct ToolDef {
    /// Built-in names are static; MCP tools' (`SERVER__TOOL`) are made at run time.
    pub name: Cow<'static, str>,
    pub description: Cow<'static, str>,
    pub schema: Value,
    pub effect: EffectClass,
    /// The least label of every result (joined with the executor's own label).
    pub result_floor: Label,
    /// Where a call reaches (hosts, paths, contacts), read from its arguments.
    pub destinations: DestFn,
    /// Where its results come from when that is known before the call (`web` for the
    /// network tools); recorded as seen as soon as the call starts.
    pub floor_source: Option<Source>,
    pub exec: ExecFn,
    /// The executor's deadline when it is not the Gate's `tool_timeout` (a tool that
    /// enforces its own, longer deadline).
    pub timeout: Option<std::time::Duration>,
    /// Argument fields the audit log shows only as digests.
    pub digest_only: &'static [&'static str],
    validator: jsonschema::Validator,
}

impl ToolDef {
    /// Builds a definition. Panics if the schema does not compile or is not closed:
    /// both are programming errors caught by the catalog tests.
    pub fn new(
        name: &'static str,
        description: &'static str,
        effect: EffectClass,
        schema: Value,
        exec: ExecFn,
    ) -> ToolDef {
        assert!(
            schema_is_closed(&schema),
            "schema of {name} accepts unknown fields"
        );
        ToolDef::dynamic(name.into(), description.into(), effect, schema, exec)
            .unwrap_or_else(|e| panic!("schema of {name} does not compile: {e}"))
    }

    /// A definition made at run time (an MCP server's tool), whose schema the caller
    /// closed; a schema that does not compile is an error, not a panic.
    pub fn dynamic(
        name: Cow<'static, str>,
        description: Cow<'static, str>,
        effect: EffectClass,
        schema: Value,
        exec: ExecFn,
    ) -> Result<ToolDef, String> {
        let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(ToolDef {
            name,
            description,
            schema,
            effect,
            result_floor: Label::TRUSTED_PUBLIC,
            destinations: Arc::new(|_: &Value, _: &Workspace| Vec::new()),
            floor_source: None,
            exec,
            timeout: None,
            digest_only: &[],
            validator,
        })
    }

    /// Declares how the tool's destinations are read from its arguments.
    pub fn with_destinations(
        mut self,
        f: impl Fn(&Value, &Workspace) -> Vec<Destination> + Send + Sync + 'static,
    ) -> ToolDef {
        self.destinations = Arc::new(f);
        self
    }

    /// Declares argument fields the audit log shows only as digests.
    pub fn with_digest_only(mut self, fields: &'static [&'static str]) -> ToolDef {
        self.digest_only = fields;
        self
    }

    /// Declares the least label of the tool's results and, when it is known before the
    /// call, where they come from.
    pub fn with_result(mut self, floor: Label, source: Option<Source>) -> ToolDef {
        self.result_floor = floor;
        self.floor_source = source;
        self
    }

    /// Checks arguments against the closed schema; the error names the first bad field.
    pub fn validate(&self, args: &Value) -> Result<(), GateError> {
        let Some(err) = self.validator.iter_errors(args).next() else {
            return Ok(());
        };
        let pointer = err.instance_path().to_string();
        let field = if pointer.is_empty() {
            "/".to_string()
        } else {
            pointer
        };
        // The validator's message quotes the offending value; cap it so a huge
        // argument is not echoed back whole.
        let mut message = err.to_string();
        if message.len() > 300 {
            let mut end = 300;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        Err(GateError::new(
            ErrorCode::ValidationFailed,
            Stage::Validate,
            format!("invalid arguments for {} at {field}: {message}", self.name),
        )
        .with_field(field))
    }
}

/// True when every object schema in `schema` forbids unknown properties.
pub(crate) fn schema_is_closed(schema: &Value) -> bool {
    let Value::Object(map) = schema else {
        return true;
    };
    // Closed: no unknown field, or (a map keyed by name) every value held to a schema
    // that is itself closed.
    if map.get("type") == Some(&Value::String("object".into()))
        && !matches!(
            map.get("additionalProperties"),
            Some(Value::Bool(false)) | Some(Value::Object(_))
        )
    {
        return false;
    }
    map.values().all(|v| match v {
        Value::Object(_) => schema_is_closed(v),
        Value::Array(items) => items.iter().all(schema_is_closed),
        _ => true,
    })
}

/// The set of tools the Gate can resolve.
#[derive(Default)]
pub(crate) struct Catalog {
    tools: Vec<Arc<ToolDef>>,
}

impl Catalog {
    pub fn add(&mut self, tool: ToolDef) {
        assert!(
            self.get(&tool.name).is_none(),
            "tool {} defined twice",
            tool.name
        );
        self.tools.push(Arc::new(tool));
    }

    pub fn retain(&mut self, mut granted: impl FnMut(&str) -> bool) {
        self.tools.retain(|t| granted(&t.name));
    }

    /// Only while the Gate is being built (nothing else holds the definitions yet).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut ToolDef> {
        self.tools
            .iter_mut()
            .find(|t| t.name == name)
            .and_then(Arc::get_mut)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ToolDef>> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| spec_of(t)).collect()
    }
}

/// A workspace path as a destination: the path the file tools will use, from the same
/// check (`Workspace::check`: made relative, `.` and empty parts dropped, absolute paths
/// under the root made relative), so policy sees exactly what the executor touches. A
/// path the check refuses (`..`, outside the root) names a place no pattern of yours
/// is likely to hold; the executor refuses it anyway.
pub(crate) fn path_destination(raw: &str, workspace: &Workspace) -> Destination {
    match workspace.check(raw) {
        Ok(p) => Destination::path(p.as_str()),
        Err(_) => Destination::path("(refused path)"),
    }
}

/// The destinations of a tool whose `path` argument names a workspace path (the root
/// when absent).
pub(crate) fn path_arg(args: &Value, workspace: &Workspace) -> Vec<Destination> {
    vec![path_destination(
        args.get("path").and_then(Value::as_str).unwrap_or("."),
        workspace,
    )]
}

/// The destinations of a tool whose `url` argument names a host. A URL that does not
/// parse names a place no allowlist pattern matches (hosts have no parentheses), so it
/// cannot slip past as "nowhere".
pub(crate) fn url_arg(args: &Value, _: &Workspace) -> Vec<Destination> {
    let raw = args.get("url").and_then(Value::as_str).unwrap_or_default();
    match url::Url::parse(raw)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    {
        Some(host) => vec![Destination::host(
            host.trim_end_matches('.').trim_matches(['[', ']']),
        )],
        // Not the raw text: destinations reach the audit log's summary and a model judging
        // plain-English rules, which must never see argument text.
        None => vec![Destination::host("(unparsable url)")],
    }
}

/// A definition as offered to the model.
pub(crate) fn spec_of(t: &ToolDef) -> ToolSpec {
    ToolSpec {
        name: t.name.to_string(),
        description: t.description.to_string(),
        parameters: t.schema.clone(),
        effect: t.effect,
        result_floor: t.result_floor,
    }
}

#[cfg(test)]
mod dest_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn destinations_are_normalised_before_policy_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let ws = Workspace::open(dir.path()).unwrap();
        let p = |s: &str| path_destination(s, &ws).to_string();
        assert_eq!(p("./notes//a.md"), "path:notes/a.md");
        assert_eq!(p(""), "path:.");
        // What the file tools would use, so a deny on private/* cannot be walked around.
        let abs = format!("{}/private/diary.md", dir.path().display());
        assert_eq!(p(&abs), "path:private/diary.md");
        assert_eq!(p("private/a\\..\\..\\x.md"), "path:private/a\\..\\..\\x.md");
        assert_eq!(p("notes/../private.md"), "path:(refused path)");
        assert_eq!(p("../../etc/passwd"), "path:(refused path)");
        assert_eq!(p("/etc/passwd"), "path:(refused path)");
        let u = |s: &str| url_arg(&json!({ "url": s }), &ws)[0].to_string();
        assert_eq!(u("https://API.Example.com./x?y"), "host:api.example.com");
        assert_eq!(u("https://user:pw@example.com:8443/"), "host:example.com");
        assert_eq!(u("http://[::1]:80/"), "host:::1");
        assert_eq!(u("http://0x7f.1/"), "host:127.0.0.1");
        assert_eq!(u("not a url"), "host:(unparsable url)");
        // The host is the one the egress client will connect to, not a look-alike.
        assert_eq!(u("https://example.com@evil.net/"), "host:evil.net");
        assert_eq!(u("https://evil.net#@example.com"), "host:evil.net");
        assert_eq!(u("https://evil.net\\@example.com/"), "host:evil.net");
        assert_eq!(
            u("https://example.com.evil.net/"),
            "host:example.com.evil.net"
        );
        assert_eq!(u("https://xn--exmple-cua.com/"), "host:xn--exmple-cua.com");
        assert_eq!(u("https://exämple.com/"), "host:xn--exmple-cua.com");
    }
}
