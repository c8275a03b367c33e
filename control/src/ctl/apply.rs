//! `ctl apply`: creates what is missing and patches what changed, remembering the applied
//! intent in `kubectl.kubernetes.io/last-applied-configuration` exactly as kubectl does.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use skiff_machinery::patch::three_way;

use super::{
    connect::{Connection, is_not_found, server_error},
    manifest,
};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `ctl apply` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let mut failed = false;
    for obj in manifest::load(&args.files)? {
        match apply_one(conn, obj).await {
            Ok(line) => println!("{line}"),
            Err(err) => {
                eprintln!("{err:#}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some objects were not applied");
    }
    Ok(())
}

/// The intent as recorded: the manifest with the annotation itself left out.
fn intent(obj: &Value) -> Value {
    let mut clean = obj.clone();
    if let Some(a) = clean
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
    }
    clean
}

async fn apply_one(conn: &Connection, mut obj: Value) -> Result<String> {
    let kind = conn.for_object(&obj)?.clone();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .context("an object has no metadata.name")?
        .to_owned();
    let namespace = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map_or_else(|| conn.namespace.clone(), str::to_owned);
    if kind.namespaced {
        obj["metadata"]["namespace"] = json!(namespace);
    }
    let applied = intent(&obj);
    let recorded = serde_json::to_string(&applied)?;
    let label = format!("{}/{name}", kind.display());
    for _ in 0..5 {
        let item = kind.path(Some(&namespace), Some(&name));
        let live = match conn
            .client
            .request::<Value>(http::Request::get(&item).body(Vec::new())?)
            .await
        {
            Ok(live) => Some(live),
            Err(e) if is_not_found(&e) => None,
            Err(e) => bail!(server_error(&e)),
        };
        let Some(live) = live else {
            let mut new = applied.clone();
            new["metadata"]["annotations"][LAST_APPLIED] = json!(recorded);
            let req = http::Request::post(kind.path(Some(&namespace), None))
                .header("Content-Type", "application/json")
                .body(serde_json::to_vec(&new)?)?;
            match conn.client.request::<Value>(req).await {
                Ok(_) => return Ok(format!("{label} created")),
                Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => continue,
                Err(e) => bail!(server_error(&e)),
            }
        };
        let original: Value = live
            .pointer(&format!(
                "/metadata/annotations/{}",
                LAST_APPLIED.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let mut patch = three_way(&original, &applied, &live);
        if patch.as_object().is_some_and(serde_json::Map::is_empty) {
            return Ok(format!("{label} unchanged"));
        }
        patch["metadata"]["annotations"][LAST_APPLIED] = json!(recorded);
        // Only proceed on the version we diffed against.
        patch["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        let req = http::Request::patch(&item)
            .header("Content-Type", "application/merge-patch+json")
            .body(serde_json::to_vec(&patch)?)?;
        match conn.client.request::<Value>(req).await {
            Ok(_) => return Ok(format!("{label} configured")),
            Err(e) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {}
            Err(e) => bail!(server_error(&e)),
        }
    }
    bail!("{label}: gave up after repeated conflicts")
}
