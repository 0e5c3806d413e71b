//! How answers leave the simulator, as pve-http-server writes them.
//!
//! - Success: `{"data": …}` (plus `total` for task logs), JSON object keys in random order
//!   on every response, as Perl hashes come out.
//! - Errors: the reason phrase is the first line of the message; JSON body
//!   `{"data":null}` plus `message` (PVE ≥ 8.3) and `errors` for 400; plain text for
//!   errors raised outside a handler; an empty body for 401 and the proxy's 595/596.
//! - Every response with status ≥ 400 carries `Connection: close`.
//! - A body over 1024 bytes is gzip- or deflate-compressed when the request's
//!   `Accept-Encoding` allows it ([`compress`]).

use axum::body::Body;
use std::io::Write as _;

use axum::http::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, PRAGMA,
    SERVER,
};
use axum::http::{Response, StatusCode};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::params::ParamErrors;
use super::world::PveVersion;

/// Serializes a JSON value with every object's keys in a fresh random order.
pub struct Shuffled<'a>(pub &'a Value);

impl Serialize for Shuffled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                fastrand::shuffle(&mut entries);
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Shuffled(value))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Shuffled(item))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// What a handler returns on success.
#[derive(Debug)]
pub struct Reply {
    pub data: Value,
    /// The task log's `total`, beside `data`.
    pub total: Option<usize>,
    /// `data` already written as (shuffled) JSON text; used instead of `data` when set.
    pub raw: Option<String>,
}

impl Reply {
    pub fn data(data: Value) -> Self {
        Self {
            data,
            total: None,
            raw: None,
        }
    }

    /// A reply whose `data` is JSON text written by the handler.
    pub fn raw(json: String) -> Self {
        Self {
            data: Value::Null,
            total: None,
            raw: Some(json),
        }
    }
}

/// How an error's body looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorBody {
    /// Raised in a handler: `{"data":null[,"message"][,"errors"]}`.
    Json,
    /// Raised by the HTTP server itself (`error()`): plain text since PVE 8.3, else empty.
    Plain,
    /// Authentication failures and proxy errors: nothing.
    Empty,
}

/// An error response.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: u16,
    /// The full message; its first line is the reason phrase.
    pub message: String,
    pub errors: Option<ParamErrors>,
    pub body: ErrorBody,
}

impl ApiError {
    /// A plain `die "…\n"` in a handler: HTTP 500.
    pub fn server(message: impl Into<String>) -> Self {
        Self::json(500, message)
    }

    pub fn json(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
            body: ErrorBody::Json,
        }
    }

    /// `400 Parameter verification failed.` with the per-parameter messages.
    pub fn params(errors: ParamErrors) -> Self {
        Self {
            status: 400,
            message: "Parameter verification failed.".into(),
            errors: Some(errors),
            body: ErrorBody::Json,
        }
    }

    /// A 400 for a single parameter.
    pub fn param(name: &str, message: impl Into<String>) -> Self {
        Self::params(ParamErrors::from([(name.to_string(), message.into())]))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::json(403, message)
    }

    pub fn plain(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: None,
            body: ErrorBody::Plain,
        }
    }

    pub fn empty(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            message: reason.into(),
            errors: None,
            body: ErrorBody::Empty,
        }
    }
}

fn base(status: StatusCode) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(SERVER, "pve-api-daemon/3.0")
        .header(CACHE_CONTROL, "max-age=0")
        .header(PRAGMA, "no-cache")
}

fn finish(builder: axum::http::response::Builder, body: Body) -> Response<Body> {
    builder.body(body).unwrap_or_else(|_| {
        // Only reachable with an invalid header value, and every header here is static.
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

/// pveproxy compresses a body of more than this many bytes for a client that accepts it.
pub const COMPRESS_ABOVE: usize = 1024;

/// As pveproxy answers a request whose `Accept-Encoding` names `gzip` (preferred) or
/// `deflate`: a body over [`COMPRESS_ABOVE`] bytes goes out compressed with zlib's default
/// level and a `Content-Encoding` header; anything else goes out as it is.
pub async fn compress(response: Response<Body>, accept_encoding: Option<&str>) -> Response<Body> {
    let accepts = |name: &str| {
        accept_encoding.is_some_and(|header| {
            header
                .split(',')
                .any(|part| part.split(';').next().is_some_and(|n| n.trim() == name))
        })
    };
    let encoding = if accepts("gzip") {
        "gzip"
    } else if accepts("deflate") {
        "deflate"
    } else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if bytes.len() <= COMPRESS_ABOVE {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let level = flate2::Compression::default();
    let packed = if encoding == "gzip" {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
        encoder.write_all(&bytes).and_then(|()| encoder.finish())
    } else {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
        encoder.write_all(&bytes).and_then(|()| encoder.finish())
    };
    let Ok(packed) = packed else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
    Response::from_parts(parts, Body::from(packed))
}

/// A successful JSON answer.
pub fn success(reply: &Reply) -> Response<Body> {
    if let Some(raw) = &reply.raw {
        let mut body = String::with_capacity(raw.len() + 10);
        body.push_str("{\"data\":");
        body.push_str(raw);
        body.push('}');
        return finish(
            base(StatusCode::OK).header(CONTENT_TYPE, "application/json;charset=UTF-8"),
            Body::from(body),
        );
    }
    let mut envelope = serde_json::Map::new();
    envelope.insert("data".into(), reply.data.clone());
    if let Some(total) = reply.total {
        envelope.insert("total".into(), Value::from(total));
    }
    let envelope = Value::Object(envelope);
    let body = serde_json::to_vec(&Shuffled(&envelope)).unwrap_or_else(|_| b"{}".to_vec());
    finish(
        base(StatusCode::OK).header(CONTENT_TYPE, "application/json;charset=UTF-8"),
        Body::from(body),
    )
}

/// An error answer; `version` decides whether the body carries `message`.
pub fn failure(error: &ApiError, version: PveVersion) -> Response<Body> {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = error.message.lines().next().unwrap_or("").trim_end();
    let mut builder = base(status).header(CONNECTION, "close");
    let body = match error.body {
        ErrorBody::Json => {
            let mut envelope = serde_json::Map::new();
            envelope.insert("data".into(), Value::Null);
            if version.error_message_in_body() {
                let mut message = error.message.clone();
                if !message.ends_with('\n') {
                    message.push('\n');
                }
                envelope.insert("message".into(), Value::from(message));
            }
            if let Some(errors) = &error.errors {
                envelope.insert(
                    "errors".into(),
                    Value::Object(
                        errors
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                            .collect(),
                    ),
                );
            }
            builder = builder.header(CONTENT_TYPE, "application/json;charset=UTF-8");
            let envelope = Value::Object(envelope);
            Body::from(serde_json::to_vec(&Shuffled(&envelope)).unwrap_or_default())
        }
        ErrorBody::Plain if version.error_message_in_body() => {
            Body::from(format!("{}\n", error.message.trim_end()))
        }
        ErrorBody::Plain | ErrorBody::Empty => Body::empty(),
    };
    let mut response = finish(builder, body);
    if !reason.is_empty() {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes().to_vec()) {
            response.extensions_mut().insert(phrase);
        }
    }
    response
}

/// Marks a response as the last on its connection (pveproxy's 100-requests limit).
pub fn close_after(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffling_keeps_every_key_and_value() {
        let value = serde_json::json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}, "f": null});
        let text = serde_json::to_string(&Shuffled(&value)).expect("json");
        let back: Value = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, value);
    }

    #[test]
    fn key_order_changes_between_responses() {
        let value: Value = serde_json::from_str(
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10}"#,
        )
        .expect("json");
        let orders: std::collections::BTreeSet<String> = (0..20)
            .map(|_| serde_json::to_string(&Shuffled(&value)).expect("json"))
            .collect();
        assert!(orders.len() > 1);
    }

    #[test]
    fn errors_carry_the_reason_phrase_and_close_the_connection() {
        let response = failure(
            &ApiError::server("VM 100 not running"),
            PveVersion::parse("9.1.5").expect("version"),
        );
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[CONNECTION], "close");
        let phrase = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .expect("reason phrase");
        assert_eq!(phrase.as_bytes(), b"VM 100 not running");
    }
}
