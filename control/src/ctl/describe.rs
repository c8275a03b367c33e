//! `ctl describe`: one object's identity, its spec and status in readable form, and the
//! events about it.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{
    connect::{Connection, server_error},
    print,
};

/// `ctl describe` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Resource.
    kind: String,
    /// Name.
    name: String,
}

fn map_lines(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n              "),
        _ => "<none>".into(),
    }
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}", " ".repeat(by)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(conn: &Connection, args: &Args) -> Result<()> {
    let kind = conn.resolve(&args.kind)?.clone();
    let path = kind.path(Some(&conn.namespace), Some(&args.name));
    let obj: Value = match conn
        .client
        .request(http::Request::get(&path).body(Vec::new())?)
        .await
    {
        Ok(v) => v,
        Err(e) => bail!(server_error(&e)),
    };
    let meta = &obj["metadata"];
    println!("Name:         {}", meta["name"].as_str().unwrap_or(""));
    if kind.namespaced {
        println!("Namespace:    {}", meta["namespace"].as_str().unwrap_or(""));
    }
    println!("Labels:       {}", map_lines(&meta["labels"]));
    let mut annotations = meta["annotations"].clone();
    if let Some(a) = annotations.as_object_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    println!("Annotations:  {}", map_lines(&annotations));
    println!(
        "CreationTimestamp:  {}",
        meta["creationTimestamp"].as_str().unwrap_or("")
    );
    for section in ["spec", "data", "status"] {
        if let Some(v) = obj.get(section).filter(|v| !v.is_null()) {
            let title = format!("{}{}", section[..1].to_ascii_uppercase(), &section[1..]);
            println!("{title}:");
            println!("{}", indent(serde_yaml::to_string(v)?.trim_end(), 2));
        }
    }
    let events = match conn.resolve("events") {
        Ok(ev) => {
            let selector = format!(
                "involvedObject.name={},involvedObject.kind={}",
                args.name, kind.kind
            );
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("fieldSelector", &selector)
                .finish();
            let req = http::Request::get(format!("{}?{q}", ev.path(Some(&conn.namespace), None)))
                .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
                .body(Vec::new())?;
            conn.client.request::<Value>(req).await.ok()
        }
        Err(_) => None,
    };
    match events {
        Some(t) if t["rows"].as_array().is_some_and(|r| !r.is_empty()) => {
            println!("Events:");
            print!("{}", indent(&print::table(&t, false, false, true), 2));
            println!();
        }
        _ => println!("Events:       <none>"),
    }
    Ok(())
}
