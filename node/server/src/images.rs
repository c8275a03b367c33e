//! The node's images over HTTP: `POST /images/import` (a tarball in the body goes to a
//! scratch file, then into the store, so images reach a node without a registry),
//! `GET /images`, `DELETE /images?image=REF` and `POST /images/pull?image=REF`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{
    NodeBackend,
    reply::{self, Body, Params},
};

/// Why an import request failed before the backend saw it.
#[derive(Debug, thiserror::Error)]
pub(super) enum ImportError {
    /// The scratch file could not be made or written.
    #[error("writing the uploaded tarball: {0}")]
    Scratch(#[from] std::io::Error),
    /// The client's body broke off.
    #[error("reading the request body: {0}")]
    Body(#[from] hyper::Error),
}

pub(super) async fn serve(backend: Arc<dyn NodeBackend>, req: Request<Incoming>) -> Response<Body> {
    let scratch = match receive(req.into_body()).await {
        Ok(file) => file,
        Err(err @ ImportError::Body(_)) => return reply::bad_request(&err.to_string()),
        Err(err) => return reply::error(500, "InternalError", &err.to_string()),
    };
    match backend.import_image(scratch.path()).await {
        Ok(images) => {
            tracing::info!(?images, "imported images");
            reply::json(StatusCode::OK, &json!({"images": images}))
        }
        Err(err) => reply::backend_error(&err),
    }
}

/// `GET /images`: `{"images": [ImageSummary...]}`.
pub(super) async fn list(backend: &dyn NodeBackend) -> Response<Body> {
    match backend.list_images().await {
        Ok(images) => reply::json(StatusCode::OK, &json!({ "images": images })),
        Err(err) => reply::backend_error(&err),
    }
}

/// The `image` query parameter, if given.
fn image_param(req: &Request<Incoming>) -> Option<String> {
    Params::parse(req.uri().query())
        .get("image")
        .filter(|i| !i.is_empty())
        .map(str::to_owned)
}

fn missing_image() -> Response<Body> {
    reply::bad_request("the image query parameter is required")
}

/// `DELETE /images?image=REF`: `{"removed": ID}`.
pub(super) async fn remove(backend: &dyn NodeBackend, req: &Request<Incoming>) -> Response<Body> {
    let Some(image) = image_param(req) else {
        return missing_image();
    };
    match backend.remove_image(&image).await {
        Ok(id) => {
            tracing::info!(%image, %id, "removed image");
            reply::json(StatusCode::OK, &json!({ "removed": id }))
        }
        Err(err) => reply::backend_error(&err),
    }
}

/// `POST /images/pull?image=REF`: the pulled image's summary.
pub(super) async fn pull(backend: &dyn NodeBackend, req: &Request<Incoming>) -> Response<Body> {
    let Some(image) = image_param(req) else {
        return missing_image();
    };
    match backend.pull_image(&image).await {
        Ok(summary) => reply::json(StatusCode::OK, &json!(summary)),
        Err(err) => reply::backend_error(&err),
    }
}

/// Streams the body to a temporary file, removed when the handle drops.
async fn receive(mut body: Incoming) -> Result<tempfile::NamedTempFile, ImportError> {
    let scratch = tempfile::NamedTempFile::new()?;
    let mut file = tokio::fs::File::from_std(scratch.reopen()?);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            file.write_all(&data).await?;
        }
    }
    file.flush().await?;
    Ok(scratch)
}
