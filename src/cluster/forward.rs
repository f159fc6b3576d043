//! HTTP requests to another node: admin actions on a room it owns (repeated with their
//! `Authorization`, its answer returned as is) and its own room list for `/getAllRooms`. A
//! forwarded request carries [`FORWARDED_HEADER`]: it is never forwarded again, and
//! `/getAllRooms` then answers the node's own rooms only.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Marks a request already forwarded by another node.
pub(crate) const FORWARDED_HEADER: &str = "x-roomd-forwarded";

/// Longest a forwarded admin request may take, connection included.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs `path_and_query` to the node at `base` (`http://host:port`) with `authorization`;
/// the status and body it answered.
pub(crate) async fn post(
    base: &str,
    path_and_query: &str,
    authorization: Option<&str>,
) -> Result<(u16, Bytes), String> {
    let request = send(hyper::Method::POST, base, path_and_query, authorization);
    tokio::time::timeout(FORWARD_TIMEOUT, request)
        .await
        .map_err(|_| format!("{base} did not answer in time"))?
}

/// GETs `path` from the node at `base`, within `timeout`.
pub(crate) async fn get(base: &str, path: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(timeout, send(hyper::Method::GET, base, path, None))
        .await
        .map_err(|_| format!("{base} did not answer in time"))?
}

async fn send(
    method: hyper::Method,
    base: &str,
    path_and_query: &str,
    authorization: Option<&str>,
) -> Result<(u16, Bytes), String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// internal URLs are forwarded to, not {base}"))?
        .trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot reach {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, authority)
        .header(FORWARDED_HEADER, "1");
    if let Some(auth) = authorization {
        request = request.header(hyper::header::AUTHORIZATION, auth);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad forwarded request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("forwarding to {authority}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {authority}: {e}"))?
        .to_bytes();
    Ok((status, body))
}
