//! Objects as the API server decodes a create or update body: JSON, YAML or protobuf by
//! Content-Type.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = match selector % 4 {
        0 => "application/json",
        1 => "application/yaml",
        2 => "application/vnd.kubernetes.protobuf",
        _ => "application/json; charset=utf-8",
    };
    if let Some(obj) = skiff_api::fuzzing::decode_object(content_type, body) {
        assert!(obj.is_object(), "an accepted body is an object");
        // What is stored is the object re-encoded as JSON, which must read back the same.
        let bytes = serde_json::to_vec(&obj).expect("a decoded object encodes");
        let back: serde_json::Value =
            serde_json::from_slice(&bytes).expect("encoded JSON reads back");
        assert!(
            back.is_object(),
            "an encoded object reads back as an object"
        );
    }
});
