//! The node's plain HTTP answers: JSON errors and bodies, short texts.

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;

pub type HttpBody = Full<Bytes>;

pub fn text(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut response = Response::new(HttpBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `{"error":"...","message":"..."}` with `status`.
pub fn json_error(status: StatusCode, error: &str, message: &str) -> Response<HttpBody> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    let mut response = Response::new(HttpBody::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<HttpBody> {
    let mut response = Response::new(HttpBody::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
