//! The health check node ports of `externalTrafficPolicy: Local` load balancers, served on
//! the node's address as kube-proxy serves them: 200 while the Service has endpoints on
//! this node, 503 when not, with kube-proxy's JSON body, so a load balancer skips nodes
//! that would drop its traffic.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use skiff_node_proxy::HealthCheck;
use tokio::{net::TcpListener, task::JoinHandle};

type Checks = Arc<Mutex<BTreeMap<u16, HealthCheck>>>;

/// The listeners, one per health check node port, and what each answers.
#[derive(Debug)]
pub struct HealthServers {
    address: Ipv4Addr,
    checks: Checks,
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServers {
    /// No listener yet; ports are bound on `address` (the node's).
    #[must_use]
    pub fn new(address: Ipv4Addr) -> Self {
        Self {
            address,
            checks: Checks::default(),
            listeners: BTreeMap::new(),
        }
    }

    /// Answers with `checks` from now on: binds the ports new to it, closes the ones gone.
    /// A port that cannot be bound is said and tried again at the next update.
    pub fn update(&mut self, checks: BTreeMap<u16, HealthCheck>) {
        self.listeners.retain(|port, task| {
            let keep = checks.contains_key(port);
            if !keep {
                task.abort();
                tracing::info!(port, "health check node port closed");
            }
            keep
        });
        for (port, check) in &checks {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::from((self.address, *port));
            match bind(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, service = %check.service, "serving a health check node port");
                    let task = tokio::spawn(serve(listener, *port, self.checks.clone()));
                    self.listeners.insert(*port, task);
                }
                Err(err) => {
                    tracing::warn!(%addr, service = %check.service, %err, "health check node port not served");
                }
            }
        }
        *self.checks.lock().unwrap_or_else(PoisonError::into_inner) = checks;
    }
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn serve(listener: TcpListener, port: u16, checks: Checks) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(port, %err, "health check accept failed");
                continue;
            }
        };
        let checks = checks.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let check = checks
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&port)
                    .cloned();
                async move { Ok::<_, Infallible>(answer(check.as_ref())) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(port, %err, "health check connection closed with an error");
            }
        });
    }
}

/// kube-proxy's answer: the Service, its local endpoint count, and 200 or 503.
fn answer(check: Option<&HealthCheck>) -> Response<Full<Bytes>> {
    let (namespace, name, count) = check.map_or(("", "", 0), |c| {
        (
            c.service.namespace.as_str(),
            c.service.name.as_str(),
            c.local_endpoints,
        )
    });
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    });
    let status = if check.is_some_and(HealthCheck::healthy) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-load-balancing-endpoints", count.into());
    resp
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use skiff_node_proxy::ServiceRef;

    use super::*;

    fn front(local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            service: ServiceRef::new("shop", "front"),
            local_endpoints,
        }
    }

    async fn body(resp: Response<Full<Bytes>>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn a_service_with_local_endpoints_answers_200_with_their_count() {
        let resp = answer(Some(&front(2)));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-load-balancing-endpoints"], "2");
        assert_eq!(
            body(resp).await,
            serde_json::json!({"service": {"namespace": "shop", "name": "front"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
    }

    #[tokio::test]
    async fn no_local_endpoint_or_no_service_answers_503() {
        let resp = answer(Some(&front(0)));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(resp).await["localEndpoints"], 0);
        assert_eq!(answer(None).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn ports_are_bound_while_wanted_and_closed_after() {
        let mut servers = HealthServers::new(Ipv4Addr::LOCALHOST);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        servers.update(BTreeMap::from([(port, front(1))]));
        assert!(servers.listeners.contains_key(&port));
        servers.update(BTreeMap::new());
        assert!(servers.listeners.is_empty());
    }
}
