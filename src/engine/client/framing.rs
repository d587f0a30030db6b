//! Incremental framing of streamed answers: `text/event-stream` events and NDJSON lines.
//!
//! Owns only where one event ends and the next begins; what an event means is the caller's
//! business. Network chunks cut events anywhere, so each framer keeps the unfinished tail between
//! chunks. An event that lies wholly inside one chunk (the common case) is handed out as a slice of
//! that chunk, without copying; only events that straddle chunks are assembled in a buffer, which
//! is reused for the whole answer.
//!
//! SSE (WHATWG "event stream interpretation"): lines end with `\n` or `\r\n`; a blank line ends an
//! event; `data:` lines (one optional space after the colon) are joined with `\n`; lines starting
//! with `:` are comments; other fields (`event`, `id`, `retry`) are ignored. A last event that the
//! stream ends without a blank line is still delivered, as vLLM's own client does.

use std::ops::ControlFlow;

/// Where an event's data is while it is being assembled.
#[derive(Clone, Copy)]
enum Data {
    None,
    /// One data line, lying in the chunk being fed (`start..end`).
    InChunk(usize, usize),
    /// In `SseFramer::data`.
    Buffered,
}

/// Splits an SSE byte stream into the data payloads of its events.
#[derive(Default)]
pub(crate) struct SseFramer {
    /// An unfinished line carried over from earlier chunks.
    line: Vec<u8>,
    /// The data of an event that straddles chunks.
    data: Vec<u8>,
    /// Whether the current event has data in `data` (carried over from an earlier chunk).
    buffered: bool,
}

impl SseFramer {
    /// Feeds one network chunk; `on_event` gets each completed event's data and may stop the stream.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut data = if self.buffered { Data::Buffered } else { Data::None };
        let mut at = 0;
        while let Some(nl) = memchr::memchr(b'\n', &chunk[at..]) {
            let end = at + nl;
            if self.line.is_empty() {
                data = self.line_in_chunk(chunk, at, end, data, on_event)?;
            } else {
                // The line began in an earlier chunk: finish it in the carry buffer.
                self.line.extend_from_slice(&chunk[at..end]);
                let line = std::mem::take(&mut self.line);
                let flow = self.owned_line(&line, &mut data, chunk, on_event);
                self.line = line;
                self.line.clear();
                flow?;
            }
            at = end + 1;
        }
        if let Data::InChunk(start, end) = data {
            self.data.extend_from_slice(&chunk[start..end]);
            data = Data::Buffered;
        }
        self.buffered = matches!(data, Data::Buffered);
        self.line.extend_from_slice(&chunk[at..]);
        ControlFlow::Continue(())
    }

    /// The stream ended: delivers a last event that had no blank line after it.
    pub(crate) fn finish(&mut self, on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>) {
        let mut data = if self.buffered { Data::Buffered } else { Data::None };
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() && self.owned_line(&line, &mut data, &[], on_event).is_break() {
            return;
        }
        if matches!(data, Data::Buffered) {
            let _ = on_event(&self.data); // the stream is over either way
        }
        self.data.clear();
        self.buffered = false;
    }

    /// Handles the line `chunk[start..end]` (without its `\n`).
    fn line_in_chunk(
        &mut self,
        chunk: &[u8],
        start: usize,
        end: usize,
        data: Data,
        on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> ControlFlow<(), Data> {
        let line = strip_cr(&chunk[start..end]);
        if line.is_empty() {
            return match data {
                Data::None => ControlFlow::Continue(Data::None),
                Data::InChunk(s, e) => {
                    on_event(&chunk[s..e])?;
                    ControlFlow::Continue(Data::None)
                }
                Data::Buffered => {
                    let flow = on_event(&self.data);
                    self.data.clear();
                    flow?;
                    ControlFlow::Continue(Data::None)
                }
            };
        }
        let Some(value) = data_value(line) else {
            return ControlFlow::Continue(data);
        };
        // Offsets of the value inside `chunk`.
        let value_start = start + (line.len() - value.len());
        let value_end = start + line.len();
        ControlFlow::Continue(match data {
            Data::None => Data::InChunk(value_start, value_end),
            Data::InChunk(s, e) => {
                self.data.extend_from_slice(&chunk[s..e]);
                self.data.push(b'\n');
                self.data.extend_from_slice(value);
                Data::Buffered
            }
            Data::Buffered => {
                self.data.push(b'\n');
                self.data.extend_from_slice(value);
                Data::Buffered
            }
        })
    }

    /// Handles a line assembled in the carry buffer; `chunk` is the chunk being fed (for `InChunk`).
    fn owned_line(
        &mut self,
        line: &[u8],
        data: &mut Data,
        chunk: &[u8],
        on_event: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let line = strip_cr(line);
        if line.is_empty() {
            let flow = match *data {
                Data::None => ControlFlow::Continue(()),
                Data::InChunk(s, e) => on_event(&chunk[s..e]),
                Data::Buffered => on_event(&self.data),
            };
            self.data.clear();
            *data = Data::None;
            return flow;
        }
        if let Some(value) = data_value(line) {
            match *data {
                Data::None => {}
                Data::InChunk(s, e) => {
                    self.data.extend_from_slice(&chunk[s..e]);
                    self.data.push(b'\n');
                }
                Data::Buffered => self.data.push(b'\n'),
            }
            self.data.extend_from_slice(value);
            *data = Data::Buffered;
        }
        ControlFlow::Continue(())
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The value of a `data` field line; `None` for comments and other fields.
fn data_value(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    if rest.is_empty() {
        return Some(rest); // `data` alone: an empty data line
    }
    let value = rest.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// Splits a byte stream into non-empty lines (NDJSON: one JSON document per line).
#[derive(Default)]
pub(crate) struct LineFramer {
    line: Vec<u8>,
}

impl LineFramer {
    pub(crate) fn feed(&mut self, chunk: &[u8], on_line: &mut impl FnMut(&[u8]) -> ControlFlow<()>) -> ControlFlow<()> {
        let mut at = 0;
        while let Some(nl) = memchr::memchr(b'\n', &chunk[at..]) {
            let end = at + nl;
            if self.line.is_empty() {
                let line = strip_cr(&chunk[at..end]);
                if !line.trim_ascii().is_empty() {
                    on_line(line)?;
                }
            } else {
                self.line.extend_from_slice(&chunk[at..end]);
                let flow = {
                    let line = strip_cr(&self.line);
                    if line.trim_ascii().is_empty() { ControlFlow::Continue(()) } else { on_line(line) }
                };
                self.line.clear();
                flow?;
            }
            at = end + 1;
        }
        self.line.extend_from_slice(&chunk[at..]);
        ControlFlow::Continue(())
    }

    /// The stream ended: delivers a last line that had no newline after it.
    pub(crate) fn finish(&mut self, on_line: &mut impl FnMut(&[u8]) -> ControlFlow<()>) {
        let line = std::mem::take(&mut self.line);
        let line = strip_cr(&line);
        if !line.trim_ascii().is_empty() {
            let _ = on_line(line); // the stream is over either way
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` to a fresh framer and returns the events, as strings.
    fn sse(chunks: &[&[u8]]) -> Vec<String> {
        let mut framer = SseFramer::default();
        let mut events = Vec::new();
        let mut collect = |e: &[u8]| {
            events.push(String::from_utf8(e.to_vec()).unwrap());
            ControlFlow::Continue(())
        };
        for chunk in chunks {
            assert!(framer.feed(chunk, &mut collect).is_continue());
        }
        framer.finish(&mut collect);
        events
    }

    const STREAM: &[u8] = b": ping\r\n\r\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\nevent: x\nid: 3\ndata: line1\ndata\ndata:  two spaces\n\n:comment\ndata: [DONE]\n\n";

    fn expected() -> Vec<String> {
        ["{\"a\":1}", "{\"b\":2}", "line1\n\n two spaces", "[DONE]"].map(String::from).to_vec()
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(sse(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte_position() {
        for cut in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(cut);
            assert_eq!(sse(&[a, b]), expected(), "cut at {cut}");
        }
        for cut in 0..STREAM.len() {
            for cut2 in cut..=STREAM.len() {
                let parts = [&STREAM[..cut], &STREAM[cut..cut2], &STREAM[cut2..]];
                assert_eq!(sse(&parts), expected(), "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(sse(&bytes), expected());
    }

    #[test]
    fn a_last_event_without_blank_line_is_delivered() {
        assert_eq!(sse(&[b"data: {\"a\":1}\n\ndata: tail"]), ["{\"a\":1}", "tail"]);
        assert_eq!(sse(&[b"data: x\n", b"data: y"]), ["x\ny"]);
        assert_eq!(sse(&[b": only a comment"]), Vec::<String>::new());
    }

    #[test]
    fn stopping_stops() {
        let mut framer = SseFramer::default();
        let mut seen = 0;
        let flow = framer.feed(b"data: 1\n\ndata: 2\n\n", &mut |_| {
            seen += 1;
            ControlFlow::Break(())
        });
        assert!(flow.is_break());
        assert_eq!(seen, 1);
    }

    #[test]
    fn ndjson_lines_across_chunks() {
        let stream: &[u8] = b"{\"a\":1}\n\r\n{\"b\":2}\r\n  \n{\"c\":3}";
        for cut in 0..=stream.len() {
            let mut framer = LineFramer::default();
            let mut lines = Vec::new();
            let mut collect = |l: &[u8]| {
                lines.push(String::from_utf8(l.to_vec()).unwrap());
                ControlFlow::Continue(())
            };
            let (a, b) = stream.split_at(cut);
            assert!(framer.feed(a, &mut collect).is_continue());
            assert!(framer.feed(b, &mut collect).is_continue());
            framer.finish(&mut collect);
            assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"], "cut at {cut}");
        }
    }
}
