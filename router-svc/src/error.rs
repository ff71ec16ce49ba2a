//! The one error type of router-svc, and the one place it becomes an HTTP response: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` with the status a client expects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config field `{field}`: {message}")]
    Config { field: String, message: String },

    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },

    #[error("The request contains PII ({0}) that no model it could go to may receive.")]
    PiiNotAllowed(String),

    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),

    #[error("The request body did not arrive within {0} ms.")]
    BodyTimeout(u64),

    #[error("Request body is larger than the limit of {0} bytes.")]
    PayloadTooLarge(usize),

    #[error("Too many requests in flight (limit {0}); retry shortly.")]
    Overloaded(usize),

    #[error("Could not reach a backend for model `{model}`: {detail}")]
    BadGateway { model: String, detail: String },

    #[error("No backend endpoint is available for model `{0}`.")]
    Unavailable(String),

    #[error("The backend for model `{model}` did not answer in time ({detail}).")]
    GatewayTimeout { model: String, detail: String },

    /// true: a key was given but is unknown or revoked; false: none was given.
    #[error("{}", if *.0 { "Incorrect API key provided (unknown or revoked)." } else { "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`." })]
    InvalidApiKey(bool),

    #[error("This API key may not use the model `{0}`.")]
    ModelNotAllowed(String),

    #[error("Rate limit of {} per minute reached for this API key; retry in {retry_ms} ms.", if *.tokens { "tokens" } else { "requests" })]
    RateLimited { tokens: bool, retry_ms: u64 },

    #[error("This API key's daily budget of {budget} USD is spent; it renews at 00:00 UTC.")]
    BudgetExceeded { budget: f64 },

    #[error("API keys cannot be checked right now (the key store is unreachable); retry shortly.")]
    AuthUnavailable,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Config { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Error::BadRequest { .. } | Error::PiiNotAllowed(_) => StatusCode::BAD_REQUEST,
            Error::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::InvalidApiKey(_) => StatusCode::UNAUTHORIZED,
            Error::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } | Error::BudgetExceeded { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's `type` and `code` fields.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Error::Config { .. } => ("server_error", "config_error"),
            Error::BadRequest { .. } => ("invalid_request_error", "invalid_request"),
            Error::PiiNotAllowed(_) => ("invalid_request_error", "pii_not_allowed"),
            Error::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            Error::BodyTimeout(_) => ("invalid_request_error", "request_timeout"),
            Error::PayloadTooLarge(_) => ("invalid_request_error", "payload_too_large"),
            Error::Overloaded(_) => ("rate_limit_error", "rate_limit_exceeded"),
            Error::BadGateway { .. } => ("server_error", "upstream_error"),
            Error::Unavailable(_) => ("server_error", "upstream_unavailable"),
            Error::GatewayTimeout { .. } => ("server_error", "upstream_timeout"),
            Error::InvalidApiKey(_) => ("invalid_request_error", "invalid_api_key"),
            Error::ModelNotAllowed(_) => ("invalid_request_error", "model_not_allowed"),
            Error::RateLimited { tokens: false, .. } => ("requests", "rate_limit_exceeded"),
            Error::RateLimited { tokens: true, .. } => ("tokens", "rate_limit_exceeded"),
            Error::BudgetExceeded { .. } => ("insufficient_quota", "budget_exceeded"),
            Error::AuthUnavailable => ("server_error", "auth_unavailable"),
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Error::BadRequest { param, .. } => *param,
            Error::ModelNotFound(_) | Error::ModelNotAllowed(_) => Some("model"),
            _ => None,
        }
    }

    /// Short label for metrics.
    pub fn code(&self) -> &'static str {
        self.kind().1
    }
}

/// The OpenAI error body.
pub fn body(message: &str, kind: &str, param: Option<&str>, code: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind();
        let mut resp = (
            self.status(),
            Json(body(&self.to_string(), kind, self.param(), code)),
        )
            .into_response();
        let retry_after = match &self {
            Error::Overloaded(_) | Error::Unavailable(_) | Error::AuthUnavailable => Some(1),
            Error::RateLimited { retry_ms, .. } => Some(retry_ms.div_ceil(1000).max(1)),
            Error::BudgetExceeded { .. } => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                Some(86_400 - now % 86_400)
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_use_openai_shape_and_status() {
        let cases = [
            (Error::bad_request("no messages", Some("messages")), 400),
            (Error::ModelNotFound("gpt-9".into()), 404),
            (Error::PiiNotAllowed("US_SSN".into()), 400),
            (Error::PayloadTooLarge(10), 413),
            (Error::BodyTimeout(10), 408),
            (Error::Overloaded(5), 429),
            (
                Error::BadGateway {
                    model: "m".into(),
                    detail: "refused".into(),
                },
                502,
            ),
            (Error::Unavailable("m".into()), 503),
            (
                Error::GatewayTimeout {
                    model: "m".into(),
                    detail: "first byte".into(),
                },
                504,
            ),
            (Error::InvalidApiKey(false), 401),
            (Error::InvalidApiKey(true), 401),
            (Error::ModelNotAllowed("big".into()), 403),
            (
                Error::RateLimited {
                    tokens: true,
                    retry_ms: 1500,
                },
                429,
            ),
            (Error::BudgetExceeded { budget: 5.0 }, 429),
            (Error::AuthUnavailable, 503),
        ];
        for (err, status) in cases {
            let resp = err.into_response();
            assert_eq!(resp.status().as_u16(), status);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let e = &v["error"];
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(e["type"].is_string() && e["code"].is_string());
            assert!(e.get("param").is_some());
        }
    }
}
