//! Errors: [`ApiError`] is what an HTTP client sees, [`ControlError`] is what
//! the library returns to the binary.

use std::fmt;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Failures of the control plane as a library (start-up, storage, bus).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("subscribing to {subject} on the message bus: {source}")]
    Subscribe {
        subject: &'static str,
        source: async_nats::SubscribeError,
    },
    #[error("message bus: {0}")]
    Bus(String),
}

/// An HTTP error with a message meant for the user, answered as
/// `{"error": "<message>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// A failure the user cannot fix. The cause goes to the server log, once,
    /// under a short reference the user can quote; the user sees only that.
    pub fn internal(cause: impl fmt::Display) -> Self {
        let reference = format!("{:08x}", rand::random::<u32>());
        tracing::error!(reference = %reference, error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error (reference {reference}); the details are in the server log"),
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(format_args!("database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let res = e.into_response();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_answer_a_json_body_with_their_status() {
        let (status, body) = body_of(ApiError::conflict("port 9001 is in use")).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body, serde_json::json!({"error": "port 9001 is in use"}));
    }

    #[tokio::test]
    async fn internal_errors_hide_the_cause_behind_a_reference() {
        let (status, body) = body_of(ApiError::internal("disk I/O error at /secret/path")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let text = body["error"].as_str().unwrap();
        assert!(text.contains("reference"), "{text}");
        assert!(!text.contains("/secret/path"), "{text}");
    }
}
