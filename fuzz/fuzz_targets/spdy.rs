//! Port-forward's SPDY/3.1 framing as the node reads a client's byte stream (header blocks
//! inflate through one zlib context per connection); every frame it decodes encodes and
//! decodes back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_machinery::spdy::Codec;

fuzz_target!(|data: &[u8]| {
    let mut client = Codec::new();
    let (mut writer, mut reader) = (Codec::new(), Codec::new());
    let mut rest = data;
    while let Ok(Some((frame, used))) = client.decode(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "a frame takes bytes it was given"
        );
        rest = &rest[used..];
        if let Ok(bytes) = writer.encode(&frame) {
            match reader.decode(&bytes) {
                Ok(Some((again, n))) => {
                    assert_eq!(n, bytes.len(), "an encoded frame decodes whole");
                    assert_eq!(again, frame, "a frame round-trips");
                }
                other => panic!("an encoded {frame:?} does not decode: {other:?}"),
            }
        }
    }
});
