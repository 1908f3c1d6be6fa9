//! Errors as each wire format spells them: OpenAI's `{"error": {"message", "type", "param",
//! "code"}}` and Anthropic's `{"type": "error", "error": {"type", "message"}}`, so that the
//! official SDKs raise their own typed exceptions (AuthenticationError, RateLimitError...).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_policy::requests::Wire;
use serde_json::{json, Value};

#[derive(Debug)]
pub struct ApiError {
    pub wire: Wire,
    pub status: StatusCode,
    /// Bulkhead's own code (tenant_budget_exceeded, invalid_api_key, ...).
    pub code: &'static str,
    pub message: String,
    /// Extra fields for clients that act on them (limit, retry_after_ms).
    pub details: Option<Value>,
    pub retry_after_secs: Option<u64>,
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(
        wire: Wire,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            wire,
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
            request_id: None,
        }
    }

    pub fn bad_request(wire: Wire, message: impl Into<String>) -> Self {
        Self::new(wire, StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unauthorized(wire: Wire, message: impl Into<String>) -> Self {
        Self::new(wire, StatusCode::UNAUTHORIZED, "invalid_api_key", message)
    }

    pub fn unavailable(wire: Wire, message: impl Into<String>) -> Self {
        Self::new(
            wire,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// The error type each SDK maps to its exception class.
    fn error_type(&self) -> &'static str {
        match (self.wire, self.status.as_u16()) {
            (Wire::Anthropic, 400 | 422) => "invalid_request_error",
            (Wire::Anthropic, 401) => "authentication_error",
            (Wire::Anthropic, 403) => "permission_error",
            (Wire::Anthropic, 404) => "not_found_error",
            (Wire::Anthropic, 413) => "request_too_large",
            (Wire::Anthropic, 429) => "rate_limit_error",
            (Wire::Anthropic, 503 | 529) => "overloaded_error",
            (Wire::Anthropic, _) => "api_error",
            (Wire::OpenAi, 400 | 404 | 413 | 422) => "invalid_request_error",
            (Wire::OpenAi, 401) => "authentication_error",
            (Wire::OpenAi, 403) => "permission_error",
            (Wire::OpenAi, 429) => self.code,
            (Wire::OpenAi, _) => "server_error",
        }
    }

    pub fn body(&self) -> Value {
        let mut error = json!({"type": self.error_type(), "message": self.message});
        if let Some(Value::Object(details)) = &self.details {
            for (k, v) in details {
                error[k] = v.clone();
            }
        }
        match self.wire {
            Wire::OpenAi => {
                error["code"] = json!(self.code);
                error["param"] = Value::Null;
                json!({"error": error})
            }
            Wire::Anthropic => {
                error["code"] = json!(self.code);
                json!({"type": "error", "error": error})
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(id) = self
            .request_id
            .and_then(|id| HeaderValue::from_str(&id).ok())
        {
            headers.insert("x-bulkhead-request-id", id);
        }
        response
    }
}
