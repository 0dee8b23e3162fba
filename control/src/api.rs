//! The JSON API under `/api/v1`: routes, JSON body extraction, and the rule
//! that every error answer is `{"error": "..."}`, even those produced by
//! layers (body limit) or routing (unknown path, wrong method).

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use serde::de::DeserializeOwned;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::{
    ControlPlane, audit, deployments, environments, live, nodes, openapi, repositories, routes,
    sandboxes, sessions,
};

pub fn router(cp: ControlPlane) -> Router {
    let max = cp.config().max_body_bytes;
    let api = Router::new()
        .route(
            "/session",
            post(sessions::create)
                .get(sessions::current)
                .delete(sessions::delete),
        )
        .route("/openapi.json", get(openapi::serve))
        .route("/nodes", get(nodes::list))
        .route("/repositories", get(repositories::list))
        .route("/repositories/{name}/branches", get(repositories::branches))
        .route(
            "/environments",
            get(environments::list).post(environments::create),
        )
        .route(
            "/environments/{name}",
            get(environments::get)
                .put(environments::update)
                .delete(environments::delete),
        )
        .route(
            "/templates",
            get(sandboxes::list_templates).post(sandboxes::create_template),
        )
        .route(
            "/templates/{name}",
            get(sandboxes::get_template)
                .put(sandboxes::update_template)
                .delete(sandboxes::delete_template),
        )
        .route(
            "/templates/{name}/sandboxes",
            post(sandboxes::sandbox_from_template),
        )
        .route("/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/sandboxes/{name}",
            get(sandboxes::get)
                .put(sandboxes::update)
                .delete(sandboxes::delete),
        )
        .route("/sandboxes/{name}/clone", post(sandboxes::clone))
        .route("/sandboxes/{name}/deploy", post(sandboxes::deploy))
        .route("/sandboxes/{name}/environment", get(sandboxes::environment))
        .route("/sandboxes/{name}/routes", get(routes::get))
        .route("/sandboxes/{name}/routes/{service}", put(routes::put))
        .route(
            "/deployments",
            get(deployments::list).post(deployments::create),
        )
        .route(
            "/deployments/{id}",
            get(deployments::get).delete(deployments::delete),
        )
        .route("/deployments/{id}/logs", get(deployments::logs))
        .route("/deployments/{id}/restart", post(deployments::restart))
        .route("/deployments/{id}/stop", post(deployments::stop))
        .route("/audit", get(audit::list))
        .route("/ws/deployments/{id}", get(live::deployment))
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .with_state(cp)
        .layer(DefaultBodyLimit::max(max))
        .layer(RequestBodyLimitLayer::new(max))
        .layer(middleware::map_response(move |res: Response| {
            json_errors(max, res)
        }))
        // The default spans record method, path and status; never bodies
        // or headers (the cookie).
        .layer(TraceLayer::new_for_http());
    Router::new().nest("/api/v1", api)
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the limit of {max} bytes"),
    )
}

/// Rewrites error answers that are not JSON yet into `{"error": ...}`.
async fn json_errors(max: usize, res: Response) -> Response {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let e = match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(max),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(status, "this endpoint does not take that method")
        }
        _ => ApiError::new(status, status.canonical_reason().unwrap_or("error")),
    };
    e.into_response()
}

/// A JSON body; a body that is not JSON, not the expected shape or too large
/// is a JSON error answer like every other.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ControlPlane> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, cp: &ControlPlane) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, cp).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(r) => Err(json_rejection(r, cp.config().max_body_bytes)),
        }
    }
}

fn json_rejection(r: JsonRejection, max: usize) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as JSON, with Content-Type: application/json",
        ),
        r if r.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(max),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("the request body is not valid JSON")
        }
        r => ApiError::new(r.status(), r.body_text()),
    }
}
