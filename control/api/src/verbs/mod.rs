//! The verbs on resources, one file each, and the dispatch from method and path to them.
//! Verbs take the request body already read, so they run the same with or without a socket.

mod admit;
mod create;
mod default_class;
mod delete;
mod patch;
mod podsecurity;
mod quota;
mod read;
mod requester;
mod serviceaccount;
mod subresource;
#[cfg(test)]
mod tests;
mod token;
mod update;
mod watch;

use bytes::Bytes;
pub use create::create_object;
use http::{HeaderMap, Method, Response};
pub use read::list_objects;
use skiff_machinery::status::StatusError;

use crate::{
    ctx::Ctx,
    http::{Body, Query},
    route::ResourceRoute,
};

/// The Kubernetes verb a request maps to, for metrics and errors.
pub fn verb(method: &Method, route: &ResourceRoute, query: &Query) -> &'static str {
    match *method {
        Method::GET if route.watch || query.flag("watch") => "WATCH",
        Method::GET if route.name.is_none() => "LIST",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if route.name.is_none() => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => "UNKNOWN",
    }
}

/// Whether a request with `method` carries a body the verbs read.
pub fn has_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Serves one request on a resource.
pub async fn dispatch(
    ctx: &Ctx,
    method: &Method,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, StatusError> {
    let not_allowed = || {
        StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            route.info.plural
        ))
    };
    if let Some(sub) = route.subresource.as_deref() {
        return subresource::dispatch(ctx, method, route, sub, query, headers, &body).await;
    }
    let named = route.name.is_some();
    match (method, named) {
        (&Method::GET, _) if route.watch || query.flag("watch") => {
            watch::watch(ctx, route, query, headers).await
        }
        (&Method::GET, false) => read::list(ctx, route, query, headers).await,
        (&Method::GET, true) => read::get(ctx, route, query, headers).await,
        (&Method::POST, false) if route.namespace.is_some() || !route.info.namespaced => {
            create::create(ctx, route, query, headers, &body).await
        }
        (&Method::PUT, true) => update::update(ctx, route, query, headers, &body).await,
        (&Method::PATCH, true) => patch::patch(ctx, route, query, headers, &body).await,
        (&Method::DELETE, true) => delete::delete(ctx, route, query, &body).await,
        (&Method::DELETE, false) => delete::delete_collection(ctx, route, query).await,
        _ => Err(not_allowed()),
    }
}
