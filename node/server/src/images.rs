//! `POST /images/import`: a tarball in the body goes to a scratch file, then into the image
//! store through the backend, so images reach a node without a registry.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{
    NodeBackend,
    reply::{self, Body},
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
