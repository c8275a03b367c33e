//! `ctl get`: server-side Tables printed like kubectl, or the objects as YAML or JSON, and
//! `-w` to keep printing changes.

use anyhow::{Result, bail};
use futures::{AsyncBufReadExt, StreamExt};
use serde_json::{Value, json};

use super::{
    connect::{Connection, Resource, server_error},
    print,
};

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// `ctl get` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource (`pods`, `deploy`, `svc`, `deploy,svc`...).
    kind: String,
    /// Names (all when none).
    names: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output: wide, yaml, json or name.
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Field selector, e.g. `spec.nodeName=n1`.
    #[arg(long)]
    field_selector: Option<String>,
    /// Keep watching for changes after listing.
    #[arg(short = 'w', long)]
    watch: bool,
}

fn query(args: &Args, extra: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    if let Some(l) = &args.selector {
        q.append_pair("labelSelector", l);
    }
    if let Some(f) = &args.field_selector {
        q.append_pair("fieldSelector", f);
    }
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

async fn fetch(conn: &Connection, path: &str, accept: &str) -> Result<Value> {
    let req = http::Request::get(path)
        .header("Accept", accept)
        .body(Vec::new())?;
    match conn.client.request::<Value>(req).await {
        Ok(v) => Ok(v),
        Err(e) => bail!(server_error(&e)),
    }
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let kinds: Vec<Resource> = args
        .kind
        .split(',')
        .map(|k| conn.resolve(k).cloned())
        .collect::<Result<_>>()?;
    let namespace = (!args.all_namespaces).then_some(conn.namespace.as_str());
    let output = args.output.as_deref().unwrap_or("");
    let mut objects = Vec::new();
    let mut printed_any = false;
    for (i, kind) in kinds.iter().enumerate() {
        let as_table = matches!(output, "" | "wide");
        let accept = if as_table { TABLE } else { "application/json" };
        let mut found: Vec<Value> = Vec::new();
        let mut tables = Vec::new();
        if args.names.is_empty() {
            let v = fetch(
                conn,
                &format!("{}{}", kind.path(namespace, None), query(args, &[])),
                accept,
            )
            .await?;
            if as_table {
                tables.push(v);
            } else {
                found.extend(v["items"].as_array().cloned().unwrap_or_default());
            }
        } else {
            for name in &args.names {
                let v = fetch(
                    conn,
                    &kind.path(namespace.or(Some(&conn.namespace)), Some(name)),
                    accept,
                )
                .await?;
                if as_table {
                    tables.push(v);
                } else {
                    found.push(v);
                }
            }
        }
        if as_table {
            let mut merged = tables.first().cloned().unwrap_or_else(|| json!({}));
            merged["rows"] = Value::Array(
                tables
                    .iter()
                    .flat_map(|t| t["rows"].as_array().cloned().unwrap_or_default())
                    .collect(),
            );
            if merged["rows"].as_array().is_some_and(|r| !r.is_empty()) {
                if printed_any && i > 0 {
                    println!();
                }
                print!(
                    "{}",
                    print::table(&merged, output == "wide", args.all_namespaces, true)
                );
                printed_any = true;
            }
        } else {
            for mut obj in found {
                obj["apiVersion"] = json!(kind.api_version());
                obj["kind"] = json!(kind.kind);
                objects.push((kind.clone(), obj));
            }
        }
    }
    match output {
        "" | "wide" => {
            if !printed_any && !args.watch {
                match namespace {
                    Some(ns) => eprintln!("No resources found in {ns} namespace."),
                    None => eprintln!("No resources found"),
                }
            }
        }
        "name" | "yaml" | "json" => print_objects(output, &objects, !args.names.is_empty())?,
        other => bail!("unable to match a printer suitable for the output format \"{other}\""),
    }
    if args.watch {
        let kind = kinds.first().expect("at least one kind");
        watch(conn, kind, namespace, args).await?;
    }
    Ok(())
}

/// Prints fetched objects as names, YAML or JSON (a `List` unless one was named).
fn print_objects(output: &str, objects: &[(Resource, Value)], named: bool) -> Result<()> {
    if output == "name" {
        for (kind, obj) in objects {
            println!(
                "{}/{}",
                kind.display(),
                obj["metadata"]["name"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let value = if objects.len() == 1 && named {
        objects[0].1.clone()
    } else {
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
               "items": objects.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>()})
    };
    if output == "yaml" {
        print!("{}", serde_yaml::to_string(&value)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

async fn watch(
    conn: &Connection,
    kind: &Resource,
    namespace: Option<&str>,
    args: &Args,
) -> Result<()> {
    let list = fetch(
        conn,
        &format!("{}{}", kind.path(namespace, None), query(args, &[])),
        "application/json",
    )
    .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_owned();
    let path = format!(
        "{}{}",
        kind.path(namespace, None),
        query(args, &[("watch", "true"), ("resourceVersion", &rv)])
    );
    let req = http::Request::get(path)
        .header("Accept", TABLE)
        .body(Vec::new())?;
    let stream = match conn.client.request_stream(req).await {
        Ok(s) => s,
        Err(e) => bail!(server_error(&e)),
    };
    let mut lines = stream.lines();
    // Only the first event carries the column definitions; later ones reuse them.
    let mut columns = Value::Null;
    while let Some(line) = lines.next().await {
        let event: Value = serde_json::from_str(&line?)?;
        if event["type"] == "ERROR" {
            bail!(
                "watch ended: {}",
                event["object"]["message"].as_str().unwrap_or("")
            );
        }
        if event["type"] == "BOOKMARK" {
            continue;
        }
        let mut table = event["object"].clone();
        match table["columnDefinitions"].as_array() {
            Some(c) if !c.is_empty() => columns = table["columnDefinitions"].clone(),
            _ => table["columnDefinitions"] = columns.clone(),
        }
        print!(
            "{}",
            print::table(
                &table,
                args.output.as_deref() == Some("wide"),
                args.all_namespaces,
                false
            )
        );
    }
    Ok(())
}
