//! The API's JSON as the Go apiserver writes it, which clients compare byte for byte: each
//! struct's fields in Go declaration order, the fields Go always writes (non-`omitempty`,
//! or struct-typed) with their zero values when absent, `omitempty` fields left out when
//! empty, `<`, `>` and `&` escaped as Go's `encoding/json` does, and a trailing newline.
//! The Go types come from the generated [`go_types`] table.

#[rustfmt::skip]
mod go_types;

use std::{io, sync::LazyLock};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value, ser::Formatter};
use skiff_machinery::omitempty::is_empty;

/// One Go struct: its fields in declaration order (inline structs flattened).
#[derive(Debug)]
struct GoStruct {
    /// `package.Name`, for reading the table.
    #[expect(
        dead_code,
        reason = "names the entry for readers of the generated table"
    )]
    name: &'static str,
    fields: &'static [Field],
}

/// One field of a Go struct.
#[derive(Debug)]
struct Field {
    /// The JSON name.
    name: &'static str,
    /// The Go type of what the field holds, when it is (or holds) a struct.
    nested: Nested,
    /// When Go writes the field.
    emit: Emit,
}

/// What a field holds, as far as its encoding goes.
#[derive(Debug, Clone, Copy)]
enum Nested {
    /// A value with no fields to order (scalars, maps of scalars, lists of scalars).
    Leaf,
    /// A struct (index into the table).
    Struct(usize),
    /// A list of structs.
    Items(usize),
    /// An embedded object typed by its own `apiVersion` and `kind`.
    Embedded,
}

/// When Go writes a field.
#[derive(Debug, Clone, Copy)]
enum Emit {
    /// Always; this zero value when the object lacks it.
    Always(Zero),
    /// Unless absent or null (an `omitempty` pointer).
    UnlessNil,
    /// Unless absent, null, false, zero, or an empty text, list or map (`omitempty`).
    UnlessEmpty,
}

/// A Go zero value.
#[derive(Debug, Clone, Copy)]
enum Zero {
    Null,
    Text(&'static str),
    Number,
    False,
    /// A struct of zero values (index into the table).
    Fill(usize),
}

/// Go types that objects do not name with `apiVersion` and `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untyped {
    /// `metav1.WatchEvent`: one line of a watch.
    WatchEvent,
    /// `version.Info`: the answer to `/version`.
    VersionInfo,
    /// `metav1.APIVersions`: the answer to `/api`, which names no `apiVersion`.
    ApiVersions,
}

/// `value` as Go writes it, typed by its own `apiVersion` and `kind` (as is when it names no
/// known type), with the trailing newline.
#[must_use]
pub fn encode(value: &Value) -> Vec<u8> {
    let nested = match value {
        Value::Object(map) => kind_of(map).map_or(Nested::Leaf, Nested::Struct),
        _ => Nested::Leaf,
    };
    write(&Typed { value, nested })
}

/// `value` written as the Go type `untyped`, with the trailing newline.
#[must_use]
pub fn encode_as(value: &Value, untyped: Untyped) -> Vec<u8> {
    write(&typed_as(value, untyped))
}

/// `value` written as the Go type `untyped`, indented by two spaces and without a trailing
/// newline, as Go's `json.MarshalIndent` writes the raw answers (`/version`).
#[must_use]
pub fn encode_indented_as(value: &Value, untyped: Untyped) -> Vec<u8> {
    let mut compact = write(&typed_as(value, untyped));
    compact.pop();
    indent(&compact)
}

fn typed_as(value: &Value, untyped: Untyped) -> Typed<'_> {
    let id = match untyped {
        Untyped::WatchEvent => go_types::WATCH_EVENT,
        Untyped::VersionInfo => go_types::VERSION_INFO,
        Untyped::ApiVersions => go_types::API_VERSIONS,
    };
    Typed {
        value,
        nested: Nested::Struct(id),
    }
}

/// Re-indents compact JSON as `json.MarshalIndent(v, "", "  ")` does.
fn indent(compact: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(compact.len() * 2);
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let newline = |out: &mut Vec<u8>, depth: usize| {
        out.push(b'\n');
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    for (i, &b) in compact.iter().enumerate() {
        if in_string {
            out.push(b);
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'{' | b'[' => {
                out.push(b);
                // An empty object or array stays on one line.
                if !matches!(compact.get(i + 1), Some(b'}' | b']')) {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            b'}' | b']' => {
                if !matches!(compact.get(i.wrapping_sub(1)), Some(b'{' | b'[')) {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                }
                out.push(b);
            }
            b',' => {
                out.push(b);
                newline(&mut out, depth);
            }
            b':' => out.extend_from_slice(b": "),
            _ => out.push(b),
        }
    }
    out
}

fn write(typed: &Typed<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Writing a `serde_json::Value` into memory cannot fail: its keys are strings.
    typed
        .serialize(&mut ser)
        .expect("a JSON value serializes into memory");
    out.push(b'\n');
    out
}

fn kind_of(map: &Map<String, Value>) -> Option<usize> {
    let api_version = map.get("apiVersion")?.as_str()?;
    let kind = map.get("kind")?.as_str()?;
    go_types::by_kind(api_version, kind)
}

/// A value with the Go type it is written as.
struct Typed<'a> {
    value: &'a Value,
    nested: Nested,
}

impl Serialize for Typed<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.nested, self.value) {
            (Nested::Struct(id), Value::Object(map)) => Struct { id, map: Some(map) }.serialize(s),
            (Nested::Embedded, Value::Object(map)) => match kind_of(map) {
                Some(id) => Struct { id, map: Some(map) }.serialize(s),
                None => self.value.serialize(s),
            },
            (Nested::Items(id), Value::Array(items)) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Typed {
                        value: item,
                        nested: Nested::Struct(id),
                    })?;
                }
                seq.end()
            }
            _ => self.value.serialize(s),
        }
    }
}

/// A struct's fields (`None`: the struct's zero value).
struct Struct<'a> {
    id: usize,
    map: Option<&'a Map<String, Value>>,
}

impl Serialize for Struct<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let def = &go_types::STRUCTS[self.id];
        let last_always = LAST_ALWAYS[self.id];
        let len = self.map.map_or(0, Map::len);
        let mut out = s.serialize_map(None)?;
        let mut known = 0;
        for (i, field) in def.fields.iter().enumerate() {
            // Every key of the object written and no always-written field left: done.
            if known == len && last_always.is_none_or(|last| i > last) {
                break;
            }
            let present = if known < len {
                self.map.and_then(|m| m.get(field.name))
            } else {
                None
            };
            known += usize::from(present.is_some());
            match (present, field.emit) {
                (Some(v), Emit::UnlessEmpty) if is_empty(v) => {}
                (Some(Value::Null), Emit::UnlessNil)
                | (None, Emit::UnlessNil | Emit::UnlessEmpty) => {}
                // Go decodes null into a non-pointer field as its zero value.
                (Some(Value::Null) | None, Emit::Always(zero)) => {
                    out.serialize_entry(field.name, &ZeroOf(zero))?;
                }
                (Some(v), _) => out.serialize_entry(
                    field.name,
                    &Typed {
                        value: v,
                        nested: field.nested,
                    },
                )?,
            }
        }
        // Fields Go does not know (stored before a schema change, or kept by
        // `fieldValidation=Ignore`) follow, in stored order.
        if let Some(map) = self.map
            && known < map.len()
        {
            for (k, v) in map {
                if !def.fields.iter().any(|f| f.name == k) {
                    out.serialize_entry(k, v)?;
                }
            }
        }
        out.end()
    }
}

/// Per struct, the position of the last field Go always writes.
static LAST_ALWAYS: LazyLock<Vec<Option<usize>>> = LazyLock::new(|| {
    go_types::STRUCTS
        .iter()
        .map(|def| {
            def.fields
                .iter()
                .rposition(|f| matches!(f.emit, Emit::Always(_)))
        })
        .collect()
});

struct ZeroOf(Zero);

impl Serialize for ZeroOf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Zero::Null => s.serialize_unit(),
            Zero::Text(t) => s.serialize_str(t),
            Zero::Number => s.serialize_i64(0),
            Zero::False => s.serialize_bool(false),
            Zero::Fill(id) => Struct { id, map: None }.serialize(s),
        }
    }
}

/// `serde_json`'s compact output with Go's HTML-safe escapes.
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let bytes = fragment.as_bytes();
        // Most text has nothing to escape: one write, as serde_json's own formatter does.
        if !bytes.iter().any(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2)) {
            return writer.write_all(bytes);
        }
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let (escape, len): (&[u8], usize) = match bytes[i] {
                b'<' => (b"\\u003c", 1),
                b'>' => (b"\\u003e", 1),
                b'&' => (b"\\u0026", 1),
                // U+2028 and U+2029 (E2 80 A8 / E2 80 A9), which JavaScript reads as newlines.
                0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA8) => {
                    (b"\\u2028", 3)
                }
                0xE2 if bytes.get(i + 1) == Some(&0x80) && bytes.get(i + 2) == Some(&0xA9) => {
                    (b"\\u2029", 3)
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            writer.write_all(&bytes[start..i])?;
            writer.write_all(escape)?;
            i += len;
            start = i;
        }
        writer.write_all(&bytes[start..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text(value: &Value) -> String {
        String::from_utf8(encode(value)).unwrap()
    }

    #[test]
    fn a_status_is_written_in_go_struct_order_with_a_newline() {
        let status = json!({"code": 404, "details": {"kind": "configmaps", "name": "nope", "group": ""},
            "message": "configmaps \"nope\" not found", "reason": "NotFound", "status": "Failure",
            "metadata": {}, "apiVersion": "v1", "kind": "Status"});
        assert_eq!(
            text(&status),
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\
             \"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\
             \"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
        );
    }

    #[test]
    fn a_service_carries_the_structs_go_always_writes() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "u", "resourceVersion": "5",
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "ClusterIP", "selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                "ports": [{"targetPort": 80, "protocol": "TCP", "port": 80}]},
            "status": {}});
        assert_eq!(
            text(&svc),
            concat!(
                r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"web","namespace":"default","#,
                r#""uid":"u","resourceVersion":"5","creationTimestamp":"2026-01-01T00:00:00Z"},"#,
                r#""spec":{"ports":[{"protocol":"TCP","port":80,"targetPort":80}],"selector":{"app":"web"},"#,
                r#""clusterIP":"10.96.0.10","type":"ClusterIP"},"status":{"loadBalancer":{}}}"#,
                "\n"
            )
        );
    }

    #[test]
    fn pod_templates_get_a_null_creation_timestamp_and_a_deployment_its_empty_status() {
        let d = json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "resources": {}}]}}}});
        let out = text(&d);
        assert!(
            out.contains(r#""template":{"metadata":{"creationTimestamp":null,"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i","resources":{}}]}}"#),
            "{out}"
        );
        assert!(out.ends_with(",\"status\":{}}\n"), "{out}");
        assert!(
            out.starts_with(r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d","creationTimestamp":null},"spec":{"selector""#),
            "{out}"
        );
    }

    #[test]
    fn omitempty_fields_are_left_out_when_empty_and_pointers_only_when_nil() {
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "labels": {}},
            "spec": {"hostNetwork": false, "automountServiceAccountToken": false, "nodeName": "",
                "containers": []}});
        let out = text(&pod);
        assert!(
            !out.contains("hostNetwork") && !out.contains("labels"),
            "{out}"
        );
        assert!(
            out.contains(r#""automountServiceAccountToken":false"#),
            "{out}"
        );
        assert!(!out.contains("nodeName"), "{out}");
    }

    #[test]
    fn list_items_watch_events_and_table_rows_are_typed_by_their_kind() {
        let list = json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {"resourceVersion": "3"},
            "items": [{"kind": "ConfigMap", "apiVersion": "v1", "data": {"k": "v"}, "metadata": {"name": "c"}}]});
        assert_eq!(
            text(&list),
            "{\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"3\"},\
             \"items\":[{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"c\",\
             \"creationTimestamp\":null},\"data\":{\"k\":\"v\"}}]}\n"
        );
        let event = json!({"object": {"metadata": {"name": "c"}, "apiVersion": "v1", "kind": "ConfigMap"}, "type": "ADDED"});
        assert_eq!(
            String::from_utf8(encode_as(&event, Untyped::WatchEvent)).unwrap(),
            "{\"type\":\"ADDED\",\"object\":{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\
             \"metadata\":{\"name\":\"c\",\"creationTimestamp\":null}}}\n"
        );
    }

    #[test]
    fn events_carry_their_always_written_fields() {
        let ev = json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Started", "type": "Normal"});
        assert_eq!(
            text(&ev),
            concat!(
                r#"{"kind":"Event","apiVersion":"v1","metadata":{"name":"e","creationTimestamp":null},"#,
                r#""involvedObject":{"kind":"Pod","name":"p"},"reason":"Started","source":{},"#,
                r#""firstTimestamp":null,"lastTimestamp":null,"type":"Normal","eventTime":null,"#,
                r#""reportingComponent":"","reportingInstance":""}"#,
                "\n"
            )
        );
    }

    #[test]
    fn the_version_is_indented_as_go_marshal_indent_writes_it() {
        let info = json!({"platform": "linux/amd64", "major": "1", "minor": "33", "gitVersion": "v1.33.0",
            "gitCommit": "", "gitTreeState": "clean", "buildDate": "x", "goVersion": "rust", "compiler": "rustc"});
        assert_eq!(
            String::from_utf8(encode_indented_as(&info, Untyped::VersionInfo)).unwrap(),
            "{\n  \"major\": \"1\",\n  \"minor\": \"33\",\n  \"gitVersion\": \"v1.33.0\",\n  \"gitCommit\": \"\",\n  \
             \"gitTreeState\": \"clean\",\n  \"buildDate\": \"x\",\n  \"goVersion\": \"rust\",\n  \"compiler\": \"rustc\",\n  \
             \"platform\": \"linux/amd64\"\n}"
        );
        let nested = json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "a:1"}]});
        assert_eq!(
            String::from_utf8(encode_as(&nested, Untyped::ApiVersions)).unwrap(),
            "{\"kind\":\"APIVersions\",\"versions\":[\"v1\"],\"serverAddressByClientCIDRs\":[{\"clientCIDR\":\"0.0.0.0/0\",\"serverAddress\":\"a:1\"}]}\n"
        );
        assert_eq!(
            indent(br#"{"a":[],"b":{},"c":"x,{"}"#),
            b"{\n  \"a\": [],\n  \"b\": {},\n  \"c\": \"x,{\"\n}"
        );
    }

    #[test]
    fn html_characters_are_escaped_as_go_does() {
        let v = json!({"a": "<none> & \u{2028}"});
        assert_eq!(text(&v), "{\"a\":\"\\u003cnone\\u003e \\u0026 \\u2028\"}\n");
    }

    #[test]
    fn unknown_fields_follow_the_known_ones() {
        let cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "zzz": 1, "aaa": 2, "metadata": {"name": "c", "creationTimestamp": "t"}});
        assert_eq!(
            text(&cm),
            "{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"c\",\"creationTimestamp\":\"t\"},\"aaa\":2,\"zzz\":1}\n"
        );
    }
}
