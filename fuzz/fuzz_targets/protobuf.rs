//! The API server's protobuf body decoder (`application/vnd.kubernetes.protobuf`): the
//! `k8s\0` envelope, then the kinds skiff decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The envelope is fixed; prefixing it lets the fuzzer spend its time on the message.
    let mut body = b"k8s\0".to_vec();
    body.extend_from_slice(data);
    if let Some(obj) = skiff_api::fuzzing::decode_protobuf(&body) {
        assert!(obj.is_object(), "a decoded object is a JSON object");
    }
    let _ = skiff_api::fuzzing::decode_protobuf(data);
});
