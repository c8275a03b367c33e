//! Event: kubectl's LAST SEEN / TYPE / REASON / OBJECT / MESSAGE columns (core/v1 Events
//! are not validated beyond their metadata, as in Kubernetes).

use serde_json::{Value, json};

use crate::{
    Strategy,
    table::{self, Column, col},
};

/// `v1/Event`.
#[derive(Debug)]
pub struct Event;

const COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        0,
        "Time when the event was last seen.",
    ),
    col("Type", "string", 0, "Type of this event (Normal, Warning)."),
    col(
        "Reason",
        "string",
        0,
        "Short, machine understandable string that gives the reason for this event being generated.",
    ),
    col(
        "Object",
        "string",
        0,
        "The object that this event is about.",
    ),
    col(
        "Message",
        "string",
        0,
        "A human-readable description of the status of this operation.",
    ),
];

impl Strategy for Event {
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let last = o
            .get("lastTimestamp")
            .and_then(Value::as_str)
            .or_else(|| o.get("eventTime").and_then(Value::as_str))
            .or_else(|| {
                o.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
            })
            .map_or_else(|| "<unknown>".to_owned(), |t| table::since(t, now));
        let object = format!(
            "{}/{}",
            table::text(o, "/involvedObject/kind").to_ascii_lowercase(),
            table::text(o, "/involvedObject/name")
        );
        vec![
            json!(last),
            json!(table::text(o, "/type")),
            json!(table::text(o, "/reason")),
            json!(object),
            json!(table::text(o, "/message").trim()),
        ]
    }
}
