//! `ctl image import FILE`: loads an OCI layout or docker-archive tarball into a node's
//! image store, for nodes with no registry to pull from.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, api::ListParams};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::connect::Connection;

/// `ctl image` subcommands.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Load an image tarball (OCI layout or `docker save` archive) onto a node.
    Import {
        /// The tarball.
        file: PathBuf,
        /// The node to load it on (default: the only node that is not simulated).
        #[arg(long)]
        node: Option<String>,
    },
}

/// Where a node's endpoint listens, from its Node object.
fn endpoint(node: &Node) -> Option<(String, u16)> {
    let status = node.status.as_ref()?;
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .clone();
    let port = status
        .daemon_endpoints
        .as_ref()?
        .kubelet_endpoint
        .as_ref()?
        .port;
    Some((ip, u16::try_from(port).ok()?))
}

fn simulated(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .is_some_and(|i| i.container_runtime_version.starts_with("skiff-sim://"))
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let Command::Import { file, node } = &args.command;
    let nodes: Api<Node> = Api::all(conn.client.clone());
    let target = if let Some(name) = node {
        nodes
            .get(name)
            .await
            .with_context(|| format!("node {name:?}"))?
    } else {
        let real: Vec<Node> = nodes
            .list(&ListParams::default())
            .await
            .context("listing nodes")?
            .items
            .into_iter()
            .filter(|n| !simulated(n))
            .collect();
        match <[Node; 1]>::try_from(real) {
            Ok([only]) => only,
            Err(many) => bail!(
                "{} nodes could take the image: name one with --node",
                many.len()
            ),
        }
    };
    let name = target.metadata.name.clone().unwrap_or_default();
    let (ip, port) =
        endpoint(&target).with_context(|| format!("node {name} reports no endpoint"))?;
    let body = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let mut stream = TcpStream::connect((ip.as_str(), port))
        .await
        .with_context(|| format!("connecting to node {name} at {ip}:{port}"))?;
    let head = format!(
        "POST /images/import HTTP/1.1\r\nHost: {ip}:{port}\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    let reply = String::from_utf8_lossy(&reply);
    let (status_line, rest) = reply.split_once("\r\n").unwrap_or((&reply, ""));
    let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if !status_line.contains(" 200 ") {
        bail!("node {name} refused the image: {status_line}: {body}");
    }
    let images: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    for image in images["images"].as_array().into_iter().flatten() {
        println!(
            "{} imported on node {name}",
            image.as_str().unwrap_or_default()
        );
    }
    Ok(())
}
