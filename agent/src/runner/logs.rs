//! Reading jobs' output files in chunks.

use std::fmt;
use std::io::{self, SeekFrom};
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::InvalidJobId;

/// The file a job's standard output goes to, in its directory.
pub(super) const STDOUT_LOG: &str = "stdout.log";
/// The file a job's standard error goes to, in its directory.
pub(super) const STDERR_LOG: &str = "stderr.log";

/// The chunk size when a request gives none.
pub const DEFAULT_LOG_CHUNK: u32 = 64 * 1024;
/// The largest chunk one read returns, whatever is asked.
pub const MAX_LOG_CHUNK: u32 = 1024 * 1024;

/// Which output of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// Standard output, `stdout.log`.
    Stdout,
    /// Standard error, `stderr.log`.
    Stderr,
}

impl LogStream {
    fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => STDOUT_LOG,
            LogStream::Stderr => STDERR_LOG,
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        })
    }
}

/// A piece of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The bytes from the requested offset; empty at the end.
    pub data: Vec<u8>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// True when `next_offset` is the end of the log as it is now; a running
    /// job may still write more.
    pub eof: bool,
}

/// Why a log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The job id cannot name a directory.
    #[error(transparent)]
    InvalidJobId(#[from] InvalidJobId),
    /// No job of that id ever ran here (or its directory was removed).
    #[error("no {stream} log for job {job_id} on this node")]
    NotFound {
        /// The job asked for.
        job_id: String,
        /// The stream asked for.
        stream: LogStream,
    },
    /// The file is there but reading it failed.
    #[error("cannot read the {stream} log of job {job_id}")]
    Io {
        /// The job asked for.
        job_id: String,
        /// The stream asked for.
        stream: LogStream,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Reads at most `max_bytes` (0: the default) of `stream` from `offset`.
/// An offset at or past the end gives no data and `eof`, with
/// `next_offset == offset`.
pub(super) async fn read_chunk(
    job_id: &str,
    job_dir: &Path,
    stream: LogStream,
    offset: u64,
    max_bytes: u32,
) -> Result<LogChunk, LogError> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            LogError::NotFound {
                job_id: job_id.to_owned(),
                stream,
            }
        } else {
            LogError::Io {
                job_id: job_id.to_owned(),
                stream,
                source,
            }
        }
    };
    let limit = match max_bytes {
        0 => DEFAULT_LOG_CHUNK,
        n => n.min(MAX_LOG_CHUNK),
    };
    let mut file = tokio::fs::File::open(job_dir.join(stream.file_name()))
        .await
        .map_err(io_error)?;
    let len = file.metadata().await.map_err(io_error)?.len();
    if offset >= len {
        return Ok(LogChunk {
            data: Vec::new(),
            next_offset: offset,
            eof: true,
        });
    }
    file.seek(SeekFrom::Start(offset)).await.map_err(io_error)?;
    let want = (len - offset).min(u64::from(limit));
    let mut data = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    file.take(want)
        .read_to_end(&mut data)
        .await
        .map_err(io_error)?;
    let next_offset = offset + data.len() as u64;
    Ok(LogChunk {
        data,
        next_offset,
        eof: next_offset >= len,
    })
}
