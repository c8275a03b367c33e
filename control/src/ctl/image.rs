//! `ctl image import|ls|rm|pull`: a node's image store through its endpoint, as `crictl`
//! gives it on a kubelet's host: load a tarball (for nodes with no registry), list, remove,
//! and pull through the node's registry configuration.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{Api, api::ListParams};
use skiff_api::kubelet_client::KubeletClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// List the images on a node.
    #[command(alias = "list")]
    Ls {
        /// The node (default: the only node that is not simulated).
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove images from a node (refused for images its pods use).
    #[command(alias = "rmi")]
    Rm {
        /// Image names or ids.
        #[arg(required = true)]
        images: Vec<String>,
        /// The node (default: the only node that is not simulated).
        #[arg(long)]
        node: Option<String>,
    },
    /// Pull an image onto a node through its registry mirrors and credentials.
    Pull {
        /// The image reference.
        image: String,
        /// The node (default: the only node that is not simulated).
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

/// The node `name` names, or the only real one.
async fn target(conn: &Connection, name: Option<&str>) -> Result<Node> {
    let nodes: Api<Node> = Api::all(conn.client.clone());
    if let Some(name) = name {
        return nodes
            .get(name)
            .await
            .with_context(|| format!("node {name:?}"));
    }
    let real: Vec<Node> = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes")?
        .items
        .into_iter()
        .filter(|n| !simulated(n))
        .collect();
    match <[Node; 1]>::try_from(real) {
        Ok([only]) => Ok(only),
        Err(many) => bail!("{} nodes could be meant: name one with --node", many.len()),
    }
}

/// One request to the node's endpoint; the body of a 200 answer, else an error with the
/// node's reason.
async fn call(
    nodes: &KubeletClient,
    node: &Node,
    head: &str,
    body: &[u8],
) -> Result<serde_json::Value> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let (ip, port) = endpoint(node).with_context(|| format!("node {name} reports no endpoint"))?;
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let mut stream = nodes
        .dial(&addr)
        .await
        .with_context(|| format!("connecting to node {name} at {addr}"))?;
    let head = format!(
        "{head}\r\nHost: {ip}:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply).await {
        // A node that closes without TLS's close_notify has still sent its whole answer.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() => {}
        other => {
            other?;
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    let (status_line, rest) = reply.split_once("\r\n").unwrap_or((&reply, ""));
    let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if !status_line.contains(" 200 ") {
        let reason = value["message"].as_str().unwrap_or(body);
        bail!("node {name}: {reason}");
    }
    Ok(value)
}

fn query(image: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("image", image)
        .finish()
}

/// `1.2MB`, as crictl prints sizes.
fn human(bytes: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a size shown with one decimal")]
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes}B"),
        1_000..1_000_000 => format!("{:.1}kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}MB", b / 1e6),
        _ => format!("{:.1}GB", b / 1e9),
    }
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    match &args.command {
        Command::Import { file, node } => {
            let node = target(conn, node.as_deref()).await?;
            let name = node.metadata.name.clone().unwrap_or_default();
            let body = tokio::fs::read(file)
                .await
                .with_context(|| format!("reading {}", file.display()))?;
            let answer = call(
                &conn.nodes,
                &node,
                "POST /images/import HTTP/1.1\r\nContent-Type: application/x-tar",
                &body,
            )
            .await
            .context("the node refused the image")?;
            for image in answer["images"].as_array().into_iter().flatten() {
                println!(
                    "{} imported on node {name}",
                    image.as_str().unwrap_or_default()
                );
            }
        }
        Command::Ls { node } => {
            let node = target(conn, node.as_deref()).await?;
            let answer = call(&conn.nodes, &node, "GET /images HTTP/1.1", b"").await?;
            let mut rows = vec![[
                "IMAGE".to_owned(),
                "IMAGE ID".to_owned(),
                "SIZE".to_owned(),
                "IN USE".to_owned(),
            ]];
            for image in answer["images"].as_array().into_iter().flatten() {
                let id = image["id"].as_str().unwrap_or_default();
                rows.push([
                    image["reference"].as_str().unwrap_or_default().to_owned(),
                    id.trim_start_matches("sha256:").chars().take(13).collect(),
                    human(image["size"].as_u64().unwrap_or_default()),
                    if image["inUse"] == true { "yes" } else { "no" }.to_owned(),
                ]);
            }
            let widths: Vec<usize> = (0..4)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for row in rows {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                println!("{}", line.join("   ").trim_end());
            }
        }
        Command::Rm { images, node } => {
            let node = target(conn, node.as_deref()).await?;
            let mut failed = 0;
            for image in images {
                let head = format!("DELETE /images?{} HTTP/1.1", query(image));
                match call(&conn.nodes, &node, &head, b"").await {
                    Ok(answer) => {
                        println!("Deleted: {}", answer["removed"].as_str().unwrap_or(image));
                    }
                    Err(err) => {
                        eprintln!("error: {image}: {err:#}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} images not removed", images.len());
            }
        }
        Command::Pull { image, node } => {
            let node = target(conn, node.as_deref()).await?;
            let name = node.metadata.name.clone().unwrap_or_default();
            let head = format!("POST /images/pull?{} HTTP/1.1", query(image));
            let answer = call(&conn.nodes, &node, &head, b"").await?;
            println!(
                "Image is up to date for {} ({}) on node {name}",
                answer["reference"].as_str().unwrap_or(image),
                answer["id"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}
