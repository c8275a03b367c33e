//! Reads a container's CRI log back the way `kubectl logs` shows it: content only (or
//! prefixed by its timestamp), partial lines joined, with tail, since, byte limit and follow.

use std::{
    collections::VecDeque,
    io::SeekFrom,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How often a followed log is polled for new lines.
const POLL: Duration = Duration::from_millis(100);

/// What part of the log to return, as in `GET pods/{p}/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the container exits.
    pub follow: bool,
    /// Only the last N lines of what is already there.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Prefix each line with its RFC 3339 timestamp.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// One CRI log record, borrowed from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriRecord<'a> {
    /// The timestamp as written.
    pub timestamp: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// The line continues in the next record of the same stream.
    pub partial: bool,
    /// The content, without newline.
    pub content: &'a [u8],
}

/// Parses `<timestamp> <stream> <F|P> <content>` (without its newline).
#[must_use]
pub fn parse_cri_line(line: &[u8]) -> Option<CriRecord<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let partial = match parts.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or_default();
    Some(CriRecord {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// A whole line of output after joining partial records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    timestamp: String,
    at: Option<SystemTime>,
    content: Vec<u8>,
}

/// Joins partial records per stream into whole lines.
#[derive(Debug, Default)]
struct Joiner {
    stdout: Option<Line>,
    stderr: Option<Line>,
}

impl Joiner {
    fn push(&mut self, record: &CriRecord<'_>) -> Option<Line> {
        let slot = if record.stream == "stderr" {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let line = slot.get_or_insert_with(|| Line {
            timestamp: record.timestamp.to_owned(),
            at: parse_timestamp(record.timestamp),
            content: Vec::new(),
        });
        line.content.extend_from_slice(record.content);
        if record.partial { None } else { slot.take() }
    }

    /// Lines still partial when the log ends (the container died mid-line).
    fn finish(&mut self) -> Vec<Line> {
        let mut rest: Vec<Line> = [self.stdout.take(), self.stderr.take()]
            .into_iter()
            .flatten()
            .collect();
        rest.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        rest
    }
}

fn parse_timestamp(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// Streams the log at `path` as `kubectl logs` prints it. With `follow`, new lines are
/// picked up every 100 ms (across rotation) until `running()` turns false and the file
/// has been read to its end. A missing file yields nothing (or, when following, waits
/// for it while the container runs).
pub async fn read_log<F>(path: &Path, opts: &LogOptions, running: F) -> BoxStream<'static, Bytes>
where
    F: Fn() -> bool + Send + 'static,
{
    let mut reader = Reader {
        path: path.to_owned(),
        opts: opts.clone(),
        remaining: opts.limit_bytes,
        running,
        file: None,
        inode: None,
        leftover: Vec::new(),
        joiner: Joiner::default(),
        started: false,
        done: false,
    };
    let first = reader.initial().await;
    let head = stream::iter(first.filter(|b| !b.is_empty()));
    let tail = stream::unfold(reader, |mut r| async move {
        let chunk = r.next_chunk().await?;
        Some((chunk, r))
    });
    head.chain(tail).boxed()
}

struct Reader<F> {
    path: PathBuf,
    opts: LogOptions,
    remaining: Option<u64>,
    running: F,
    file: Option<tokio::fs::File>,
    inode: Option<u64>,
    leftover: Vec<u8>,
    joiner: Joiner,
    started: bool,
    done: bool,
}

impl<F: Fn() -> bool> Reader<F> {
    /// What is in the file now, after `since` and `tail_lines`.
    async fn initial(&mut self) -> Option<Bytes> {
        self.started = true;
        let bytes = self.read_new().await;
        let mut lines: VecDeque<Line> = self.lines_from(&bytes).into();
        if !self.opts.follow {
            lines.extend(self.joiner.finish());
        }
        if let Some(tail) = self.opts.tail_lines {
            let keep = usize::try_from(tail).unwrap_or(usize::MAX);
            while lines.len() > keep {
                lines.pop_front();
            }
        }
        let out = self.render(lines.iter());
        if !self.opts.follow {
            self.done = true;
        }
        Some(out)
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done || self.remaining == Some(0) {
                return None;
            }
            // Read `running` before the file so the last lines are not missed.
            let alive = (self.running)();
            let bytes = self.read_new().await;
            let mut lines = self.lines_from(&bytes);
            if !alive {
                lines.extend(self.joiner.finish());
                self.done = true;
            }
            if !lines.is_empty() {
                return Some(self.render(lines.iter()));
            }
            if self.done {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// New bytes of the log, reopening it when it was rotated.
    async fn read_new(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let current_inode = tokio::fs::metadata(&self.path).await.ok().map(|m| m.ino());
        if let Some(file) = &mut self.file {
            let _ = file.read_to_end(&mut out).await;
            if current_inode != self.inode {
                self.file = None;
            }
        }
        if self.file.is_none()
            && let Ok(mut file) = tokio::fs::File::open(&self.path).await
        {
            self.inode = file.metadata().await.ok().map(|m| m.ino());
            let _ = file.seek(SeekFrom::Start(0)).await;
            let _ = file.read_to_end(&mut out).await;
            self.file = Some(file);
        }
        out
    }

    /// Whole lines from `bytes` (plus what was left over), filtered by `since`.
    fn lines_from(&mut self, bytes: &[u8]) -> Vec<Line> {
        self.leftover.extend_from_slice(bytes);
        let Some(end) = self.leftover.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.leftover.split_off(end + 1);
        let complete = std::mem::replace(&mut self.leftover, rest);
        let mut lines = Vec::new();
        for raw in complete.split(|b| *b == b'\n') {
            let Some(record) = parse_cri_line(raw) else {
                continue;
            };
            if let Some(line) = self.joiner.push(&record) {
                lines.push(line);
            }
        }
        if let Some(since) = self.opts.since {
            lines.retain(|l| l.at.is_none_or(|at| at >= since));
        }
        lines
    }

    fn render<'a>(&mut self, lines: impl Iterator<Item = &'a Line>) -> Bytes {
        let mut out = Vec::new();
        for line in lines {
            if self.opts.timestamps {
                out.extend_from_slice(line.timestamp.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(&line.content);
            out.push(b'\n');
        }
        if let Some(remaining) = &mut self.remaining {
            let keep = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(out.len());
            out.truncate(keep);
            *remaining -= keep as u64;
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        io::Write,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::UNIX_EPOCH,
    };

    use super::*;

    const LOG: &str = "\
2024-01-01T00:00:01.000000000Z stdout F one
2024-01-01T00:00:02.000000000Z stderr P tw
2024-01-01T00:00:02.500000000Z stdout F three
2024-01-01T00:00:03.000000000Z stderr F o
2024-01-01T00:00:04.000000000Z stdout F four
";

    async fn collect(path: &Path, opts: &LogOptions) -> String {
        let chunks: Vec<Bytes> = read_log(path, opts, || false).await.collect().await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    fn log_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn parses_cri_lines() {
        let r = parse_cri_line(b"2024-01-01T00:00:01Z stdout P a b").unwrap();
        assert_eq!(r.stream, "stdout");
        assert!(r.partial);
        assert_eq!(r.content, b"a b");
        assert!(parse_cri_line(b"garbage").is_none());
        assert_eq!(parse_cri_line(b"t stdout F").unwrap().content, b"");
    }

    #[tokio::test]
    async fn prints_content_with_partial_lines_joined() {
        let (_d, path) = log_file(LOG);
        let text = collect(&path, &LogOptions::default()).await;
        assert_eq!(text, "one\nthree\ntwo\nfour\n");
    }

    #[tokio::test]
    async fn timestamps_prefix_each_line_with_its_first_record_time() {
        let (_d, path) = log_file(LOG);
        let opts = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        let text = collect(&path, &opts).await;
        assert!(text.starts_with("2024-01-01T00:00:01.000000000Z one\n"));
        assert!(text.contains("2024-01-01T00:00:02.000000000Z two\n"));
    }

    #[tokio::test]
    async fn tail_keeps_the_last_lines() {
        let (_d, path) = log_file(LOG);
        let opts = LogOptions {
            tail_lines: Some(2),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, &opts).await, "two\nfour\n");
        let opts = LogOptions {
            tail_lines: Some(0),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, &opts).await, "");
    }

    #[tokio::test]
    async fn since_drops_older_lines() {
        let (_d, path) = log_file(LOG);
        let opts = LogOptions {
            since: Some(UNIX_EPOCH + Duration::from_secs(1_704_067_202)),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, &opts).await, "three\ntwo\nfour\n");
    }

    #[tokio::test]
    async fn limit_bytes_truncates() {
        let (_d, path) = log_file(LOG);
        let opts = LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        };
        assert_eq!(collect(&path, &opts).await, "one\nth");
    }

    #[tokio::test]
    async fn unterminated_partial_is_printed_when_not_following() {
        let (_d, path) = log_file("2024-01-01T00:00:01Z stdout P cut\n");
        assert_eq!(collect(&path, &LogOptions::default()).await, "cut\n");
    }

    #[tokio::test]
    async fn missing_file_yields_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = collect(&dir.path().join("none.log"), &LogOptions::default()).await;
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn follow_streams_new_lines_across_rotation_until_exit() {
        let (_d, path) = log_file("2024-01-01T00:00:01Z stdout F a\n");
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let stream = read_log(&path, &opts, move || flag.load(Ordering::SeqCst)).await;
        let collector = tokio::spawn(stream.collect::<Vec<Bytes>>());
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"2024-01-01T00:00:02Z stdout F b\n").unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        fs::rename(&path, path.with_extension("log.1")).unwrap();
        fs::write(&path, "2024-01-01T00:00:03Z stdout F c\n").unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        running.store(false, Ordering::SeqCst);
        let chunks = tokio::time::timeout(Duration::from_secs(5), collector)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8(chunks.concat()).unwrap(), "a\nb\nc\n");
    }
}
