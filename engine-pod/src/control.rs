//! The status server's answers: the status view, the readiness probe, and the control API
//! (stop, restart, signal, stop the pod), each request checked against the control token.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /status` | every bean's [`BeanStatus`](crate::BeanStatus), as JSON |
//! | `GET /ready` | 200 when every bean that declares readiness is ready, 503 otherwise |
//! | `GET /metrics` | the beans' metrics ([`PodMetrics`](crate::PodMetrics)), OpenMetrics text |
//! | `GET /` | the dashboard page (`engine_observe::DASHBOARD`), which reads `/metrics` |
//! | `GET /?token=T` | swaps a right token for the session cookie; either way, back to `/` without it |
//! | `GET /login`, `POST /login` | a form that takes the token and sets the session cookie |
//! | `POST /beans/{id}/stop` | stops one bean for good |
//! | `POST /beans/{id}/restart` | ends its run and starts it again |
//! | `POST /signal` with `{"name": N, "label": L, "id": I, "payload": P}` | sends a named signal to a label, a bean, or (neither) every bean; answers `{"handlers": n}` |
//! | `POST /stop` | stops the pod gracefully |
//!
//! `HEAD` answers every `GET` route, without the body.
//!
//! With a token set, every request but `GET /ready` (for probes) needs
//! `Authorization: Bearer TOKEN`, or for the views (`/`, `/metrics`, `/status`) the session
//! cookie a browser got from `/?token=` or `/login` (see the `access` module); without it the
//! answer is 401 (the login form, for the page) and nothing changes.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::access::{Access, login_page, param};
use crate::context::BeanContext;
use crate::state::{BeanId, ControlError, Target};

/// The largest request body read (a signal's payload).
const MAX_BODY: usize = 64 * 1024;

/// The body of `POST /signal`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignalRequest {
    pub(crate) name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<BeanId>,
    #[serde(default)]
    pub(crate) payload: serde_json::Value,
}

/// Answers one request.
pub(crate) async fn answer(
    ctx: &BeanContext,
    access: &Access,
    registry: &prometheus_client::registry::Registry,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    // HEAD is GET without the body: hyper leaves the body of a HEAD answer out.
    let read = method == Method::GET || method == Method::HEAD;
    let page = read && matches!(path.as_str(), "/" | "/index.html");
    // A token in the address is swapped for the session cookie and taken out of the address.
    if page && let Some(given) = request.uri().query().and_then(|q| param(q, "token")) {
        return access.redirect(&path, access.matches(&given));
    }
    if path == "/login" {
        return login(access, request).await;
    }
    let probe = read && path == "/ready";
    let view = read && matches!(path.as_str(), "/" | "/index.html" | "/metrics" | "/status");
    let headers = request.headers();
    let allowed =
        access.is_open() || probe || access.bearer(headers) || (view && access.session(headers));
    if !allowed {
        if page {
            return login_page(
                StatusCode::UNAUTHORIZED,
                "This pod asks for its control token.",
            );
        }
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "a valid control token is needed (Authorization: Bearer TOKEN)"}),
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if read && matches!(path.as_str(), "/metrics" | "/" | "/index.html") {
        return engine_observe::respond(&method, &path, registry);
    }
    let method = if method == Method::HEAD {
        Method::GET
    } else {
        method
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, body) = match (&method, segments.as_slice()) {
        (&Method::GET, ["status"]) => (StatusCode::OK, json!(ctx.beans())),
        (&Method::GET, ["ready"]) => ready(ctx),
        (&Method::POST, ["beans", id, action @ ("stop" | "restart")]) => {
            bean_action(ctx, id, action)
        }
        (&Method::POST, ["signal"]) => match read_json::<SignalRequest>(request).await {
            Ok(signal) => send_signal(ctx, signal),
            Err(message) => (StatusCode::BAD_REQUEST, json!({"error": message})),
        },
        (&Method::POST, ["stop"]) => {
            ctx.stop_pod();
            (StatusCode::ACCEPTED, json!({"stopping": true}))
        }
        (&Method::GET, ["signal" | "stop"])
        | (&Method::GET, ["beans", _, "stop" | "restart"])
        | (&Method::POST, ["status" | "ready" | "metrics"]) => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("{method} is not allowed on {path}")}),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no {path}; try /status, /ready, /metrics, /, /beans/ID/stop, /beans/ID/restart, /signal or /stop")}),
        ),
    };
    json_response(status, &body)
}

/// `GET /login`: the form; `POST /login` with the form's `token`: the session cookie and
/// the dashboard, or the form again.
async fn login(access: &Access, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match *request.method() {
        _ if access.is_open() => access.redirect("/", false),
        Method::GET | Method::HEAD => login_page(
            StatusCode::OK,
            "Give the pod's control token to open the dashboard.",
        ),
        Method::POST => {
            let body = Limited::new(request.into_body(), MAX_BODY)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .unwrap_or_default();
            let given = std::str::from_utf8(&body)
                .ok()
                .and_then(|form| param(form, "token"));
            if given.is_some_and(|given| access.matches(&given)) {
                access.redirect("/", true)
            } else {
                login_page(
                    StatusCode::UNAUTHORIZED,
                    "That is not this pod's control token; try again.",
                )
            }
        }
        _ => json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET and POST on /login"}),
        ),
    }
}

fn ready(ctx: &BeanContext) -> (StatusCode, serde_json::Value) {
    let waiting: Vec<BeanId> = ctx
        .beans()
        .iter()
        .filter(|b| b.declares_readiness && b.state != crate::BeanState::Ready)
        .map(|b| b.id)
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, json!({"ready": true}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "waiting": waiting}),
        )
    }
}

fn bean_action(ctx: &BeanContext, id: &str, action: &str) -> (StatusCode, serde_json::Value) {
    let Ok(id) = id.parse().map(BeanId) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error": format!("{id:?} is not a bean id")}),
        );
    };
    let done = if action == "stop" {
        ctx.stop_bean(id)
    } else {
        ctx.restart_bean(id)
    };
    match done {
        Ok(()) => (StatusCode::OK, json!({"id": id, "done": action})),
        Err(err) => {
            let status = match err {
                ControlError::NoSuchBean(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::CONFLICT,
            };
            (status, json!({"error": err.to_string()}))
        }
    }
}

fn send_signal(ctx: &BeanContext, signal: SignalRequest) -> (StatusCode, serde_json::Value) {
    let target = match (signal.label, signal.id) {
        (Some(_), Some(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": "give a label or an id, not both"}),
            );
        }
        (Some(label), None) => Target::Label(label),
        (None, Some(id)) => Target::Id(id),
        (None, None) => Target::All,
    };
    let handlers = ctx.send_signal(&signal.name, target, signal.payload);
    (StatusCode::OK, json!({"handlers": handlers}))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, String> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|err| format!("cannot read the request body: {err}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|err| format!("bad request body: {err}"))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = body.to_string().into_bytes();
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
