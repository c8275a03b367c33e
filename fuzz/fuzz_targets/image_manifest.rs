//! What a registry hands the node for an image: the index (picking this platform), the
//! manifest and the config, read through the image store as a pull reads them; and image
//! references as pod specs name them.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use skiff_node_runtime::image::{fuzzing, normalize};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    reference: &'a str,
    index: &'a [u8],
    manifest: &'a [u8],
    config: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(name) = normalize(input.reference) {
        assert_eq!(
            normalize(&name).ok(),
            Some(name.clone()),
            "normalizing is idempotent"
        );
    }
    if let Ok(image) = fuzzing::image_from_documents(input.index, input.manifest, input.config) {
        assert!(image.id.starts_with("sha256:"), "an image id is a digest");
    }
});
