//! The API's errors: a code every client can branch on, and a message that never carries SQL
//! or internals (those go to the log).

use async_graphql::ErrorExtensions;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commands::CommandError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    InvalidInput,
    RateLimited,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::Conflict => "CONFLICT",
            Code::InvalidInput => "INVALID_INPUT",
            Code::RateLimited => "RATE_LIMITED",
            Code::Internal => "INTERNAL",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict => StatusCode::CONFLICT,
            Code::InvalidInput => StatusCode::BAD_REQUEST,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidInput, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
    pub fn unauthenticated() -> Self {
        Self::new(
            Code::Unauthenticated,
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
    }
    /// Something failed inside: logged in full, answered without details.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "api: internal error");
        Self::new(Code::Internal, "internal error")
    }

    /// The GraphQL error document of a request refused before it ran.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "errors": [{ "message": self.message, "extensions": { "code": self.code.as_str() } }]
        })
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<commands::StoreError> for ApiError {
    fn from(e: commands::StoreError) -> Self {
        match e {
            commands::StoreError::Conflict { .. } => ApiError::new(Code::Conflict, "the stream changed; try again"),
            commands::StoreError::IdempotencyMismatch(_) => ApiError::new(
                Code::Conflict,
                "this idempotency key was already used for a different request",
            ),
            other => ApiError::internal(other),
        }
    }
}

impl<R: std::error::Error> From<CommandError<R>> for ApiError {
    fn from(e: CommandError<R>) -> Self {
        match e {
            // The decider's reason is meant for people: it names the rule, not the internals.
            CommandError::Rejected(reason) => ApiError::new(Code::Conflict, format!("rejected: {reason}")),
            CommandError::Conflict => ApiError::new(Code::Conflict, "the stream kept changing; try again"),
            CommandError::Store(e) => e.into(),
            CommandError::Corrupt(e) => ApiError::internal(e),
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.message.clone()).extend_with(|_, e| e.set("code", self.code.as_str()))
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        e.extend()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(self.body())).into_response()
    }
}
