//! Copies a container's stdout and stderr FIFOs into a CRI-format log file (the format the
//! kubelet and `kubectl logs` expect), rotating it by size.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use tokio::{io::AsyncReadExt, net::unix::pipe::Receiver, sync::broadcast};

use super::{config::LogRotation, terminal::Chunk};

/// Longest line written as one record; longer output is cut into partial (`P`) records,
/// as containerd does.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl StreamKind {
    /// The name in the CRI log line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// RFC 3339 with nanoseconds in UTC, as CRI log lines carry.
#[must_use]
pub fn format_timestamp(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(
        |_| "1970-01-01T00:00:00Z".to_owned(),
        |ts| format!("{ts:.9}"),
    )
}

/// One CRI log line: `<timestamp> <stream> <F|P> <content>\n`.
#[must_use]
pub fn format_cri_line(
    at: SystemTime,
    stream: StreamKind,
    partial: bool,
    content: &[u8],
) -> Vec<u8> {
    let ts = format_timestamp(at);
    let mut line = Vec::with_capacity(ts.len() + content.len() + 12);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_str().as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// Cuts a byte stream into log records: full lines (without their newline) and, for lines
/// longer than [`MAX_LINE`] or cut off at the end, partial pieces.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

/// A piece of output ready to be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The bytes, without a trailing newline.
    pub content: Vec<u8>,
    /// The line continues in the next record.
    pub partial: bool,
}

impl LineSplitter {
    /// Feeds `bytes` and returns the records they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..nl]);
            self.cut_long(&mut out);
            out.push(Record {
                content: std::mem::take(&mut self.pending),
                partial: false,
            });
            bytes = &bytes[nl + 1..];
        }
        self.pending.extend_from_slice(bytes);
        self.cut_long(&mut out);
        out
    }

    /// The unterminated rest as a partial record, when the stream ends.
    pub fn finish(&mut self) -> Option<Record> {
        (!self.pending.is_empty()).then(|| Record {
            content: std::mem::take(&mut self.pending),
            partial: true,
        })
    }

    fn cut_long(&mut self, out: &mut Vec<Record>) {
        while self.pending.len() > MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            out.push(Record {
                content: std::mem::replace(&mut self.pending, rest),
                partial: true,
            });
        }
    }
}

/// Appends CRI lines to a log file and rotates it by size: `<path>` becomes `<path>.1`,
/// older files shift up, and the oldest beyond `max_files` is dropped.
#[derive(Debug)]
pub struct CriLogWriter {
    path: PathBuf,
    rotation: LogRotation,
    file: File,
    size: u64,
}

impl CriLogWriter {
    /// Opens (or creates) `path` for appending, creating its directory.
    ///
    /// # Errors
    /// If the directory or file cannot be created.
    pub fn open(path: &Path, rotation: LogRotation) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            rotation,
            file,
            size,
        })
    }

    /// Writes one record, rotating first if it would overflow the file.
    ///
    /// # Errors
    /// If writing or rotating fails.
    pub fn write(&mut self, at: SystemTime, stream: StreamKind, record: &Record) -> io::Result<()> {
        let line = format_cri_line(at, stream, record.partial, &record.content);
        let len = line.len() as u64;
        if self.size > 0 && self.size + len > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        if keep == 1 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..keep - 1).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        tracing::debug!(path = %self.path.display(), "rotated container log");
        Ok(())
    }
}

/// `<path>.<n>`.
#[must_use]
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Copies `stdout` and `stderr` into `writer` until `stop` resolves (the container's init
/// exited), then drains what is left in the pipes and writes unterminated lines as partial.
/// With a `tap` (a container's terminal, read as `stdout`), every read of `stdout` is also
/// sent there as it came, prompts and echoes that end no line included; the tap is dropped
/// when the pump ends.
///
/// Writes go to a local file in small batches (one per read), so they are done inline.
pub async fn pump(
    mut stdout: Receiver,
    mut stderr: Receiver,
    mut writer: CriLogWriter,
    stop: impl Future<Output = ()>,
    tap: Option<broadcast::Sender<Chunk>>,
) {
    let tap = tap.as_ref();
    let mut out_lines = LineSplitter::default();
    let mut err_lines = LineSplitter::default();
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 32 * 1024];
    let mut stop = std::pin::pin!(stop);
    let mut out_open = true;
    let mut err_open = true;
    while out_open || err_open {
        tokio::select! {
            r = stdout.read(&mut out_buf), if out_open => {
                if let (Some(tap), Ok(n @ 1..)) = (tap, &r) {
                    let _ = tap.send(Chunk::from(&out_buf[..*n]));
                }
                out_open = take(r, &out_buf, &mut out_lines, StreamKind::Stdout, &mut writer);
            }
            r = stderr.read(&mut err_buf), if err_open => {
                err_open = take(r, &err_buf, &mut err_lines, StreamKind::Stderr, &mut writer);
            }
            () = &mut stop => break,
        }
    }
    // The init is gone and with it every process of its PID namespace: what is in the pipes
    // now is all there will be.
    for (pipe, buf, lines, kind) in [
        (&stdout, &mut out_buf, &mut out_lines, StreamKind::Stdout),
        (&stderr, &mut err_buf, &mut err_lines, StreamKind::Stderr),
    ] {
        // A plain non-blocking read: tokio's `try_read` answers WouldBlock without asking
        // the kernel unless the reactor already saw the pipe readable.
        loop {
            match nix::unistd::read(std::os::fd::AsFd::as_fd(pipe), buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let (Some(tap), StreamKind::Stdout) = (tap, kind) {
                        let _ = tap.send(Chunk::from(&buf[..n]));
                    }
                    emit(&lines.push(&buf[..n]), kind, &mut writer);
                }
            }
        }
        if let Some(rest) = lines.finish() {
            emit(&[rest], kind, &mut writer);
        }
    }
}

fn take(
    read: io::Result<usize>,
    buf: &[u8],
    lines: &mut LineSplitter,
    kind: StreamKind,
    writer: &mut CriLogWriter,
) -> bool {
    match read {
        Ok(0) => false,
        Ok(n) => {
            emit(&lines.push(&buf[..n]), kind, writer);
            true
        }
        Err(err) if err.kind() == io::ErrorKind::Interrupted => true,
        // A terminal's master once the container closed its last descriptor of the slave.
        Err(err) if err.raw_os_error() == Some(libc::EIO) => false,
        Err(err) => {
            tracing::warn!(stream = kind.as_str(), %err, "reading container output failed");
            false
        }
    }
}

fn emit(records: &[Record], kind: StreamKind, writer: &mut CriLogWriter) {
    let now = SystemTime::now();
    for record in records {
        if let Err(err) = writer.write(now, kind, record) {
            tracing::warn!(path = %writer.path.display(), %err, "writing container log failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn full(s: &str) -> Record {
        Record {
            content: s.as_bytes().to_vec(),
            partial: false,
        }
    }

    #[test]
    fn cri_line_has_timestamp_stream_tag_and_content() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let line = format_cri_line(at, StreamKind::Stdout, false, b"hello");
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2023-11-14T22:13:20.000000005Z stdout F hello\n"
        );
        let line = format_cri_line(at, StreamKind::Stderr, true, b"par");
        assert!(
            String::from_utf8(line)
                .unwrap()
                .ends_with(" stderr P par\n")
        );
    }

    #[test]
    fn splitter_emits_full_lines_and_keeps_the_rest() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec![full("a")]);
        assert_eq!(s.push(b"c\n\nd"), vec![full("bc"), full("")]);
        assert_eq!(
            s.finish(),
            Some(Record {
                content: b"d".to_vec(),
                partial: true
            })
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_cuts_long_lines_into_partials() {
        let mut s = LineSplitter::default();
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut recs = s.push(&long);
        recs.extend(s.push(b"\n"));
        assert_eq!(recs.len(), 3);
        assert!(recs[0].partial && recs[1].partial && !recs[2].partial);
        assert_eq!(recs[0].content.len(), MAX_LINE);
        assert_eq!(recs[2].content.len(), 10);
    }

    #[test]
    fn writer_rotates_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/c.log");
        let rotation = LogRotation {
            max_bytes: 120,
            max_files: 3,
        };
        let mut w = CriLogWriter::open(&path, rotation).unwrap();
        let at = UNIX_EPOCH;
        // Each line is 55 bytes: two fit in 120 bytes.
        for i in 0..10 {
            w.write(at, StreamKind::Stdout, &full(&format!("line-{i:09}")))
                .unwrap();
        }
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert!(read(&path).contains("line-000000008") && read(&path).contains("line-000000009"));
        assert!(read(&rotated(&path, 1)).contains("line-000000007"));
        assert!(read(&rotated(&path, 2)).contains("line-000000005"));
        assert!(!rotated(&path, 3).exists());
        for p in [path.clone(), rotated(&path, 1), rotated(&path, 2)] {
            assert!(fs::metadata(&p).unwrap().len() <= 120);
        }
    }

    #[test]
    fn writer_appends_to_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        fs::write(&path, "old\n").unwrap();
        let mut w = CriLogWriter::open(&path, LogRotation::default()).unwrap();
        w.write(UNIX_EPOCH, StreamKind::Stderr, &full("new"))
            .unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("old\n") && text.ends_with("stderr F new\n"));
    }

    #[tokio::test]
    async fn pump_copies_both_streams_and_flushes_partial_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut fifos = Vec::new();
        for name in ["out", "err"] {
            let p = dir.path().join(name);
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            fifos.push(p);
        }
        let open = |p: &Path| {
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(p)
                .unwrap()
        };
        let (out, err) = (open(&fifos[0]), open(&fifos[1]));
        let mut w_out = OpenOptions::new().write(true).open(&fifos[0]).unwrap();
        let mut w_err = OpenOptions::new().write(true).open(&fifos[1]).unwrap();
        w_out.write_all(b"hello\nwor").unwrap();
        w_err.write_all(b"oops\n").unwrap();
        let writer = CriLogWriter::open(&log, LogRotation::default()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(pump(
            out,
            err,
            writer,
            async {
                let _ = rx.await;
            },
            None,
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        w_out.write_all(b"ld").unwrap();
        tx.send(()).unwrap();
        task.await.unwrap();
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains(" stdout F hello\n"), "{text}");
        assert!(text.contains(" stderr F oops\n"), "{text}");
        assert!(text.contains(" stdout P world\n"), "{text}");
    }
}
