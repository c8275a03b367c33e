//! Container logs as the kubelet serves them: a CRI-format log file (`<ts> <stream> <P|F>
//! <content>` per line) and its rotated parts, read with `tailLines`, `sinceSeconds`/
//! `sinceTime`, `timestamps`, `limitBytes` and `follow`, streamed as plain text.

use std::{
    collections::VecDeque,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt, Stream, channel::mpsc};
use jiff::{SignedDuration, Timestamp};
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt},
};

use super::{RunningFn, reply::Params};

/// How often a followed log is polled for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How many bytes of lines go out as one chunk.
const BATCH: usize = 32 * 1024;

/// How a log is read, from the `containerLogs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the container stops.
    pub follow: bool,
    /// Only the last N lines (counted after `since`).
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this instant.
    pub since: Option<Timestamp>,
    /// Prefix each line with its RFC 3339 timestamp and a space.
    pub timestamps: bool,
    /// The run before the current one.
    pub previous: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// Why a log request's query is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    /// A parameter does not parse or is out of range.
    #[error("invalid value {value:?} for {name}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// What was sent.
        value: String,
    },
    /// Both forms of `since` were given.
    #[error("at most one of sinceTime or sinceSeconds may be specified")]
    BothSince,
}

impl LogOptions {
    /// Reads the options from a query; `now` anchors `sinceSeconds`.
    pub(super) fn from_query(params: &Params, now: Timestamp) -> Result<Self, LogError> {
        let flag = |name: &'static str| {
            params.flag(name).map_err(|_| LogError::Invalid {
                name,
                value: params.get(name).unwrap_or("").to_owned(),
            })
        };
        let number = |name: &'static str, min: u64| -> Result<Option<u64>, LogError> {
            match params.get(name) {
                None | Some("") => Ok(None),
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    _ => Err(LogError::Invalid {
                        name,
                        value: v.to_owned(),
                    }),
                },
            }
        };
        let since_seconds = number("sinceSeconds", 1)?;
        let since_time = match params.get("sinceTime") {
            None | Some("") => None,
            Some(v) => Some(Timestamp::from_str(v).map_err(|_| LogError::Invalid {
                name: "sinceTime",
                value: v.to_owned(),
            })?),
        };
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => return Err(LogError::BothSince),
            (Some(secs), None) => {
                let secs = i64::try_from(secs).unwrap_or(i64::MAX);
                Some(
                    now.saturating_sub(SignedDuration::from_secs(secs))
                        .unwrap_or(Timestamp::MIN),
                )
            }
            (None, time) => time,
        };
        Ok(Self {
            follow: flag("follow")?,
            tail_lines: number("tailLines", 0)?,
            since,
            timestamps: flag("timestamps")?,
            previous: flag("previous")?,
            limit_bytes: number("limitBytes", 1)?,
        })
    }
}

/// Streams the log at `path` (with its rotated parts `<path>.N` ... `<path>.1` first) as
/// text. With `follow` it polls every 100 ms until `running()` is false and the file is
/// drained. Dropping the stream stops the reader.
pub async fn stream_log(
    path: PathBuf,
    opts: LogOptions,
    running: RunningFn,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        let mut out = Output::new(&opts, tx);
        let result = produce(&path, &opts, &running, &mut out).await;
        out.push().await;
        if let Err(err) = result {
            tracing::warn!(path = %path.display(), %err, "reading a container log failed");
            let _ = out.tx.send(Err(err)).await;
        }
    });
    rx
}

async fn produce(
    path: &Path,
    opts: &LogOptions,
    running: &RunningFn,
    out: &mut Output,
) -> io::Result<()> {
    let mut joiner = Joiner::default();
    for part in rotated_parts(path).await {
        if let Some(mut reader) = LineReader::open(&part).await? {
            let mut lines = reader.read_lines().await?;
            lines.extend(reader.take_rest());
            if !out.feed(&mut joiner, lines).await {
                return Ok(());
            }
        }
    }
    let mut current = LineReader::open(path).await?;
    if let Some(reader) = current.as_mut() {
        let lines = reader.read_lines().await?;
        if !out.feed(&mut joiner, lines).await {
            return Ok(());
        }
    }
    if !opts.follow {
        let rest = current.as_mut().and_then(LineReader::take_rest);
        if !out.feed(&mut joiner, rest).await {
            return Ok(());
        }
        if !out.flush(&mut joiner).await {
            return Ok(());
        }
        out.end_tail().await;
        return Ok(());
    }
    if !out.end_tail().await {
        return Ok(());
    }
    loop {
        // Sampled before reading: a run that had ended before this read has written all.
        let alive = running();
        let mut got_any = false;
        match tokio::fs::metadata(path).await {
            Ok(meta) => {
                let replaced = current.as_ref().is_none_or(|r| r.ino != meta.ino());
                if replaced {
                    // Rotated: finish the old file before the new one.
                    if let Some(mut old) = current.take() {
                        let mut lines = old.read_lines().await?;
                        lines.extend(old.take_rest());
                        got_any |= !lines.is_empty();
                        if !out.feed(&mut joiner, lines).await {
                            return Ok(());
                        }
                    }
                    current = LineReader::open(path).await?;
                } else if let Some(reader) = current.as_mut()
                    && meta.len() < reader.offset
                {
                    reader.restart().await?;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        if let Some(reader) = current.as_mut() {
            let lines = reader.read_lines().await?;
            got_any |= !lines.is_empty();
            if !out.feed(&mut joiner, lines).await {
                return Ok(());
            }
        }
        if !got_any && !alive {
            let rest = current.as_mut().and_then(LineReader::take_rest);
            if out.feed(&mut joiner, rest).await {
                out.flush(&mut joiner).await;
            }
            return Ok(());
        }
        // What this round found goes out now, not when a batch fills.
        if !out.push().await {
            return Ok(());
        }
        if !got_any {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// The rotated parts beside `path`, oldest first.
async fn rotated_parts(path: &Path) -> Vec<PathBuf> {
    let mut parts = Vec::new();
    for n in 1.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let part = PathBuf::from(name);
        if !tokio::fs::try_exists(&part).await.unwrap_or(false) {
            break;
        }
        parts.push(part);
    }
    parts.reverse();
    parts
}

/// Reads a growing file in whole lines, keeping an unfinished last line for later.
struct LineReader {
    file: File,
    ino: u64,
    offset: u64,
    rest: Vec<u8>,
}

impl LineReader {
    /// Opens `path`; `None` when it does not exist (a run that has not written yet).
    async fn open(path: &Path) -> io::Result<Option<Self>> {
        let file = match File::open(path).await {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let ino = file.metadata().await?.ino();
        Ok(Some(Self {
            file,
            ino,
            offset: 0,
            rest: Vec::new(),
        }))
    }

    /// The file was truncated in place: read it again from the start.
    async fn restart(&mut self) -> io::Result<()> {
        self.file.seek(io::SeekFrom::Start(0)).await?;
        self.offset = 0;
        self.rest.clear();
        Ok(())
    }

    /// Every complete line (without its newline) up to the current end of the file.
    async fn read_lines(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf).await?;
            if n == 0 {
                return Ok(lines);
            }
            self.offset += n as u64;
            let mut chunk = &buf[..n];
            while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                let mut line = std::mem::take(&mut self.rest);
                line.extend_from_slice(&chunk[..i]);
                lines.push(line);
                chunk = &chunk[i + 1..];
            }
            self.rest.extend_from_slice(chunk);
        }
    }

    /// The unterminated last line, once no more will be written to it.
    fn take_rest(&mut self) -> Option<Vec<u8>> {
        (!self.rest.is_empty()).then(|| std::mem::take(&mut self.rest))
    }
}

/// One log line put back together from its CRI pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// The timestamp of its first piece, as written.
    ts: String,
    time: Option<Timestamp>,
    /// The content, with a newline once the line is complete.
    content: Vec<u8>,
}

/// Joins partial (`P`) pieces of each stream until the full (`F`) piece ends the line.
#[derive(Debug, Default)]
struct Joiner {
    pending: Vec<(String, Line)>,
}

impl Joiner {
    /// Takes one raw CRI line; returns the line it completes.
    fn feed(&mut self, raw: &[u8]) -> Option<Line> {
        let Some((ts, stream, tag, content)) = split_cri(raw) else {
            tracing::debug!(
                line = %String::from_utf8_lossy(raw),
                "skipping a malformed CRI log line"
            );
            return None;
        };
        let slot = if let Some(i) = self.pending.iter().position(|(s, _)| s == stream) {
            i
        } else {
            self.pending.push((
                stream.to_owned(),
                Line {
                    ts: ts.to_owned(),
                    time: Timestamp::from_str(ts).ok(),
                    content: Vec::new(),
                },
            ));
            self.pending.len() - 1
        };
        self.pending[slot].1.content.extend_from_slice(content);
        if tag.split(':').next() == Some("P") {
            return None;
        }
        let (_, mut line) = self.pending.remove(slot);
        line.content.push(b'\n');
        Some(line)
    }

    /// The partial lines whose end never came (the run ended mid-line), as they stand,
    /// oldest first.
    fn flush(&mut self) -> Vec<Line> {
        let mut lines: Vec<Line> = self.pending.drain(..).map(|(_, line)| line).collect();
        lines.sort_by_key(|l| l.time);
        lines
    }
}

/// `<ts> <stream> <tag> <content>`; the content may be empty (`<ts> stdout F`).
fn split_cri(raw: &[u8]) -> Option<(&str, &str, &str, &[u8])> {
    let mut fields = raw.splitn(4, |&b| b == b' ');
    let ts = std::str::from_utf8(fields.next()?).ok()?;
    let stream = std::str::from_utf8(fields.next()?).ok()?;
    let tag = std::str::from_utf8(fields.next()?).ok()?;
    let content = fields.next().unwrap_or(&[]);
    (!ts.is_empty() && !stream.is_empty() && !tag.is_empty()).then_some((ts, stream, tag, content))
}

/// Filters, formats and sends lines: `since`, the tail window, timestamps, the byte limit.
struct Output {
    timestamps: bool,
    since: Option<Timestamp>,
    /// Lines held back until the last N are known; `None` once they went out.
    tail: Option<(usize, VecDeque<Bytes>)>,
    remaining: Option<u64>,
    /// Lines gathered into one chunk: one channel send and one HTTP chunk per batch, not
    /// per line.
    batch: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
}

impl Output {
    fn new(opts: &LogOptions, tx: mpsc::Sender<Result<Bytes, io::Error>>) -> Self {
        Self {
            timestamps: opts.timestamps,
            since: opts.since,
            tail: opts
                .tail_lines
                .map(|n| (usize::try_from(n).unwrap_or(usize::MAX), VecDeque::new())),
            remaining: opts.limit_bytes,
            batch: Vec::new(),
            tx,
        }
    }

    /// Feeds raw CRI lines; false once nothing more is wanted.
    async fn feed(&mut self, joiner: &mut Joiner, raws: impl IntoIterator<Item = Vec<u8>>) -> bool {
        for raw in raws {
            if !self.line(joiner.feed(&raw)).await {
                return false;
            }
        }
        true
    }

    async fn line(&mut self, line: Option<Line>) -> bool {
        let Some(line) = line else { return true };
        if let (Some(since), Some(time)) = (self.since, line.time)
            && time < since
        {
            return true;
        }
        let mut text = Vec::with_capacity(line.content.len() + line.ts.len() + 1);
        if self.timestamps {
            text.extend_from_slice(line.ts.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(&line.content);
        let text = Bytes::from(text);
        if let Some((n, ring)) = self.tail.as_mut() {
            if *n > 0 {
                if ring.len() == *n {
                    ring.pop_front();
                }
                ring.push_back(text);
            }
            return true;
        }
        self.send(text).await
    }

    /// Sends the unfinished partial lines; false once nothing more is wanted.
    async fn flush(&mut self, joiner: &mut Joiner) -> bool {
        for line in joiner.flush() {
            if !self.line(Some(line)).await {
                return false;
            }
        }
        true
    }

    /// Sends the held-back tail; from here on lines go out as they come.
    async fn end_tail(&mut self) -> bool {
        if let Some((_, ring)) = self.tail.take() {
            for text in ring {
                if !self.send(text).await {
                    return false;
                }
            }
        }
        true
    }

    /// Queues text for the client; false once nothing more is wanted (the byte limit is
    /// reached or the client left).
    async fn send(&mut self, mut text: Bytes) -> bool {
        if let Some(remaining) = self.remaining.as_mut() {
            if *remaining == 0 {
                return false;
            }
            let take = usize::try_from(*remaining).unwrap_or(usize::MAX);
            text.truncate(take);
            *remaining -= text.len() as u64;
        }
        self.batch.extend_from_slice(&text);
        if self.remaining == Some(0) {
            self.push().await;
            return false;
        }
        self.batch.len() < BATCH || self.push().await
    }

    /// Sends what is queued as one chunk; false when the client has left.
    async fn push(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let chunk = Bytes::from(std::mem::take(&mut self.batch));
        self.tx.send(Ok(chunk)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use futures::StreamExt;

    use super::*;

    fn opts() -> LogOptions {
        LogOptions::default()
    }

    async fn read_all(path: &Path, opts: LogOptions) -> String {
        let stream = stream_log(path.to_owned(), opts, Arc::new(|| false)).await;
        let chunks: Vec<_> = stream.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    const LOG: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n\
                       2026-01-01T00:00:02Z stderr F two\n\
                       2026-01-01T00:00:03Z stdout P thr\n\
                       2026-01-01T00:00:04Z stdout F ee\n";

    #[test]
    fn query_parsing_reads_flags_numbers_and_since() {
        let now = Timestamp::from_second(1000).unwrap();
        let o = LogOptions::from_query(
            &Params::parse(Some(
                "follow=true&tailLines=5&sinceSeconds=10&timestamps=1&limitBytes=7",
            )),
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.limit_bytes, Some(7));
        assert_eq!(o.since, Some(Timestamp::from_second(990).unwrap()));
        let t = LogOptions::from_query(&Params::parse(Some("sinceTime=2026-01-01T00:00:02Z")), now)
            .unwrap();
        assert_eq!(t.since, Some("2026-01-01T00:00:02Z".parse().unwrap()));
        assert_eq!(
            LogOptions::from_query(&Params::parse(Some("sinceTime=x&sinceSeconds=1")), now),
            Err(LogError::Invalid {
                name: "sinceTime",
                value: "x".into()
            })
        );
        assert_eq!(
            LogOptions::from_query(
                &Params::parse(Some("sinceTime=2026-01-01T00:00:02Z&sinceSeconds=1")),
                now
            ),
            Err(LogError::BothSince)
        );
        assert!(LogOptions::from_query(&Params::parse(Some("tailLines=-1")), now).is_err());
        assert!(LogOptions::from_query(&Params::parse(Some("limitBytes=0")), now).is_err());
    }

    #[tokio::test]
    async fn partial_lines_are_joined_under_the_first_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        assert_eq!(read_all(&path, opts()).await, "one\ntwo\nthree\n");
        let with_ts = read_all(
            &path,
            LogOptions {
                timestamps: true,
                ..opts()
            },
        )
        .await;
        assert_eq!(
            with_ts,
            "2026-01-01T00:00:01.000000001Z one\n2026-01-01T00:00:02Z two\n2026-01-01T00:00:03Z three\n"
        );
    }

    #[tokio::test]
    async fn tail_counts_whole_lines_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            dir.path().join("0.log.2"),
            "2026-01-01T00:00:00Z stdout F zero\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("0.log.1"), LOG).unwrap();
        std::fs::write(&path, "2026-01-01T00:00:05Z stdout F four\n").unwrap();
        let all = read_all(&path, opts()).await;
        assert_eq!(all, "zero\none\ntwo\nthree\nfour\n");
        let tail = |n| LogOptions {
            tail_lines: Some(n),
            ..opts()
        };
        assert_eq!(read_all(&path, tail(2)).await, "three\nfour\n");
        assert_eq!(read_all(&path, tail(4)).await, "one\ntwo\nthree\nfour\n");
        assert_eq!(read_all(&path, tail(0)).await, "");
        assert_eq!(read_all(&path, tail(99)).await, all);
    }

    #[tokio::test]
    async fn since_drops_older_lines_and_limit_bytes_cuts_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let since = LogOptions {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            ..opts()
        };
        assert_eq!(read_all(&path, since).await, "two\nthree\n");
        let limit = LogOptions {
            limit_bytes: Some(6),
            ..opts()
        };
        assert_eq!(read_all(&path, limit).await, "one\ntw");
    }

    #[tokio::test]
    async fn unfinished_partial_lines_of_both_streams_come_out_as_they_stand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-01-01T00:00:01Z stdout P out\n2026-01-01T00:00:02Z stderr P err\n",
        )
        .unwrap();
        assert_eq!(read_all(&path, opts()).await, "outerr");
    }

    #[tokio::test]
    async fn many_lines_go_out_in_a_few_large_chunks() {
        use std::fmt::Write as _;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..10_000 {
            let _ = writeln!(text, "2026-01-01T00:00:01Z stdout F line {i:05}");
        }
        std::fs::write(&path, text).unwrap();
        let stream = stream_log(path, opts(), Arc::new(|| false)).await;
        let chunks: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        let total: usize = chunks.iter().map(Bytes::len).sum();
        assert_eq!(total, 10_000 * "line 00000\n".len());
        assert!(chunks.len() <= 5, "{} chunks", chunks.len());
    }

    #[tokio::test]
    async fn a_missing_file_is_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_all(&dir.path().join("none.log"), opts()).await, "");
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_and_ends_when_the_run_ends_and_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "2026-01-01T00:00:01Z stdout F first\n").unwrap();
        let alive = Arc::new(AtomicBool::new(true));
        let running = {
            let alive = Arc::clone(&alive);
            Arc::new(move || alive.load(Ordering::SeqCst))
        };
        let mut stream = Box::pin(
            stream_log(
                path.clone(),
                LogOptions {
                    follow: true,
                    tail_lines: Some(1),
                    ..opts()
                },
                running,
            )
            .await,
        );
        assert_eq!(stream.next().await.unwrap().unwrap(), "first\n");
        let append = |text: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append("2026-01-01T00:00:02Z stdout P sec");
        append("ond\n2026-01-01T00:00:02Z stdout F  line\n");
        assert_eq!(stream.next().await.unwrap().unwrap(), "second line\n");
        // Rotation: the old file moves aside, the writer starts a new one.
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&path, "2026-01-01T00:00:03Z stdout F third\n").unwrap();
        let third = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap();
        assert_eq!(third.unwrap().unwrap(), "third\n");
        append("2026-01-01T00:00:04Z stdout F last\n");
        alive.store(false, Ordering::SeqCst);
        let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect::<Vec<_>>())
            .await
            .unwrap();
        let rest: Vec<Bytes> = rest.into_iter().map(Result::unwrap).collect();
        assert_eq!(rest, [Bytes::from("last\n")]);
    }
}
