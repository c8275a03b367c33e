//! The node endpoint's WebSocket stream protocols (exec, attach, port-forward) as it reads
//! a client: the subprotocol it negotiates, then each binary frame split by channel (stdin,
//! terminal resize JSON, the v5 close of a stream), and port-forward's port list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_machinery::{
    channel::{self, Incoming},
    portforward,
};
use skiff_node_server::TerminalSize;

fuzz_target!(|data: &[u8]| {
    let (head, frames) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let offered = String::from_utf8_lossy(head);
    let protocols: Vec<&str> = offered.split(',').collect();
    let _ = channel::Protocol::negotiate(protocols.iter().copied());
    let _ = portforward::Protocol::negotiate(protocols.iter().copied());
    let _ = portforward::ports(protocols.iter().copied());
    // Frames are length-prefixed by one byte here, as the WebSocket layer hands them over
    // whole.
    let mut rest = frames;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        match channel::parse(frame) {
            Incoming::Stdin(bytes) => assert_eq!(bytes.len() + 1, frame.len()),
            Incoming::Resize(json) => {
                let _ = serde_json::from_slice::<TerminalSize>(json);
            }
            Incoming::Close(ch) => assert_eq!(Some(&ch), frame.get(1)),
            Incoming::Ignored => {}
        }
    }
    let count = usize::from(data.first().copied().unwrap_or(1) % 8);
    for ch in 0..=u8::MAX {
        let _ = portforward::data_port_index(ch, count);
    }
});
