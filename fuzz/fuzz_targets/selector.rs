//! Label and field selectors as the list and watch query parameters carry them, and
//! `metav1.LabelSelector` objects, parsed and matched.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skiff_machinery::selector::{FieldSelector, LabelSelector};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    label: &'a str,
    field: &'a str,
    object: &'a [u8],
    labels: BTreeMap<String, String>,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(selector) = LabelSelector::parse(input.label) {
        let matched = selector.matches(&input.labels);
        assert!(
            !selector.is_empty() || matched,
            "an empty selector selects everything"
        );
    }
    for key in input.labels.keys() {
        // A key the parser takes as a plain existence test, and its negation, split every
        // label set in two.
        if let (Ok(exists), Ok(absent)) = (
            LabelSelector::parse(key),
            LabelSelector::parse(&format!("!{key}")),
        ) && exists.matches(&input.labels)
            && !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        {
            assert!(
                !absent.matches(&input.labels),
                "!{key} excludes what {key} selects"
            );
        }
    }
    if let Ok(selector) = FieldSelector::parse(input.field) {
        let labels = &input.labels;
        let matched = selector.matches(&|field| labels.get(field).cloned());
        assert!(
            !selector.is_empty() || matched,
            "an empty selector selects everything"
        );
        for field in selector.fields() {
            let _ = selector.exact(field);
        }
    }
    if let Ok(object) = serde_json::from_slice::<serde_json::Value>(input.object)
        && let Ok(selector) = LabelSelector::from_k8s(&object)
    {
        let _ = selector.matches(&input.labels);
    }
});
