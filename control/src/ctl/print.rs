//! Printing server-side Tables like kubectl: upper-case headers, columns three spaces
//! apart, wide columns only with `-o wide`, a NAMESPACE column with `-A`.

use serde_json::Value;

/// Renders rows of `table` as aligned text.
pub fn table(table: &Value, wide: bool, with_namespace: bool, header: bool) -> String {
    let columns: Vec<(usize, String)> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| wide || c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|(i, c)| (i, c["name"].as_str().unwrap_or("").to_ascii_uppercase()))
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::new();
    if header {
        let mut h: Vec<String> = columns.iter().map(|(_, n)| n.clone()).collect();
        if with_namespace {
            h.insert(0, "NAMESPACE".into());
        }
        rows.push(h);
    }
    for row in table["rows"].as_array().into_iter().flatten() {
        let cells = row["cells"].as_array().cloned().unwrap_or_default();
        let mut r: Vec<String> = columns
            .iter()
            .map(|(i, _)| match cells.get(*i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "<none>".into(),
                Some(other) => other.to_string(),
            })
            .collect();
        if with_namespace {
            let ns = row["object"]["metadata"]["namespace"]
                .as_str()
                .unwrap_or("");
            r.insert(0, ns.to_owned());
        }
        rows.push(r);
    }
    align(&rows)
}

/// Left-aligns columns with three spaces between them.
pub fn align(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.iter().map(Vec::len).max().unwrap_or(0))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (c, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if c < last {
                out.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Value {
        json!({
            "columnDefinitions": [
                {"name": "Name", "priority": 0}, {"name": "Ready", "priority": 0},
                {"name": "Node", "priority": 1}],
            "rows": [
                {"cells": ["web-1", "1/1", "n1"], "object": {"metadata": {"namespace": "demo"}}},
                {"cells": ["a", "0/1", null], "object": {"metadata": {"namespace": "default"}}}]
        })
    }

    #[test]
    fn columns_are_aligned_three_spaces_apart() {
        assert_eq!(
            table(&sample(), false, false, true),
            "NAME    READY\nweb-1   1/1\na       0/1\n"
        );
    }

    #[test]
    fn wide_adds_priority_columns_and_all_namespaces_adds_namespace() {
        let out = table(&sample(), true, true, true);
        assert_eq!(
            out.lines().next().unwrap(),
            "NAMESPACE   NAME    READY   NODE"
        );
        assert!(out.contains("default     a       0/1     <none>"));
    }
}
