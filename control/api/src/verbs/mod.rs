//! The verbs on resources, one file each, and the dispatch from method and path to them.

mod admit;
mod create;
mod delete;
pub mod node_proxy;
mod patch;
mod quota;
mod read;
mod service;
mod subresource;
mod update;
mod watch;

use std::sync::Arc;

pub use create::create_object;
use http::{HeaderMap, Method, Response};
use hyper::body::Incoming;
pub use read::list_objects;
pub use service::reserve as reserve_service;
use skiff_machinery::status::StatusError;

use crate::{
    http::{Body, Query},
    route::ResourceRoute,
    server::Ctx,
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

pub async fn dispatch(
    ctx: &Arc<Ctx>,
    method: &Method,
    route: &ResourceRoute,
    query: &Query,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Response<Body>, StatusError> {
    let not_allowed = || {
        StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            route.info.plural
        ))
    };
    if let Some(sub) = route.subresource.as_deref() {
        return subresource::dispatch(ctx, method, route, sub, query, headers, body).await;
    }
    let named = route.name.is_some();
    match (method, named) {
        (&Method::GET, _) if route.watch || query.flag("watch") => {
            watch::watch(ctx, route, query, headers).await
        }
        (&Method::GET, false) => read::list(ctx, route, query, headers).await,
        (&Method::GET, true) => read::get(ctx, route, headers).await,
        (&Method::POST, false) if route.namespace.is_some() || !route.info.namespaced => {
            create::create(ctx, route, query, headers, body).await
        }
        (&Method::PUT, true) => update::update(ctx, route, query, headers, body).await,
        (&Method::PATCH, true) => patch::patch(ctx, route, query, headers, body).await,
        (&Method::DELETE, true) => delete::delete(ctx, route, query, headers, body).await,
        (&Method::DELETE, false) => delete::delete_collection(ctx, route, query, headers).await,
        _ => Err(not_allowed()),
    }
}
