//! Where the daemon's log lines go: a bounded buffer that a thread of its
//! own writes to stderr, so that no task ever waits on the log's reader.
//!
//! Written straight from the tasks, a log line is a `write(2)` to stderr
//! on the runtime's thread. When stderr is a pipe that its reader has
//! stopped draining (`switchboard | less` left on a page, a stuck log
//! shipper), the pipe fills (64 KiB) and every task that logs blocks, and
//! with them the threads the whole gateway runs on: no request answered,
//! no message delivered. Here a line is copied into a buffer of at most
//! [`MAX_BUFFERED`] bytes, and the writer thread, woken by the first line
//! into an empty buffer, lets lines gather for [`GATHER`] and writes them
//! with one `write` (a burst of lines costs one wake-up and one system
//! call, not one each). When the buffer is full, lines are dropped and counted;
//! once the reader drains again, a WARN line says how many were lost.
//! A log line is not an acknowledged message: losing some beats stopping.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::sync::MutexExt;

/// Most bytes of log lines held for the writer thread.
pub const MAX_BUFFERED: usize = 1024 * 1024;

/// How long the writer thread lets lines gather once woken: a wake-up
/// (and a switch to this thread) per batch, not per line.
const GATHER: Duration = Duration::from_millis(2);

#[derive(Default)]
struct State {
    /// Lines waiting for the writer thread, whole.
    lines: Vec<u8>,
    /// Lines dropped since the last notice.
    dropped: u64,
    /// The writer thread is writing a batch.
    writing: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits on it for lines; `flush` for an empty buffer.
    changed: Condvar,
}

/// The log's destination, given to `tracing_subscriber` as its writer.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
    /// The formatter colours its lines (ANSI): its own colour codes pass.
    colours: bool,
}

impl LogSink {
    /// A sink writing to `out` from a thread of its own; `colours`: the
    /// lines come with ANSI colour codes, which are kept.
    pub fn spawn<W: Write + Send + 'static>(out: W, colours: bool) -> std::io::Result<LogSink> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        // The first sink is the daemon's (tests make more).
        let _ = SINK.set(shared.clone());
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&for_thread, out))?;
        Ok(LogSink { shared, colours })
    }

    /// Waits, at most `within`, until every line taken so far is written.
    pub fn flush(&self, within: Duration) {
        drained(&self.shared, within);
    }

    /// Takes one whole line (or drops it, counted, when the buffer is full).
    fn take(&self, line: &[u8]) {
        let line = one_line(line, self.colours);
        let line = &line[..];
        let mut s = self.shared.state.guard();
        if s.lines.len() + line.len() > MAX_BUFFERED {
            s.dropped += 1;
            return;
        }
        let was_empty = s.lines.is_empty();
        s.lines.extend_from_slice(line);
        drop(s);
        if was_empty {
            self.shared.changed.notify_all();
        }
    }
}

/// The writer thread: takes every line gathered, writes them at once.
fn write_lines<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        {
            let mut s = shared.state.guard();
            while s.lines.is_empty() && s.dropped == 0 {
                s = shared
                    .changed
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        // Let a burst gather: the lines that come meanwhile find the
        // buffer not empty and wake no one, and go out in this one write.
        std::thread::sleep(GATHER);
        let dropped = {
            let mut s = shared.state.guard();
            std::mem::swap(&mut batch, &mut s.lines);
            s.writing = true;
            std::mem::take(&mut s.dropped)
        };
        // A reader that went away (EPIPE) loses the lines; nothing else
        // to do with them.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // Keep the buffer a batch's size, not the largest burst's.
        batch.shrink_to(64 * 1024);
        shared.state.guard().writing = false;
        shared.changed.notify_all();
        if dropped > 0 {
            // Through the log itself, in its format (text or JSON); this
            // thread is not holding the buffer's lock.
            tracing::warn!(
                dropped,
                "{dropped} log lines were dropped: stderr's reader stopped draining it, and at most {MAX_BUFFERED} bytes of lines wait for it"
            );
        }
    }
}

/// Must `b` not reach the log as it is: a control character but the tab.
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// The length of the ANSI colour code (`ESC [ digits and ; m`) `s` starts
/// with, if it starts with one.
fn colour_code(s: &[u8]) -> Option<usize> {
    if s.get(1) != Some(&b'[') {
        return None;
    }
    let end = 2 + s[2..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b';')
        .count();
    (s.get(end) == Some(&b'm')).then_some(end + 1)
}

/// One event's text as one line of the log: control characters in it are
/// written as escapes (`\n`, `\r`, `\x1b`, `\u{9b}` for the C1 ones), so
/// that text from outside (a client's id, a plugin's error, a server's
/// answer) can neither forge a line of its own nor send a terminal escape
/// sequence. The line's own end is kept, and with `colours` so are colour
/// codes (the formatter's). Text without any is passed as it is.
fn one_line(line: &[u8], colours: bool) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (line, &b""[..]),
    };
    if !body.iter().any(|&b| is_control(b) || b == 0xc2) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == 0x1b && colours {
            if let Some(n) = colour_code(&body[i..]) {
                out.extend_from_slice(&body[i..i + n]);
                i += n;
                continue;
            }
        }
        // U+0080..U+009F, which some terminals take as controls too.
        if b == 0xc2 {
            if let Some(&c1 @ 0x80..=0x9f) = body.get(i + 1) {
                out.extend_from_slice(format!("\\u{{{c1:x}}}").as_bytes());
                i += 2;
                continue;
            }
        }
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ if is_control(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
        i += 1;
    }
    out.extend_from_slice(end);
    std::borrow::Cow::Owned(out)
}

/// `text` from outside (a plugin's info, a gateway's error) as the CLI
/// prints it to a terminal: control characters escaped as in the log, so
/// that it cannot clear the screen, retitle the window or fake a line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    match one_line(text.as_bytes(), false) {
        std::borrow::Cow::Borrowed(_) => std::borrow::Cow::Borrowed(text),
        // Escapes are ASCII, put in place of whole characters: still UTF-8.
        std::borrow::Cow::Owned(bytes) => {
            std::borrow::Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
        }
    }
}

/// The sink the daemon logs through, for [`flush`].
static SINK: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

/// Waits, at most `within`, until every line the daemon logged so far is
/// written: before it exits (a reader that never drains again must not
/// keep it from exiting, hence the bound).
pub fn flush(within: Duration) {
    if let Some(shared) = SINK.get() {
        drained(shared, within);
    }
}

/// Waits until the buffer is empty and no batch is being written.
fn drained(shared: &Shared, within: Duration) {
    let deadline = Instant::now() + within;
    let mut s = shared.state.guard();
    while !s.lines.is_empty() || s.writing {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        s = match shared.changed.wait_timeout(s, left) {
            Ok((s, _)) => s,
            Err(p) => p.into_inner().0,
        };
    }
}

/// One event's writer: `tracing_subscriber` formats an event whole, then
/// writes it with one `write_all`.
pub struct LineWriter<'a> {
    sink: &'a LogSink,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.take(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { sink: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that blocks while `stalled` holds, like a pipe whose
    /// reader stopped draining, and keeps what it was given.
    #[derive(Clone, Default)]
    struct Pipe {
        got: Arc<Mutex<Vec<u8>>>,
        stalled: Arc<Mutex<()>>,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _wait = self.stalled.guard();
            self.got.guard().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text(p: &Pipe) -> String {
        String::from_utf8_lossy(&p.got.guard()).into_owned()
    }

    #[test]
    fn lines_reach_the_destination_in_order_and_a_flush_waits_for_them() {
        let pipe = Pipe::default();
        let sink = LogSink::spawn(pipe.clone(), false).unwrap();
        for i in 0..1000 {
            sink.take(format!("line {i}\n").as_bytes());
        }
        sink.flush(Duration::from_secs(2));
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text(&pipe), want);
    }

    #[test]
    fn an_event_is_one_line_whatever_text_it_carries() {
        let one = |s: &str, colours| {
            String::from_utf8(one_line(s.as_bytes(), colours).into_owned()).unwrap()
        };
        // Nothing to escape: the same bytes, not a copy.
        let plain = "2026-11-29T00:00:00Z  INFO a: caf\u{e9}\tok\n";
        assert!(matches!(
            one_line(plain.as_bytes(), false),
            std::borrow::Cow::Borrowed(_)
        ));
        // (U+00B0 shares its first byte with the C1 controls: looked at, kept.)
        assert_eq!(one("18 \u{b0}C \u{a0}\n", false), "18 \u{b0}C \u{a0}\n");
        // A forged line, a carriage return, a terminal escape, a C1 CSI.
        assert_eq!(
            one("INFO a: client=cli\n2026-11-29T00:00:00Z  INFO FORGED\r\x1b]0;title\x07 \u{9b}2J\n", false),
            "INFO a: client=cli\\n2026-11-29T00:00:00Z  INFO FORGED\\r\\x1b]0;title\\x07 \\u{9b}2J\n"
        );
        // With colours, the formatter's colour codes pass; other escape
        // sequences do not.
        assert_eq!(
            one(
                "\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m x=\x1b[2J\x1b]8;;\n",
                true
            ),
            "\x1b[2m2026\x1b[0m \x1b[32m INFO\x1b[0m x=\\x1b[2J\\x1b]8;;\n"
        );
        assert_eq!(one("\x1b[31m", false), "\\x1b[31m");
        // No line end: none added.
        assert_eq!(one("a\nb", false), "a\\nb");
        assert_eq!(printable("ok"), "ok");
        assert_eq!(printable("caf\u{e9}\x1b[2J\nx"), "caf\u{e9}\\x1b[2J\\nx");
    }

    /// A stalled reader costs a logging thread nothing but the lines past
    /// the bound, and those are counted, not waited for.
    #[test]
    fn a_stalled_reader_never_blocks_the_logger_and_drops_are_counted() {
        let pipe = Pipe::default();
        let stall = pipe.stalled.guard();
        let sink = LogSink::spawn(pipe.clone(), false).unwrap();
        let line = [b'x'; 99];
        let mut line = line.to_vec();
        line.push(b'\n');
        let n = 3 * MAX_BUFFERED / line.len();
        // The first line goes to the writer thread, which then blocks.
        sink.take(&line);
        while !sink.shared.state.guard().writing {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        for _ in 1..n {
            sink.take(&line);
        }
        // Had the logger waited for the pipe, it would be waiting still.
        assert!(t0.elapsed() < Duration::from_secs(5));
        let (held, dropped) = {
            let s = sink.shared.state.guard();
            (s.lines.len(), s.dropped as usize)
        };
        assert_eq!(held, MAX_BUFFERED / line.len() * line.len());
        assert_eq!(dropped, n - 1 - held / line.len());
        drop(stall);
        sink.flush(Duration::from_secs(2));
        let got = text(&pipe);
        let written = got.lines().filter(|l| l.starts_with("xxx")).count();
        assert_eq!(written + dropped, n);
    }
}
