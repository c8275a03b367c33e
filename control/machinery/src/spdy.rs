//! SPDY/3.1 framing, the part of it Kubernetes' port-forward speaks (client-go over
//! moby/spdystream): control frames with zlib-compressed header blocks sharing one
//! compression context per direction, and data frames with a FIN flag. kubectl tunnels these
//! frames through a WebSocket (`SPDY/3.1+portforward.k8s.io`).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version every control frame carries.
pub const VERSION: u16 = 3;
/// Data and `SYN_*` flag: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// `RST_STREAM` status: the stream is refused or unknown.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// `RST_STREAM` status: the stream was cancelled.
pub const RST_CANCEL: u32 = 5;
/// The largest frame payload (24 bits of length).
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;
/// The largest header block this codec inflates; port-forward's are a few dozen bytes.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// Why bytes are not a SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another version.
    #[error("unsupported spdy version {0}")]
    Version(u16),
    /// A frame shorter than its type requires.
    #[error("spdy frame of type {0} is too short")]
    Short(u16),
    /// A header block that does not inflate or does not parse.
    #[error("spdy header block: {0}")]
    Headers(String),
    /// A payload longer than 24 bits can say.
    #[error("spdy frame payload of {0} bytes is too long")]
    TooLong(usize),
}

/// Header names (lowercase, as SPDY sends them) and values.
pub type Headers = Vec<(String, String)>;

/// One SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream (odd from clients).
        stream_id: u32,
        /// `FLAG_FIN` and the unidirectional flag.
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// `FLAG_FIN` when nothing follows.
        flags: u8,
        /// The reply's headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why.
        status: u32,
    },
    /// Connection settings (their values do not matter to port-forward).
    Settings,
    /// A liveness check, echoed by its receiver.
    Ping {
        /// Chosen by the sender.
        id: u32,
    },
    /// The sender ends the connection.
    GoAway {
        /// The last stream the sender handled.
        last_good: u32,
        /// Why.
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// `FLAG_FIN`.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit (spdystream neither sends nor honours windows).
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// The credit.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// `FLAG_FIN` on the sender's last frame.
        flags: u8,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A control frame of a type this codec skips.
    Unknown {
        /// Its type.
        kind: u16,
    },
}

impl Frame {
    /// A data frame.
    #[must_use]
    pub fn data(stream_id: u32, data: &[u8]) -> Self {
        Self::Data {
            stream_id,
            flags: 0,
            data: data.to_vec(),
        }
    }

    /// The empty data frame with `FLAG_FIN` that half-closes a stream.
    #[must_use]
    pub fn fin(stream_id: u32) -> Self {
        Self::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Vec::new(),
        }
    }
}

/// The value of header `name` (names compare without case, as Go canonicalises them).
#[must_use]
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The dictionary SPDY/3 primes both header compressors with: the spec's list of common
/// header names (each with its 32-bit length) and then common values.
fn dictionary() -> Vec<u8> {
    const NAMES: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: [&str; 7] = [
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    ];
    let mut dict = Vec::with_capacity(1424);
    for name in NAMES {
        dict.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_be_bytes());
        dict.extend_from_slice(name.as_bytes());
    }
    for value in VALUES {
        dict.extend_from_slice(value.as_bytes());
    }
    dict
}

/// One end of a SPDY connection's framing: its header inflater (fed by the peer's frames)
/// and deflater (for its own), each one zlib stream for the connection's life.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
    dictionary: Vec<u8>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(b)
}

impl Codec {
    /// A fresh connection's framing.
    #[must_use]
    pub fn new() -> Self {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh deflater always takes a dictionary; Go's reader asks for it by checksum.
        let _ = deflate.set_dictionary(&dictionary);
        Self {
            inflate: Decompress::new(true),
            deflate,
            dictionary,
        }
    }

    /// Decodes the frame at the front of `buf`: the frame and the bytes it took, or `None`
    /// while `buf` holds less than a whole frame.
    ///
    /// # Errors
    /// On a frame that is not SPDY/3.1 or whose header block does not inflate; the
    /// connection cannot go on after one (the compression context is lost).
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let len = (u32_at(buf, 4) & 0x00ff_ffff) as usize;
        let total = 8 + len;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = &buf[8..total];
        let word = u32_at(buf, 0);
        if word & 0x8000_0000 == 0 {
            let frame = Frame::Data {
                stream_id: word & 0x7fff_ffff,
                flags,
                data: payload.to_vec(),
            };
            return Ok(Some((frame, total)));
        }
        let version = u16::try_from((word >> 16) & 0x7fff).unwrap_or(0);
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::try_from(word & 0xffff).unwrap_or(0);
        let need = |n: usize| {
            if payload.len() < n {
                Err(SpdyError::Short(kind))
            } else {
                Ok(())
            }
        };
        let id_at = |at: usize| u32_at(payload, at) & 0x7fff_ffff;
        let frame = match kind {
            SYN_STREAM => {
                need(10)?;
                Frame::SynStream {
                    stream_id: id_at(0),
                    flags,
                    headers: self.inflate_headers(&payload[10..])?,
                }
            }
            SYN_REPLY => {
                need(4)?;
                Frame::SynReply {
                    stream_id: id_at(0),
                    flags,
                    headers: self.inflate_headers(&payload[4..])?,
                }
            }
            HEADERS => {
                need(4)?;
                Frame::Headers {
                    stream_id: id_at(0),
                    flags,
                    headers: self.inflate_headers(&payload[4..])?,
                }
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    stream_id: id_at(0),
                    status: u32_at(payload, 4),
                }
            }
            SETTINGS => Frame::Settings,
            PING => {
                need(4)?;
                Frame::Ping {
                    id: u32_at(payload, 0),
                }
            }
            GOAWAY => {
                need(8)?;
                Frame::GoAway {
                    last_good: id_at(0),
                    status: u32_at(payload, 4),
                }
            }
            WINDOW_UPDATE => {
                need(8)?;
                Frame::WindowUpdate {
                    stream_id: id_at(0),
                    delta: id_at(4),
                }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some((frame, total)))
    }

    /// Encodes `frame`.
    ///
    /// # Errors
    /// [`SpdyError::TooLong`] for a payload over 24 bits of length.
    pub fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>, SpdyError> {
        let (kind, flags, payload) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => return with_header(stream_id & 0x7fff_ffff, *flags, data),
            Frame::SynStream {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&stream_id.to_be_bytes());
                // No associated stream, priority 0, slot 0.
                p.extend_from_slice(&[0; 6]);
                p.extend(self.deflate_headers(headers)?);
                (SYN_STREAM, *flags, p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = stream_id.to_be_bytes().to_vec();
                p.extend(self.deflate_headers(headers)?);
                (SYN_REPLY, *flags, p)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = stream_id.to_be_bytes().to_vec();
                p.extend(self.deflate_headers(headers)?);
                (HEADERS, *flags, p)
            }
            Frame::RstStream { stream_id, status } => {
                (RST_STREAM, 0, pair(*stream_id, *status).to_vec())
            }
            Frame::Settings => (SETTINGS, 0, 0u32.to_be_bytes().to_vec()),
            Frame::Ping { id } => (PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last_good, status } => (GOAWAY, 0, pair(*last_good, *status).to_vec()),
            Frame::WindowUpdate { stream_id, delta } => {
                (WINDOW_UPDATE, 0, pair(*stream_id, *delta).to_vec())
            }
            Frame::Unknown { kind } => (*kind, 0, Vec::new()),
        };
        with_header(
            0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind),
            flags,
            &payload,
        )
    }

    fn inflate_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let err = |e: String| SpdyError::Headers(e);
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(err("header block too large".to_owned()));
                }
                out.reserve(out.len().max(256));
            }
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(input.len());
            input = &input[used..];
            match result {
                Ok(Status::Ok | Status::BufError) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                }
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| err(e.to_string()))?;
                }
                Err(e) => return Err(err(e.to_string())),
            }
        }
        parse_headers(&out)
    }

    fn deflate_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::new();
        let count = u32::try_from(headers.len()).map_err(|_| SpdyError::TooLong(headers.len()))?;
        raw.extend_from_slice(&count.to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                let len = u32::try_from(s.len()).map_err(|_| SpdyError::TooLong(s.len()))?;
                raw.extend_from_slice(&len.to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len());
            input = &input[used..];
            // A sync flush is complete once the output buffer was not filled.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut p = [0; 8];
    p[..4].copy_from_slice(&a.to_be_bytes());
    p[4..].copy_from_slice(&b.to_be_bytes());
    p
}

fn with_header(word: u32, flags: u8, payload: &[u8]) -> Result<Vec<u8>, SpdyError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(SpdyError::TooLong(payload.len()));
    }
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&word.to_be_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(0);
    out.extend_from_slice(&((u32::from(flags) << 24) | len).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

fn parse_headers(raw: &[u8]) -> Result<Headers, SpdyError> {
    let short = || SpdyError::Headers("truncated header block".to_owned());
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = raw.get(at..at + n).ok_or_else(short)?;
        at += n;
        Ok(s)
    };
    let count = u32_at(take(4)?, 0);
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut strings = [String::new(), String::new()];
        for s in &mut strings {
            let len = u32_at(take(4)?, 0) as usize;
            *s = String::from_utf8_lossy(take(len)?).into_owned();
        }
        let [name, value] = strings;
        headers.push((name, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        // Its Adler-32, the id a zlib stream primed with it carries.
        let (mut a, mut b) = (1u32, 0u32);
        for byte in &dict {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_share_one_compression_context_per_direction() {
        let mut client = Codec::new();
        let mut server = Codec::new();
        for (id, kind) in [(1, "error"), (3, "data"), (5, "error")] {
            let syn = Frame::SynStream {
                stream_id: id,
                flags: 0,
                headers: headers(&[("streamtype", kind), ("port", "80"), ("requestid", "0")]),
            };
            let bytes = client.encode(&syn).unwrap();
            assert_eq!(bytes[0], 0x80, "a control frame");
            let (frame, used) = server.decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame, syn);
            assert_eq!(
                header(&headers(&[("streamType", kind)]), "streamtype"),
                Some(kind)
            );
            let reply = server
                .encode(&Frame::SynReply {
                    stream_id: id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .unwrap();
            let (frame, _) = client.decode(&reply).unwrap().unwrap();
            assert!(matches!(frame, Frame::SynReply { stream_id, .. } if stream_id == id));
        }
    }

    #[test]
    fn data_frames_carry_a_stream_id_flags_and_bytes() {
        let mut codec = Codec::new();
        let bytes = codec.encode(&Frame::data(3, b"hello")).unwrap();
        assert_eq!(
            bytes,
            [0, 0, 0, 3, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        let fin = codec.encode(&Frame::fin(3)).unwrap();
        assert_eq!(fin, [0, 0, 0, 3, 1, 0, 0, 0]);
        // Two frames and half of a third in one buffer decode one at a time.
        let mut buf = [bytes.clone(), fin.clone(), bytes[..6].to_vec()].concat();
        let (first, n) = codec.decode(&buf).unwrap().unwrap();
        assert_eq!(first, Frame::data(3, b"hello"));
        buf.drain(..n);
        let (second, n) = codec.decode(&buf).unwrap().unwrap();
        assert_eq!(second, Frame::fin(3));
        buf.drain(..n);
        assert_eq!(codec.decode(&buf).unwrap(), None);
    }

    #[test]
    fn control_frames_round_trip_and_other_versions_are_refused() {
        let mut codec = Codec::new();
        for frame in [
            Frame::Ping { id: 7 },
            Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
            Frame::GoAway {
                last_good: 9,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 65536,
            },
            Frame::Settings,
        ] {
            let bytes = codec.encode(&frame).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap().unwrap().0, frame);
        }
        let mut v2 = codec.encode(&Frame::Ping { id: 1 }).unwrap();
        v2[1] = 2;
        assert_eq!(codec.decode(&v2), Err(SpdyError::Version(2)));
        let short = [0x80, 3, 0, 6, 0, 0, 0, 2, 0, 0];
        assert_eq!(codec.decode(&short), Err(SpdyError::Short(PING)));
    }
}
