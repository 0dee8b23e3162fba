//! Handlers: gather data from the control plane, pick a view.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sdp_contract::Credentials;
use sdp_control::{ApiError, ControlPlane, DeploymentFilter, SessionUser, sessions};

use crate::views::deployment::{self, DeploymentPage};
use crate::views::deployments::{self, DeploymentsPage, Row};
use crate::views::error::{self, ErrorPage};
use crate::views::login::{self, LoginPage};

const STYLESHEET: &str = include_str!("../assets/app.css");

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

fn error_page(user: Option<&SessionUser>, e: &ApiError) -> Response {
    let page = ErrorPage {
        user: user.map(|u| u.username.clone()),
        title: e.status().canonical_reason().unwrap_or("Error").to_owned(),
        message: e.message().to_owned(),
    };
    (e.status(), error::render(&page)).into_response()
}

/// `GET /`: the deployment history, or the sign-in page without a session.
pub async fn home(State(cp): State<ControlPlane>, headers: HeaderMap) -> Response {
    let Some(user) = cp.session_user(&headers) else {
        return to_login();
    };
    let filter = DeploymentFilter {
        limit: 100,
        ..Default::default()
    };
    match cp.deployments(&filter).await {
        Ok(list) => deployments::render(&DeploymentsPage {
            user: user.username,
            rows: list.iter().map(Row::from).collect(),
        })
        .into_response(),
        Err(e) => error_page(Some(&user), &e),
    }
}

/// `GET /login`
pub async fn login_form(State(cp): State<ControlPlane>, headers: HeaderMap) -> Response {
    if cp.session_user(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    login::render(&LoginPage::default()).into_response()
}

/// `POST /login`: signs in through the gateway agent; on failure the form
/// again, with the reason.
pub async fn login(
    State(cp): State<ControlPlane>,
    form: Result<Form<Credentials>, FormRejection>,
) -> Response {
    let Ok(Form(credentials)) = form else {
        let page = LoginPage {
            username: String::new(),
            error: Some("enter your Bitbucket username and password".into()),
        };
        return (StatusCode::BAD_REQUEST, login::render(&page)).into_response();
    };
    let username = credentials.username.clone();
    match cp.login(credentials).await {
        Ok(outcome) => (
            [(SET_COOKIE, cp.session_cookie(&outcome.token))],
            Redirect::to("/"),
        )
            .into_response(),
        Err(e) => {
            let page = LoginPage {
                username,
                error: Some(e.message().to_owned()),
            };
            (e.status(), login::render(&page)).into_response()
        }
    }
}

/// `POST /logout`
pub async fn logout(State(cp): State<ControlPlane>, headers: HeaderMap) -> Response {
    if let Some(token) = sessions::token_from_headers(&headers) {
        cp.logout(&token);
    }
    (
        [(SET_COOKIE, cp.expired_session_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

/// `GET /deployments/{id}`: stages and the log so far.
pub async fn deployment(
    State(cp): State<ControlPlane>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(user) = cp.session_user(&headers) else {
        return to_login();
    };
    let found = match cp.deployment(&id).await {
        Ok(found) => found,
        Err(e) => return error_page(Some(&user), &e),
    };
    let Some(d) = found else {
        let e = ApiError::not_found("no such deployment");
        return error_page(Some(&user), &e);
    };
    match cp.deployment_log(&id).await {
        Ok(log) => deployment::render(&DeploymentPage::new(
            user.username,
            &d,
            log.unwrap_or_default(),
        ))
        .into_response(),
        Err(e) => error_page(Some(&user), &e),
    }
}

/// `GET /assets/app.css`, embedded in the binary.
pub async fn stylesheet() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}
