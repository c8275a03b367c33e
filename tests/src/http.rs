//! An HTTPS/1 client for the benchmark harnesses: JSON requests to the API server as the
//! admin.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

use crate::control::ControlPlane;

/// The client the harnesses share between their tasks.
pub type Http = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client that reaches `cp` as its admin (client certificate, cluster CA).
///
/// # Errors
/// When the admin kubeconfig cannot be read.
pub fn client(cp: &ControlPlane) -> Result<Http> {
    Ok(Client::builder(TokioExecutor::new()).build(connector(cp)?))
}

/// The HTTPS connector of [`client`], for harnesses that tune their own pool.
///
/// # Errors
/// When the admin kubeconfig cannot be read.
pub fn connector(cp: &ControlPlane) -> Result<HttpsConnector<HttpConnector>> {
    let tls = cp.admin_credentials()?.client_config()?;
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_only()
        .enable_http1()
        .build())
}

/// Sends `method path` with an optional JSON body to `base` and returns the JSON answer.
///
/// # Errors
/// On a connection failure, a non-2xx status (with the body in the message) or a body that
/// is not JSON.
pub async fn send(
    http: &Http,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))?;
    let resp = http.request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// The `resourceVersion` of the list at `path`: where a watch that must miss nothing from
/// now on starts.
///
/// # Errors
/// As [`send`], and when the list carries no `resourceVersion`.
pub async fn list_revision(http: &Http, base: &str, path: &str) -> Result<String> {
    send(http, base, "GET", path, None).await?["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the list at {path} has no resourceVersion"))
}

/// Follows the watch at `url` (`...?watch=true`) and hands each event, one JSON line, to
/// `on_event`, until the server ends the watch.
///
/// # Errors
/// On a connection failure, and when the watch ends.
pub async fn watch_lines(http: &Http, url: &str, mut on_event: impl FnMut(&[u8])) -> Result<()> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = http.request(req).await?;
    let mut body = resp.into_body().into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
            on_event(&buf[start..start + pos]);
            start += pos + 1;
        }
        buf.drain(..start);
    }
    bail!("the watch ended")
}
