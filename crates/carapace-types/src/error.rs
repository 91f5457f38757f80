use std::fmt;
use std::time::Duration;

/// A stage of the Gate pipeline; every failure names the stage it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Building principal, session, time and labels from trusted state.
    Envelope,
    /// Tool name to definition.
    Resolve,
    /// Arguments against the closed schema.
    Validate,
    /// Capability grants and rate limits.
    Authorize,
    /// Labels, effect class and rules.
    Policy,
    /// Asking the owner.
    Approve,
    /// Running the executor.
    Execute,
    /// Scrubbing and labelling the result.
    Sanitize,
    /// Appending to the audit log.
    Audit,
}

impl Stage {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Envelope => "envelope",
            Stage::Resolve => "resolve",
            Stage::Validate => "validate",
            Stage::Authorize => "authorize",
            Stage::Policy => "policy",
            Stage::Approve => "approve",
            Stage::Execute => "execute",
            Stage::Sanitize => "sanitize",
            Stage::Audit => "audit",
        }
    }
}

/// The closed set of failure codes a caller (and the model) can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No tool by that name is granted to this session.
    UnknownTool,
    /// Arguments do not match the tool's schema.
    ValidationFailed,
    /// The principal holds no grant for this tool.
    Unauthorized,
    /// Too many calls; see `retry_after`.
    RateLimited,
    /// Policy refused.
    PolicyDenied,
    /// The owner said no.
    ConfirmationDenied,
    /// The owner did not answer in time.
    ConfirmationTimeout,
    /// The executor ran past its deadline.
    ToolTimeout,
    /// The executor failed.
    ToolError,
    /// Something inside Carapace failed; details are in the daemon log only.
    Internal,
}

impl ErrorCode {
    /// The wire name, like `POLICY_DENIED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownTool => "UNKNOWN_TOOL",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PolicyDenied => "POLICY_DENIED",
            ErrorCode::ConfirmationDenied => "CONFIRMATION_DENIED",
            ErrorCode::ConfirmationTimeout => "CONFIRMATION_TIMEOUT",
            ErrorCode::ToolTimeout => "TOOL_TIMEOUT",
            ErrorCode::ToolError => "TOOL_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// A typed failure of a Gate call: what the caller and the model see. The message is
/// written for them and never carries an internal detail such as a host path or a
/// backtrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Where in the pipeline.
    pub stage: Stage,
    /// Words for the caller.
    pub message: String,
    /// Whether trying the same call again may succeed.
    pub retriable: bool,
    /// For `RATE_LIMITED`: when to try again.
    pub retry_after: Option<Duration>,
    /// For `VALIDATION_FAILED`: the JSON pointer of the offending field.
    pub field: Option<String>,
    /// For policy outcomes: the rule that decided.
    pub rule: Option<String>,
    /// Whether a blocked outbound message was kept in the dead-letter queue for the
    /// owner (its content is never part of the error).
    pub dead_letter: bool,
}

impl GateError {
    /// A failure with no extra fields; `retriable` follows from the code.
    pub fn new(code: ErrorCode, stage: Stage, message: impl Into<String>) -> GateError {
        let retriable = matches!(
            code,
            ErrorCode::RateLimited | ErrorCode::ConfirmationTimeout | ErrorCode::ToolTimeout
        );
        GateError {
            code,
            stage,
            message: message.into(),
            retriable,
            retry_after: None,
            field: None,
            rule: None,
            dead_letter: false,
        }
    }

    /// Adds the offending field.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> GateError {
        self.field = Some(field.into());
        self
    }

    /// Adds the deciding rule.
    #[must_use]
    pub fn with_rule(mut self, rule: impl Into<String>) -> GateError {
        self.rule = Some(rule.into());
        self
    }

    /// Adds the wait before a retry.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> GateError {
        self.retry_after = Some(after);
        self
    }

    /// Marks the error as one whose message was kept in the dead-letter queue.
    #[must_use]
    pub fn with_dead_letter(mut self) -> GateError {
        self.dead_letter = true;
        self
    }

    /// The error as the JSON object the model and API clients see:
    /// `{code, stage, message, retriable, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "code": self.code.as_str(),
            "stage": self.stage.as_str(),
            "message": self.message,
            "retriable": self.retriable,
        });
        if let Some(after) = self.retry_after {
            v["retry_after_ms"] = serde_json::json!(after.as_millis() as u64);
        }
        if let Some(field) = &self.field {
            v["field"] = serde_json::json!(field);
        }
        if let Some(rule) = &self.rule {
            v["rule"] = serde_json::json!(rule);
        }
        if self.dead_letter {
            v["dead_letter"] = serde_json::json!(true);
        }
        v
    }
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.code.as_str(),
            self.stage.as_str(),
            self.message
        )
    }
}

impl std::error::Error for GateError {}
