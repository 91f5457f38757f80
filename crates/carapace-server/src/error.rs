//! Typed API errors: the client gets a code and a message meant for it; the detail of
//! an internal failure goes to the daemon log only.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error as a client sees it: `{"error": {"code", "message", "type"}}`, which is also
/// the shape OpenAI clients parse.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or wrong bearer token; it is in server.token in the data directory",
        )
    }

    pub(crate) fn not_found(message: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub(crate) fn no_provider(hint: &str) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NO_PROVIDER", hint)
    }

    pub(crate) fn model(e: &dyn std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::BAD_GATEWAY, "MODEL_ERROR", e.to_string())
    }

    /// Logs the detail and answers with a generic message.
    pub(crate) fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error answering a request");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error; see the daemon log",
        )
    }

    /// The stable code, like `BAD_REQUEST`.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<carapace_types::GateError> for ApiError {
    fn from(e: carapace_types::GateError) -> ApiError {
        match e.code {
            carapace_types::ErrorCode::Unauthorized => ApiError::not_found("no such session"),
            carapace_types::ErrorCode::Internal => ApiError::internal(&e.message),
            _ => ApiError::bad_request(e.message),
        }
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"code", "message", "type"}}`.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "type": self.code.to_ascii_lowercase(),
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::BytesRejection(b) => ApiError::from(b),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "BAD_REQUEST",
                "expected `Content-Type: application/json`",
            ),
            // axum's text names the field and the problem (unknown field, wrong type,
            // syntax error at line:column) and nothing internal.
            other => ApiError::bad_request(other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "request body is too large",
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    }
}
