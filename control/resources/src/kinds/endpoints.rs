//! Endpoints: kubectl's ENDPOINTS column (the first three addresses and a count).

use serde_json::{Value, json};

use crate::{
    Strategy,
    table::{self, AGE, Column, NAME, col},
};

/// `v1/Endpoints`.
#[derive(Debug)]
pub struct Endpoints;

const COLUMNS: &[Column] = &[
    NAME,
    col("Endpoints", "string", 0, "Endpoints of the service."),
    AGE,
];

impl Strategy for Endpoints {
    fn columns(&self) -> &'static [Column] {
        COLUMNS
    }

    fn row(&self, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let mut eps = Vec::new();
        for subset in o
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ports: Vec<i64> = subset
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| table::int(p, "/port"))
                .collect();
            for a in subset
                .get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let ip = table::text(a, "/ip");
                if ports.is_empty() {
                    eps.push(ip.to_owned());
                }
                eps.extend(ports.iter().map(|p| format!("{ip}:{p}")));
            }
        }
        let shown = match eps.len() {
            0 => "<none>".to_owned(),
            n if n > 3 => format!("{} + {} more...", eps[..3].join(","), n - 3),
            _ => eps.join(","),
        };
        vec![table::name(o), json!(shown), table::age(o, now)]
    }
}
