//! Resource quantities as pod specs, quotas and limit ranges write them: parsing never
//! panics, and the canonical form of a parsed value reads back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_machinery::quantity::{format_milli, parse_milli};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(milli) = parse_milli(text) {
        let canonical = format_milli(milli);
        assert_eq!(
            parse_milli(&canonical),
            Some(milli),
            "{text:?} parsed to {milli}, printed as {canonical:?}"
        );
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(data) {
        let milli = i64::from_le_bytes(bytes);
        assert_eq!(parse_milli(&format_milli(milli)), Some(milli), "{milli}");
    }
});
