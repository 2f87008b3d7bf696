//! Who may see the status server's answers: a program sends the control token as a bearer
//! header; a browser gives it once (`/?token=` or the login form) and gets a session cookie
//! instead, so the token never sits in a page, a link or the address bar.
//!
//! The cookie (HttpOnly, SameSite=Strict) holds a random session value made when the status
//! bean starts, not the token, and opens only the views (`GET`/`HEAD` of `/`, `/metrics`,
//! `/status`); the control API's actions need the bearer token.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, HeaderMap, HeaderValue, LOCATION, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};

use crate::token::ControlToken;

/// The token and the browser session of one run of a status bean.
pub(crate) struct Access {
    token: Option<ControlToken>,
    /// The cookie's name, with the server's port: cookies are shared by every port of a host,
    /// and two pods on one machine must not log each other out.
    cookie_name: String,
    /// The cookie's value for this run.
    session: String,
}

impl Access {
    /// The access rules of a status server on `port`, asking for `token` if given.
    pub(crate) fn new(token: Option<ControlToken>, port: u16) -> Self {
        Self {
            token,
            cookie_name: format!("engine_session_{port}"),
            session: random_hex(),
        }
    }

    /// Whether requests need a token at all.
    pub(crate) fn is_open(&self) -> bool {
        self.token.is_none()
    }

    /// Whether `given` is the token (always false without one).
    pub(crate) fn matches(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|t| t.matches(given))
    }

    /// Whether the headers carry the token (`Authorization: Bearer TOKEN`).
    pub(crate) fn bearer(&self, headers: &HeaderMap) -> bool {
        headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|given| self.matches(given.trim()))
    }

    /// Whether the headers carry this run's session cookie.
    pub(crate) fn session(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| name == self.cookie_name && same(value, &self.session))
    }

    /// A `303 See Other` to `location`, setting the session cookie if `login` holds. The
    /// address that carried a token is not sent on as a referrer.
    pub(crate) fn redirect(&self, location: &str, login: bool) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SEE_OTHER;
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(location) {
            headers.insert(LOCATION, location);
        }
        headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let cookie = format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/",
            self.cookie_name, self.session
        );
        if login && let Ok(cookie) = HeaderValue::from_str(&cookie) {
            headers.insert(SET_COOKIE, cookie);
        }
        response
    }
}

/// Compares two strings in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 unpredictable bits as hex: SipHash keyed by the standard library's per-process random
/// keys (drawn from the operating system), over distinct inputs.
fn random_hex() -> String {
    let state = RandomState::new();
    let mut out = String::with_capacity(32);
    for part in 0_u8..2 {
        let mut hasher = state.build_hasher();
        hasher.write_u8(part);
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out += &format!("{:016x}", hasher.finish());
    }
    out
}

/// The value of `name` in a query string or a form body (`a=1&b=2`), percent-decoded.
pub(crate) fn param(text: &str, name: &str) -> Option<String> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| percent_decode(value))
}

/// Decodes `%XX` escapes and `+` (a space, in forms); `None` if the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The login page: a form that posts the token to `/login`, with `message` above it.
/// `status` is 401 when the page stands in for a view the browser may not see yet.
pub(crate) fn login_page(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let page = LOGIN_PAGE.replace("{message}", message);
    let mut response = Response::new(Full::new(Bytes::from(page)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The login form: no script, the token goes in the body of a POST, never in a link.
const LOGIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engine: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{background:#0f1419;color:#e6e6e6;font:14px/1.4 system-ui,sans-serif;margin:48px}
input,button{font:inherit;padding:6px 10px;border-radius:6px;border:1px solid #2c3a47;background:#1b232c;color:inherit}
button{background:#4caf7d;color:#111;border:0}p{color:#8a99a8}</style></head>
<body><h1>engine</h1><p>{message}</p>
<form id="login" method="post" action="/login">
<label>control token <input type="password" name="token" autocomplete="current-password" autofocus></label>
<button type="submit">open the dashboard</button></form></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_found_and_decoded() {
        assert_eq!(
            param("a=1&token=s3%2Fc+r%C3%A9t", "token").as_deref(),
            Some("s3/c rét")
        );
        assert_eq!(param("token=", "token").as_deref(), Some(""));
        assert_eq!(param("tokens=x", "token"), None);
        assert_eq!(param("token=%4", "token"), None);
        assert_eq!(param("token=%zz", "token"), None);
    }

    #[test]
    fn the_session_cookie_is_this_runs_and_not_the_token() {
        let access = Access::new(ControlToken::new("s3cret"), 9100);
        let other = Access::new(ControlToken::new("s3cret"), 9100);
        assert_ne!(access.session, other.session);
        assert_eq!(access.session.len(), 32);
        let response = access.redirect("/", true);
        let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(!cookie.contains("s3cret"), "{cookie}");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let mut headers = HeaderMap::new();
        let pair = cookie.split(';').next().unwrap();
        headers.insert(COOKIE, format!("theme=dark; {pair}").parse().unwrap());
        assert!(access.session(&headers));
        assert!(!other.session(&headers));
        assert!(
            !access
                .redirect("/", false)
                .headers()
                .contains_key(SET_COOKIE)
        );
    }
}
