//! downwardAPI volumes: the pod's own metadata and its containers' resources as files,
//! refreshed in place so label and annotation changes reach running containers.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, DownwardAPIVolumeSource, Pod};

use super::{
    FileProjection, Payload, VolumeError, atomic_writer,
    config_map::{DEFAULT_MODE, mode_bits},
    ensure_dir,
};
use crate::pod::command::{ConfigError, NodeLimits, metadata_field, resource};

/// The kubelet's plugin directory name.
pub const PLUGIN: &str = "kubernetes.io~downward-api";

/// Quotes as Go's `%q` does, which is how the kubelet renders label and annotation values.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let n = u32::from(c);
                let _ = if n < 0x80 {
                    write!(out, "\\x{n:02x}")
                } else if n <= 0xffff {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Labels or annotations as the kubelet writes them: `key="value"` lines in key order, no
/// newline after the last.
#[must_use]
pub fn render_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `fieldRef` as a downwardAPI volume allows it: metadata only, and the whole label and
/// annotation maps besides single keys.
fn field(pod: &Pod, path: &str) -> Result<String, ConfigError> {
    if let Some(v) = metadata_field(pod, path) {
        return Ok(v);
    }
    let meta = &pod.metadata;
    Ok(match path {
        "metadata.labels" => render_map(meta.labels.as_ref()),
        "metadata.annotations" => render_map(meta.annotations.as_ref()),
        _ => {
            return Err(ConfigError::Unsupported {
                what: "fieldRef",
                path: path.to_owned(),
            });
        }
    })
}

/// The files of `items`, each with its mode or `default_mode`.
///
/// # Errors
/// An unsupported field or resource, a `resourceFieldRef` naming no container of the pod.
pub fn payload(
    volume: &str,
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    node: NodeLimits,
) -> Result<Payload, VolumeError> {
    let spec = pod.spec.as_ref();
    let mut out = Payload::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field(pod, &f.field_path)?
        } else if let Some(r) = &item.resource_field_ref {
            let wanted = r.container_name.as_deref().unwrap_or_default();
            let container = spec
                .into_iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == wanted)
                .ok_or_else(|| VolumeError::UnknownContainer {
                    volume: volume.to_owned(),
                    container: wanted.to_owned(),
                })?;
            resource(container, r, node)?
        } else {
            continue;
        };
        out.insert(
            item.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: mode_bits(item.mode, default_mode),
            },
        );
    }
    Ok(out)
}

/// Writes (or refreshes) the volume in `dir`.
///
/// # Errors
/// As [`payload`], or a write failure.
pub fn setup(
    dir: &Path,
    volume: &str,
    pod: &Pod,
    source: &DownwardAPIVolumeSource,
    node: NodeLimits,
) -> Result<(), VolumeError> {
    let payload = payload(
        volume,
        pod,
        source.items.as_deref().unwrap_or_default(),
        mode_bits(source.default_mode, DEFAULT_MODE),
        node,
    )?;
    ensure_dir(dir)?;
    if atomic_writer::write(dir, &payload)? {
        tracing::debug!(volume, dir = %dir.display(), "downwardAPI volume updated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            Container, ObjectFieldSelector, PodSpec, ResourceFieldSelector, ResourceRequirements,
        },
        apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
    };

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".to_owned()),
                namespace: Some("prod".to_owned()),
                uid: Some("u-1".to_owned()),
                labels: Some(BTreeMap::from([
                    ("tier".to_owned(), "front".to_owned()),
                    ("app".to_owned(), "web".to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "note".to_owned(),
                    "say \"hi\"\nthen\tgo".to_owned(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".to_owned(),
                    resources: Some(ResourceRequirements {
                        limits: Some(BTreeMap::from([
                            ("cpu".to_owned(), Quantity("250m".to_owned())),
                            ("memory".to_owned(), Quantity("64Mi".to_owned())),
                        ])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn field_item(path: &str, field: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.to_owned(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn resource_item(path: &str, container: &str, res: &str, div: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.to_owned(),
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(container.to_owned()),
                resource: res.to_owned(),
                divisor: Some(Quantity(div.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn text(p: &Payload, key: &str) -> String {
        String::from_utf8(p[key].data.clone()).unwrap()
    }

    #[test]
    fn metadata_fields_render_like_the_kubelet() {
        let items = [
            field_item("name", "metadata.name"),
            field_item("ns", "metadata.namespace"),
            field_item("uid", "metadata.uid"),
            field_item("labels", "metadata.labels"),
            field_item("annotations", "metadata.annotations"),
            field_item("tier", "metadata.labels['tier']"),
        ];
        let p = payload("info", &pod(), &items, 0o644, NodeLimits::default()).unwrap();
        assert_eq!(text(&p, "name"), "web");
        assert_eq!(text(&p, "ns"), "prod");
        assert_eq!(text(&p, "uid"), "u-1");
        assert_eq!(text(&p, "labels"), "app=\"web\"\ntier=\"front\"");
        assert_eq!(text(&p, "annotations"), r#"note="say \"hi\"\nthen\tgo""#);
        assert_eq!(text(&p, "tier"), "front");
        assert_eq!(p["name"].mode, 0o644);
    }

    #[test]
    fn resources_use_limits_divisors_and_node_allocatable() {
        let node = NodeLimits {
            cpu_milli: 4000,
            memory_bytes: 8 << 30,
            ephemeral_bytes: 0,
        };
        let items = [
            resource_item("cpu", "app", "limits.cpu", "1m"),
            resource_item("mem", "app", "limits.memory", "1Mi"),
            resource_item("req", "app", "requests.cpu", "1"),
        ];
        let p = payload("res", &pod(), &items, 0o644, node).unwrap();
        assert_eq!(text(&p, "cpu"), "250");
        assert_eq!(text(&p, "mem"), "64");
        assert_eq!(text(&p, "req"), "0");
    }

    #[test]
    fn unknown_container_and_unsupported_field_are_errors() {
        let items = [resource_item("x", "nope", "limits.cpu", "1")];
        let err = payload("res", &pod(), &items, 0o644, NodeLimits::default()).unwrap_err();
        assert!(matches!(err, VolumeError::UnknownContainer { .. }), "{err}");
        let items = [field_item("ip", "status.podIP")];
        let err = payload("res", &pod(), &items, 0o644, NodeLimits::default()).unwrap_err();
        assert_eq!(err.to_string(), "unsupported fieldRef: status.podIP");
    }

    #[test]
    fn label_change_rewrites_the_file_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let src = DownwardAPIVolumeSource {
            items: Some(vec![field_item("labels", "metadata.labels")]),
            default_mode: Some(0o444),
        };
        let mut p = pod();
        setup(tmp.path(), "info", &p, &src, NodeLimits::default()).unwrap();
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "v2".to_owned())]));
        setup(tmp.path(), "info", &p, &src, NodeLimits::default()).unwrap();
        let got = std::fs::read_to_string(tmp.path().join("labels")).unwrap();
        assert_eq!(got, "app=\"v2\"");
    }
}
