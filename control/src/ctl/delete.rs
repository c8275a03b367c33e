//! `ctl delete`: deletes by manifest or by kind and names, and by default waits until each
//! object is really gone (finalizers and graceful pod termination included).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::{
    connect::{Connection, Resource, is_not_found, server_error},
    manifest,
};

/// `ctl delete` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource then names (`deploy web api`), unless `-f` is given.
    targets: Vec<String>,
    /// Manifest file, directory or `-` (repeatable).
    #[arg(short = 'f', long = "filename")]
    files: Vec<String>,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let mut targets: Vec<(Resource, String, String)> = Vec::new();
    if args.files.is_empty() {
        let Some((kind, names)) = args.targets.split_first() else {
            bail!("you must specify the type of resource to delete, or -f");
        };
        if names.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        let kind = conn.resolve(kind)?.clone();
        for name in names {
            targets.push((kind.clone(), conn.namespace.clone(), name.clone()));
        }
    } else {
        for obj in manifest::load(&args.files)? {
            let kind = conn.for_object(&obj)?.clone();
            let ns = obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map_or_else(|| conn.namespace.clone(), str::to_owned);
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            targets.push((kind, ns, name));
        }
    }
    let mut failed = false;
    let mut deleted = Vec::new();
    for (kind, ns, name) in targets {
        let path = kind.path(Some(&ns), Some(&name));
        let req = http::Request::delete(&path)
            .header("Content-Type", "application/json")
            .body(br#"{"propagationPolicy":"Background"}"#.to_vec())?;
        match conn.client.request_text(req).await {
            Ok(_) => {
                println!("{} \"{name}\" deleted", kind.display());
                deleted.push(path);
            }
            Err(e) => {
                eprintln!("{}", server_error(&e));
                failed = true;
            }
        }
    }
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        for path in deleted {
            loop {
                let req = http::Request::get(&path).body(Vec::new())?;
                match conn.client.request_text(req).await {
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => bail!(server_error(&e)),
                    Ok(_) if Instant::now() > deadline => {
                        bail!("timed out waiting for {path} to be deleted")
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
    if failed {
        bail!("some objects were not deleted");
    }
    Ok(())
}
