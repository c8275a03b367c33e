//! Reading manifests: files, directories (*.yaml, *.yml, *.json, sorted), `-` for stdin,
//! multi-document YAML and `List` kinds.

use std::{io::Read, path::Path};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// Every object in the given sources, in order.
pub fn load(sources: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for source in sources {
        if source == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            out.extend(parse(&text).context("reading stdin")?);
            continue;
        }
        let path = Path::new(source);
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            for file in files {
                let text = std::fs::read_to_string(&file)?;
                out.extend(parse(&text).with_context(|| file.display().to_string())?);
            }
        } else {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("the path \"{source}\" does not exist"))?;
            out.extend(parse(&text).with_context(|| source.clone())?);
        }
    }
    Ok(out)
}

/// Objects in one YAML or JSON text.
pub fn parse(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("error parsing YAML")?;
        match value {
            Value::Null => {}
            Value::Object(ref m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                out.extend(
                    m.get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_skips_empty_documents_and_expands_lists() {
        let text = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n";
        let objs = parse(text).unwrap();
        let names: Vec<&str> = objs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn directories_load_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: B\n").unwrap();
        std::fs::write(dir.path().join("a.json"), "{\"kind\": \"A\"}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "kind: X\n").unwrap();
        let objs = load(&[dir.path().display().to_string()]).unwrap();
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["A", "B"]);
    }
}
