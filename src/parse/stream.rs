//! Incremental observation of a Server-Sent Events chat completion stream.
//!
//! [`SseParser`] frames events out of arbitrary network chunks (split mid-line, mid-UTF-8,
//! CRLF or CR line ends, comments, multi-line data) with buffers that are reused, so a warm parser
//! allocates nothing per chunk. [`StreamObserver`] folds the events into timings, finish reasons
//! and usage. Neither ever holds back or changes a byte: the caller's bytes pass through as they
//! came (the one exception, hiding the usage chunk the client asked for on the caller's behalf,
//! is done by [`EventCutter`] at event boundaries).

use std::time::Instant;

use crate::parse::anthropic::{self, MessagesEvent, MessagesUsage};
use crate::parse::endpoint::Api;
use crate::parse::provider::{apply_chunk, ChunkKind, ResponseFacts, Usage};
use crate::parse::responses::{self, ResponsesEvent};
use crate::parse::scan;

/// A problem in the stream itself (the record layer maps it to an `error.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFault {
    /// An event that is not a chunk we can read.
    Decode,
    /// An `{"error": …}` event from the provider.
    ErrorEvent,
}

/// Incremental SSE framer (WHATWG `text/event-stream` rules for `data:` fields).
///
/// An event whose single `data:` line lies within one chunk is handed out as a slice of that
/// chunk; only events split across chunks, or with several data lines, are copied into a reused
/// buffer.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Start of a line that continues in the next chunk.
    line: Vec<u8>,
    /// `data` of the event being built (lines joined with `\n`), when it is not in the chunk.
    data: Vec<u8>,
    /// `event` field (the event type) of the event being built; empty when it has none. Reused:
    /// streams without `event:` lines (OpenAI Chat Completions) never touch it.
    event: Vec<u8>,
    pending: Pending,
    /// The previous chunk ended in CR: a leading LF in the next one belongs to it.
    skip_lf: bool,
    /// ... and that CR ended an event, so the LF is the tail of that event.
    skip_lf_ends_event: bool,
}

/// Where the data of the event being built is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// No data line yet.
    #[default]
    None,
    /// One data line, at this range of the current chunk.
    InChunk(usize, usize),
    /// In `SseParser::data`.
    Buffered,
}

/// What [`SseParser::feed`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEvent<'a> {
    /// A complete event with this `data`.
    Data(&'a [u8]),
    /// The chunk began with the LF of a CRLF whose CR, at the end of the previous chunk, ended
    /// an event: bytes up to `end` still belong to that event.
    Tail,
}

/// A line being handled: in the chunk at a range, or carried over from earlier chunks.
#[derive(Clone, Copy)]
enum Line {
    Chunk(usize, usize),
    Carried,
}

impl SseParser {
    /// Feeds one network chunk; calls `on_event(event, end)` for every complete event, where
    /// `end` is the offset in `chunk` just past the blank line that completed it.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>, usize)) {
        self.feed_typed(chunk, |event, _, end| on_event(event, end));
    }

    /// Like [`Self::feed`], also handing out each event's type: the value of its last `event:`
    /// line (`message_start`, `response.completed`, …), empty when it has none (and for
    /// [`SseEvent::Tail`]). The type is kept in a reused buffer: no allocation once warm.
    pub fn feed_typed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>, &[u8], usize)) {
        let mut pos = 0;
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                pos = 1;
                if self.skip_lf_ends_event {
                    on_event(SseEvent::Tail, &[], 1);
                }
            }
        }
        while pos < chunk.len() {
            // The blank line that ends an event is one byte: no search for it.
            let eol = if chunk[pos] == b'\n' {
                Some(pos)
            } else {
                memchr::memchr2(b'\n', b'\r', &chunk[pos..]).map(|i| pos + i)
            };
            let Some(eol) = eol else {
                self.line.extend_from_slice(&chunk[pos..]);
                break;
            };
            let mut next = eol + 1;
            if chunk[eol] == b'\r' {
                match chunk.get(eol + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            let dispatch = if self.line.is_empty() {
                self.take_line(chunk, Line::Chunk(pos, eol))
            } else {
                self.line.extend_from_slice(&chunk[pos..eol]);
                let d = self.take_line(chunk, Line::Carried);
                self.line.clear();
                d
            };
            self.skip_lf_ends_event = dispatch;
            if dispatch {
                let data = match self.pending {
                    Pending::InChunk(a, b) => &chunk[a..b],
                    _ => &self.data[..],
                };
                on_event(SseEvent::Data(data), &self.event, next);
                self.data.clear();
                self.event.clear();
                self.pending = Pending::None;
            }
            pos = next;
        }
        // The chunk is about to go: keep a data line that still waits for its blank line.
        if let Pending::InChunk(a, b) = self.pending {
            self.data.extend_from_slice(&chunk[a..b]);
            self.pending = Pending::Buffered;
        }
    }

    /// Handles one complete line; returns true when it ends an event that has data.
    fn take_line(&mut self, chunk: &[u8], line: Line) -> bool {
        let (base, text) = match line {
            Line::Chunk(a, b) => (a, &chunk[a..b]),
            Line::Carried => (0, &self.line[..]),
        };
        if text.is_empty() {
            // A blank line ends the event; one without data is not dispatched, and its type is
            // forgotten (WHATWG).
            if self.pending == Pending::None {
                self.event.clear();
                return false;
            }
            return true;
        }
        if text[0] == b':' {
            return false;
        }
        let colon = if text.starts_with(b"data:") {
            Some(4)
        } else {
            memchr::memchr(b':', text)
        };
        let (field, value_start) = match colon {
            Some(i) => (&text[..i], i + 1 + usize::from(text.get(i + 1) == Some(&b' '))),
            None => (text, text.len()),
        };
        if field != b"data" {
            if field == b"event" {
                self.event.clear();
                match line {
                    Line::Chunk(a, b) => self.event.extend_from_slice(&chunk[a + value_start..b]),
                    Line::Carried => self.event.extend_from_slice(&self.line[value_start..]),
                }
            }
            return false;
        }
        match (self.pending, line) {
            (Pending::None, Line::Chunk(_, end)) => self.pending = Pending::InChunk(base + value_start, end),
            (Pending::None, Line::Carried) => {
                self.data.extend_from_slice(&self.line[value_start..]);
                self.pending = Pending::Buffered;
            }
            (Pending::InChunk(a, b), _) => {
                self.data.extend_from_slice(&chunk[a..b]);
                self.data.push(b'\n');
                self.push_value(chunk, line, value_start);
                self.pending = Pending::Buffered;
            }
            (Pending::Buffered, _) => {
                self.data.push(b'\n');
                self.push_value(chunk, line, value_start);
            }
        }
        false
    }

    fn push_value(&mut self, chunk: &[u8], line: Line, value_start: usize) {
        match line {
            Line::Chunk(a, b) => self.data.extend_from_slice(&chunk[a + value_start..b]),
            Line::Carried => self.data.extend_from_slice(&self.line[value_start..]),
        }
    }

    /// True when bytes of an unfinished event are pending (the stream was cut mid-event).
    pub fn has_partial_event(&self) -> bool {
        self.pending != Pending::None || !self.line.is_empty()
    }

    /// Between events: nothing carried from earlier chunks (no line, data, type or CR), so a
    /// chunk that is one whole event is read as that event alone.
    fn is_between_events(&self) -> bool {
        self.pending == Pending::None && self.line.is_empty() && self.event.is_empty() && !self.skip_lf
    }
}

/// Whether a chunk is a plain delta that cannot change the record: UTF-8 and shaped like a JSON
/// object (else the full parse reports it as `decode`), not an `{"error": …}` event, and with no
/// non-null `finish_reason` or `usage` ([`has_set_key`]).
fn is_plain_delta(data: &[u8]) -> bool {
    let trimmed = data.trim_ascii();
    trimmed.first() == Some(&b'{')
        && !trimmed[1..].trim_ascii_start().starts_with(b"\"error\"")
        && is_plain_tail(trimmed)
}

/// Whether `json` has a `finish_reason` or `usage` key whose value is not `null`. Keys are found
/// as raw `"key"` bytes, which cannot occur inside a JSON string (quotes are escaped there); a
/// false alarm only costs a full parse.
fn has_set_key(json: &[u8]) -> bool {
    use std::sync::LazyLock;
    static KEYS: LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        LazyLock::new(|| [b"\"finish_reason\"".as_slice(), b"\"usage\""].map(memchr::memmem::Finder::new));
    KEYS.iter().any(|key| {
        let mut rest = json;
        while let Some(at) = key.find(rest) {
            rest = &rest[at + key.needle().len()..];
            let value = rest
                .iter()
                .copied()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b':'));
            if value.is_some_and(|b| b != b'n') {
                return true;
            }
        }
        false
    })
}

/// The shape of the stream's last plain delta: its bytes before and after the text of its
/// first `content` (or tool call `arguments`) string. A chunk with the same bytes around a
/// string text of its own differs from that delta in that text only, so it is a plain delta
/// too: two comparisons and a look at the text, where [`is_plain_delta`] searches the whole
/// chunk. The bytes after may differ (OpenAI's per-chunk `obfuscation` padding); then only
/// they are searched.
#[derive(Debug, Default)]
struct DeltaShape {
    /// The bytes before the text, then the bytes after it (from its closing quote on).
    bytes: Vec<u8>,
    /// Where the bytes after begin; 0 when nothing is learned.
    split: usize,
    /// The learned bytes hold no CR or LF: a delta of this shape is one line.
    one_line: bool,
}

/// The bytes after a plain delta's text, as [`DeltaShape::tail`] found them.
enum Tail<'a> {
    /// The learned delta's.
    Same,
    /// Others, checked ([`is_plain_tail`]).
    Other(&'a [u8]),
}

impl DeltaShape {
    /// Whether `data` is a plain delta of this shape.
    fn matches(&self, data: &[u8]) -> bool {
        self.tail(data).is_some()
    }

    /// The bytes after the text of `data`, when it is a plain delta of this shape.
    fn tail<'d>(&self, data: &'d [u8]) -> Option<Tail<'d>> {
        if self.split == 0 {
            return None;
        }
        let (before, after) = self.bytes.split_at(self.split);
        let rest = data.strip_prefix(before)?;
        let len = scan::string_body(rest)?;
        let (text, tail) = rest.split_at(len);
        if !(text.is_ascii() || std::str::from_utf8(text).is_ok()) {
            return None;
        }
        if tail == after {
            Some(Tail::Same)
        } else {
            is_plain_tail(tail).then_some(Tail::Other(tail))
        }
    }

    /// The data of `chunk` when the chunk is one whole event, `data: ` and a plain delta of
    /// this shape on one line, then a blank line: what the SSE parser, between events, would
    /// hand out for it, found without searching the chunk for its line ends. The text holds no
    /// CR or LF (a control character fails [`scan::string_body`]), nor do the learned bytes
    /// (`one_line`); other bytes after the text are searched.
    fn whole_event<'c>(&self, chunk: &'c [u8]) -> Option<&'c [u8]> {
        if !self.one_line {
            return None;
        }
        let data = chunk.strip_prefix(b"data: ")?.strip_suffix(b"\n\n")?;
        match self.tail(data)? {
            Tail::Same => Some(data),
            Tail::Other(tail) => memchr::memchr2(b'\n', b'\r', tail).is_none().then_some(data),
        }
    }

    /// Whether `data` is a plain delta: of this shape, or else per [`is_plain_delta`] (and then
    /// its shape is learned).
    fn is_plain_delta(&mut self, data: &[u8]) -> bool {
        if self.matches(data) {
            return true;
        }
        let plain = is_plain_delta(data);
        if plain {
            self.learn(data);
        }
        plain
    }

    /// Learns the shape of `data`, a plain delta (per [`is_plain_delta`]).
    fn learn(&mut self, data: &[u8]) {
        use std::sync::LazyLock;
        static KEYS: LazyLock<[memchr::memmem::Finder<'static>; 2]> =
            LazyLock::new(|| [b"\"content\":\"".as_slice(), b"\"arguments\":\""].map(memchr::memmem::Finder::new));
        self.split = 0;
        let Some(start) = KEYS
            .iter()
            .find_map(|key| key.find(data).map(|at| at + key.needle().len()))
        else {
            return;
        };
        let Some(len) = scan::string_body(&data[start..]) else {
            return;
        };
        self.bytes.clear();
        self.bytes.reserve(data.len() - len);
        self.bytes.extend_from_slice(&data[..start]);
        self.bytes.extend_from_slice(&data[start + len..]);
        self.split = start;
        self.one_line = memchr::memchr2(b'\n', b'\r', &self.bytes).is_none();
    }
}

/// Whether the bytes after a plain delta's text, in a chunk otherwise of a known plain delta's
/// shape, leave it plain: UTF-8, ending the object, no non-null `finish_reason` or `usage` (the
/// checks [`is_plain_delta`] makes of a whole chunk, which the bytes before, the known delta's,
/// have passed).
fn is_plain_tail(tail: &[u8]) -> bool {
    tail.trim_ascii_end().last() == Some(&b'}') && std::str::from_utf8(tail).is_ok() && !has_set_key(tail)
}

/// What the observer made of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// A chunk the caller should see.
    Chunk,
    /// A chunk the caller should see that carries a finish reason (Chat Completions: a choice's
    /// `finish_reason`; Anthropic: `message_delta`, with the stop reason and the final usage).
    Finish,
    /// The usage-only chunk (Chat Completions with `include_usage`).
    UsageOnly,
    /// The end of the stream: `[DONE]`; Anthropic's `message_stop`; the Responses API's
    /// terminal `response.completed`, `response.incomplete` or `response.failed` (which also
    /// carries the final response and its usage).
    Done,
    /// An event we could not read, or an error event; passed on unchanged.
    Unreadable,
}

/// The opening `event: <type>\ndata: ` of the last chunk read as one whole event with a type
/// (Anthropic's and the Responses API's spelling of every event). A stream's next events mostly
/// share it (one content delta after another), so it is compared before it is searched for.
#[derive(Debug, Default)]
struct EventHead {
    bytes: Vec<u8>,
}

impl EventHead {
    /// The event `chunk` holds when it is one whole event spelled `event: <type>`, LF,
    /// `data: <data>`, LF, LF: what the SSE parser, between events, hands out for it (so
    /// neither field holds a CR or LF). Other spellings, and chunks of more or less than one
    /// event, are left to the parser.
    fn frame<'c>(&mut self, chunk: &'c [u8]) -> Option<(SseFrame<'c>, bool)> {
        const EVENT: &[u8] = b"event: ";
        const DATA: &[u8] = b"data: ";
        let open = if !self.bytes.is_empty() && chunk.starts_with(&self.bytes) {
            self.bytes.len()
        } else {
            let rest = chunk.strip_prefix(EVENT)?;
            let eol = memchr::memchr2(b'\n', b'\r', rest)?;
            if rest[eol] != b'\n' || !rest[eol + 1..].starts_with(DATA) {
                return None;
            }
            let open = EVENT.len() + eol + 1 + DATA.len();
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[..open]);
            open
        };
        let data = chunk[open..].strip_suffix(b"\n\n")?;
        let ascii = line_is_ascii(data)?;
        let frame = SseFrame {
            event: &chunk[EVENT.len()..open - 1 - DATA.len()],
            data,
        };
        Some((frame, ascii))
    }
}

/// Whether one line's bytes are all ASCII; `None` when they hold a CR or LF (they are more than
/// one line). One pass, which the compiler vectorizes.
fn line_is_ascii(line: &[u8]) -> Option<bool> {
    let (mut high, mut breaks) = (0u8, 0u8);
    for &b in line {
        high |= b;
        breaks |= u8::from(b == b'\n') | u8::from(b == b'\r');
    }
    (breaks == 0).then_some(high < 0x80)
}

/// One complete event as [`StreamObserver::observe_typed`] hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseFrame<'a> {
    /// The `event:` field (empty when the event has none, as in Chat Completions streams).
    /// A caller that re-emits an event it held back must write this line again: the Anthropic
    /// and OpenAI SDKs dispatch on it.
    pub event: &'a [u8],
    /// The `data` (lines joined with `\n`).
    pub data: &'a [u8],
}

/// Folds a streaming answer into the facts of the call: Chat Completions by default, or another
/// [`Api`] ([`Self::for_api`]). Content is never kept, and content deltas are not
/// parsed: a warm observer allocates nothing per delta.
#[derive(Debug)]
pub struct StreamObserver {
    parser: SseParser,
    format: Api,
    /// When the request was sent.
    pub started: Instant,
    /// When the first chunk (data event) arrived.
    pub first_chunk: Option<Instant>,
    /// When the first output arrived: Chat Completions' first chunk that names the model (sent
    /// with the first token; Azure OpenAI's first chunk, with only the prompt's filter results,
    /// comes before it); Anthropic's first `content_block_delta`; the Responses API's first
    /// `*.delta` event. Anthropic's `message_start`, the Responses API's `response.created` and
    /// Azure's filter chunk can come before any output is generated: this, not `first_chunk`, is
    /// the time to first token.
    pub first_output: Option<Instant>,
    /// When the latest chunk arrived.
    pub last_chunk: Option<Instant>,
    /// Data events seen, the end marker (`[DONE]`, `message_stop`) and Anthropic's `ping`
    /// excluded.
    pub chunks: u32,
    /// Response facts gathered from the chunks.
    pub facts: ResponseFacts,
    /// The usage the stream reported (Chat Completions: the usage chunk's; Anthropic: the
    /// `message_start` usage updated by `message_delta`; Responses: the terminal event's).
    pub usage: Option<Usage>,
    /// The end of the stream was seen ([`EventOutcome::Done`]).
    pub done: bool,
    /// First problem seen in the stream itself (`decode` or `stream_error`).
    pub error: Option<StreamFault>,
    /// Anthropic's usage as sent so far (`message_start`, then each `message_delta`).
    messages_usage: MessagesUsage,
    last_outcome: EventOutcome,
    /// The last plain delta's shape (Chat Completions).
    shape: DeltaShape,
    /// The opening of the last event with a type read whole.
    head: EventHead,
}

impl StreamObserver {
    /// A fresh observer of a Chat Completions stream for a request sent at `started`.
    pub fn new(started: Instant) -> Self {
        Self::for_api(started, Api::ChatCompletions)
    }

    /// A fresh observer of a stream in `format` for a request sent at `started`.
    pub fn for_api(started: Instant, format: Api) -> Self {
        StreamObserver {
            parser: SseParser::default(),
            format,
            started,
            first_chunk: None,
            first_output: None,
            last_chunk: None,
            chunks: 0,
            facts: ResponseFacts::default(),
            usage: None,
            done: false,
            error: None,
            messages_usage: MessagesUsage::default(),
            last_outcome: EventOutcome::Chunk,
            shape: DeltaShape::default(),
            head: EventHead::default(),
        }
    }

    /// The API whose stream this observer reads.
    pub fn api(&self) -> Api {
        self.format
    }

    /// Observes one network chunk; `on_event(outcome, end)` is told about every complete event.
    ///
    /// The clock is read for the first chunk and for chunks that carry more than content (the
    /// finish, usage and end events), not for every content delta: the last output chunk
    /// time is that of the finish chunk, which follows the last delta.
    pub fn observe(&mut self, chunk: &[u8], mut on_event: impl FnMut(EventOutcome, usize)) {
        self.observe_typed(chunk, |outcome, end, _| on_event(outcome, end));
    }

    /// Like [`Self::observe`], also handing out each event's `data` (`None` for the tail of an
    /// event completed in the previous chunk: see [`SseEvent::Tail`]).
    pub fn observe_events(&mut self, chunk: &[u8], mut on_event: impl FnMut(EventOutcome, usize, Option<&[u8]>)) {
        self.observe_typed(chunk, |outcome, end, frame| {
            on_event(outcome, end, frame.map(|f| f.data))
        });
    }

    /// Like [`Self::observe_events`], with the event's type (`event:` field) beside its data.
    pub fn observe_typed(&mut self, chunk: &[u8], mut on_event: impl FnMut(EventOutcome, usize, Option<SseFrame<'_>>)) {
        let Self {
            parser,
            format,
            first_chunk,
            first_output,
            last_chunk,
            chunks,
            facts,
            usage,
            done,
            error,
            messages_usage,
            last_outcome,
            shape,
            head,
            ..
        } = self;
        let format = *format;
        let between_events = parser.is_between_events();
        if format == Api::ChatCompletions && between_events && first_chunk.is_some() && facts.model.is_some() {
            if let Some(data) = shape.whole_event(chunk) {
                // One whole plain content delta: what the parser and the check below would
                // make of it, without the parser's search for line ends.
                *chunks += 1;
                *last_outcome = EventOutcome::Chunk;
                return on_event(EventOutcome::Chunk, chunk.len(), Some(SseFrame { event: &[], data }));
            }
        }
        // What one event (`name` its type, empty when it has none; `ascii` when its data is
        // known to be ASCII) tells about the call.
        let mut fold = |name: &[u8], data: &[u8], ascii: bool| -> EventOutcome {
            match format {
                Api::ChatCompletions => {
                    if data == b"[DONE]" {
                        *done = true;
                        return EventOutcome::Done;
                    }
                    *chunks += 1;
                    if first_chunk.is_some() && facts.model.is_some() && shape.is_plain_delta(data) {
                        // A plain content delta: nothing in it changes the record.
                        return EventOutcome::Chunk;
                    }
                    let now = Instant::now();
                    first_chunk.get_or_insert(now);
                    *last_chunk = Some(now);
                    let applied = apply_chunk(data, facts, usage);
                    if first_output.is_none() && facts.model.is_some() {
                        *first_output = Some(now);
                    }
                    match applied {
                        Ok(ChunkKind::Delta) => EventOutcome::Chunk,
                        Ok(ChunkKind::Finish) => EventOutcome::Finish,
                        Ok(ChunkKind::UsageOnly) => EventOutcome::UsageOnly,
                        Ok(ChunkKind::Error) => {
                            error.get_or_insert(StreamFault::ErrorEvent);
                            EventOutcome::Unreadable
                        }
                        Err(_) => {
                            error.get_or_insert(StreamFault::Decode);
                            EventOutcome::Unreadable
                        }
                    }
                }
                Api::AnthropicMessages => {
                    let kind = anthropic::event_kind(name, data);
                    if kind == MessagesEvent::Ping {
                        // Keep-alive: not a chunk of the answer.
                        return EventOutcome::Chunk;
                    }
                    if kind != MessagesEvent::MessageStop {
                        *chunks += 1;
                    }
                    let quiet = match kind {
                        MessagesEvent::ContentDelta => first_output.is_some(),
                        MessagesEvent::BlockEdge | MessagesEvent::Other => first_chunk.is_some(),
                        _ => false,
                    };
                    if quiet && (ascii || std::str::from_utf8(data).is_ok()) {
                        // Content, or a block boundary: never parsed, no clock read.
                        return EventOutcome::Chunk;
                    }
                    let now = Instant::now();
                    first_chunk.get_or_insert(now);
                    if kind == MessagesEvent::ContentDelta {
                        first_output.get_or_insert(now);
                    }
                    *last_chunk = Some(now);
                    match anthropic::apply_event(kind, data, facts, messages_usage) {
                        Err(_) => {
                            error.get_or_insert(StreamFault::Decode);
                            EventOutcome::Unreadable
                        }
                        Ok(()) => match kind {
                            MessagesEvent::MessageStart => {
                                *usage = messages_usage.to_usage();
                                EventOutcome::Chunk
                            }
                            MessagesEvent::MessageDelta => {
                                *usage = messages_usage.to_usage();
                                EventOutcome::Finish
                            }
                            MessagesEvent::MessageStop => {
                                *done = true;
                                EventOutcome::Done
                            }
                            MessagesEvent::Error => {
                                error.get_or_insert(StreamFault::ErrorEvent);
                                EventOutcome::Unreadable
                            }
                            MessagesEvent::Unreadable => {
                                error.get_or_insert(StreamFault::Decode);
                                EventOutcome::Unreadable
                            }
                            _ => EventOutcome::Chunk,
                        },
                    }
                }
                Api::Responses => {
                    let kind = responses::event_kind(name, data);
                    *chunks += 1;
                    let quiet = match kind {
                        ResponsesEvent::OutputDelta => first_output.is_some(),
                        ResponsesEvent::Other => first_chunk.is_some(),
                        _ => false,
                    };
                    if quiet && (ascii || std::str::from_utf8(data).is_ok()) {
                        // Output, or an item or part boundary: never parsed, no clock read.
                        return EventOutcome::Chunk;
                    }
                    let now = Instant::now();
                    first_chunk.get_or_insert(now);
                    if kind == ResponsesEvent::OutputDelta {
                        first_output.get_or_insert(now);
                    }
                    *last_chunk = Some(now);
                    if kind.is_terminal() {
                        *done = true;
                    }
                    match responses::apply_event(kind, data, facts, usage) {
                        Err(_) => {
                            error.get_or_insert(StreamFault::Decode);
                            EventOutcome::Unreadable
                        }
                        Ok(()) => match kind {
                            ResponsesEvent::Error => {
                                error.get_or_insert(StreamFault::ErrorEvent);
                                EventOutcome::Unreadable
                            }
                            ResponsesEvent::Unreadable => {
                                error.get_or_insert(StreamFault::Decode);
                                EventOutcome::Unreadable
                            }
                            ResponsesEvent::Failed => {
                                error.get_or_insert(StreamFault::ErrorEvent);
                                EventOutcome::Done
                            }
                            ResponsesEvent::Completed | ResponsesEvent::Incomplete => EventOutcome::Done,
                            _ => EventOutcome::Chunk,
                        },
                    }
                }
            }
        };
        if between_events {
            if let Some((frame, ascii)) = head.frame(chunk) {
                // One whole event with a type (Anthropic's and the Responses API's spelling):
                // what the parser would hand out, without its work per line.
                let outcome = fold(frame.event, frame.data, ascii);
                *last_outcome = outcome;
                return on_event(outcome, chunk.len(), Some(frame));
            }
        }
        parser.feed_typed(chunk, |event, name, end| {
            let data = match event {
                SseEvent::Tail => return on_event(*last_outcome, end, None),
                SseEvent::Data(data) => data,
            };
            let outcome = fold(name, data, false);
            *last_outcome = outcome;
            on_event(outcome, end, Some(SseFrame { event: name, data }));
        });
    }

    /// Observes a chunk without acting on events.
    pub fn observe_all(&mut self, chunk: &[u8]) {
        self.observe(chunk, |_, _| {});
    }
}

/// Removes whole events (the usage-only chunk the client requested for itself) from a byte
/// stream while passing everything else on. Bytes of an event are held only until that event
/// completes; a chunk that holds whole events and nothing to remove passes as the same `Bytes`.
#[derive(Debug, Default)]
pub struct EventCutter {
    /// Bytes of the current, unfinished event from earlier chunks.
    pending: Vec<bytes::Bytes>,
}

impl EventCutter {
    /// Splits `chunk` at event ends: `events` lists `(end, keep)` for each event completed in
    /// it, in order. Returns the bytes to pass on now.
    pub fn cut(&mut self, chunk: bytes::Bytes, events: &[(usize, bool)]) -> Option<bytes::Bytes> {
        self.cut_inserting(chunk, events, &[])
    }

    /// Like [`Self::cut`], and passes each `inserts` entry's bytes on just before the event at
    /// its index (in index order).
    pub fn cut_inserting(
        &mut self,
        chunk: bytes::Bytes,
        events: &[(usize, bool)],
        inserts: &[(usize, bytes::Bytes)],
    ) -> Option<bytes::Bytes> {
        if events.is_empty() {
            self.pending.push(chunk);
            return None;
        }
        if inserts.is_empty()
            && events.iter().all(|(_, keep)| *keep)
            && self.pending.is_empty()
            && events.last().is_some_and(|(end, _)| *end == chunk.len())
        {
            return Some(chunk);
        }
        let mut out = Vec::new();
        let mut start = 0;
        for (index, &(end, keep)) in events.iter().enumerate() {
            for (_, extra) in inserts.iter().filter(|(at, _)| *at == index) {
                out.extend_from_slice(extra);
            }
            if keep {
                for p in self.pending.drain(..) {
                    out.extend_from_slice(&p);
                }
                out.extend_from_slice(&chunk[start..end]);
            } else {
                self.pending.clear();
            }
            start = end;
        }
        if start < chunk.len() {
            self.pending.push(chunk.slice(start..));
        }
        (!out.is_empty()).then(|| bytes::Bytes::from(out))
    }

    /// Bytes of an unfinished event left at the end of the body: passed on as they are.
    pub fn finish(&mut self) -> Option<bytes::Bytes> {
        if self.pending.is_empty() {
            return None;
        }
        let out: Vec<u8> = self.pending.drain(..).flat_map(|b| b.to_vec()).collect();
        Some(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(input: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in input {
            p.feed(chunk, |e, _| {
                if let SseEvent::Data(d) = e {
                    out.push(String::from_utf8(d.to_vec()).unwrap())
                }
            });
        }
        out
    }

    #[test]
    fn sse_frames_lf_crlf_and_cr_line_ends() {
        assert_eq!(
            events(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata:d\n\n"]),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn sse_ignores_comments_and_other_fields_and_joins_multiline_data() {
        assert_eq!(
            events(&[b": ping\n\nevent: x\nid: 1\ndata: one\ndata:  two\nretry: 5\n\n"]),
            ["one\n two"]
        );
    }

    fn typed_events(input: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in input {
            p.feed_typed(chunk, |e, name, _| {
                if let SseEvent::Data(d) = e {
                    out.push((
                        String::from_utf8(name.to_vec()).unwrap(),
                        String::from_utf8(d.to_vec()).unwrap(),
                    ))
                }
            });
        }
        out
    }

    #[test]
    fn sse_event_types_are_handed_out_and_forgotten_after_each_event() {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            typed_events(&[b"event: message_start\ndata: {}\n\ndata: plain\n\nevent:ping\r\ndata: p\r\n\r\n"]),
            pairs(&[("message_start", "{}"), ("", "plain"), ("ping", "p")])
        );
        // Split mid-name and mid-line; the last `event:` line wins; a blank-line event without
        // data forgets its type.
        assert_eq!(
            typed_events(&[
                b"event: a\nevent: content_bl",
                b"ock_delta\nda",
                b"ta: x\n\nevent: lost\n\ndata: y\n\n"
            ]),
            pairs(&[("content_block_delta", "x"), ("", "y")])
        );
    }

    #[test]
    fn azures_filter_chunk_is_a_chunk_but_not_the_first_output() {
        let mut o = StreamObserver::new(Instant::now());
        o.observe_all(b"data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n");
        assert!(o.first_chunk.is_some() && o.first_output.is_none());
        o.observe_all(b"data: {\"id\":\"chatcmpl-1\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        assert!(o.first_output.is_some() && o.first_chunk <= o.first_output);
        assert_eq!(o.chunks, 2);
        assert_eq!(o.facts.id.as_deref(), Some("chatcmpl-1"));
    }

    #[test]
    fn a_content_delta_that_is_not_utf8_is_a_decode_fault() {
        let mut o = StreamObserver::new(Instant::now());
        o.observe_all(b"data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        o.observe_all(b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(o.error, None);
        o.observe_all(b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xFF\"},\"finish_reason\":null}]}\n\n");
        assert_eq!(o.error, Some(StreamFault::Decode));
    }

    #[test]
    fn sse_cr_at_chunk_end_followed_by_lf_is_one_line_end() {
        assert_eq!(events(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]), ["a\nb"]);
    }

    #[test]
    fn sse_crlf_split_between_cr_and_lf_reports_the_tail_of_the_event() {
        let mut p = SseParser::default();
        let mut seen = Vec::new();
        p.feed(b"data: a\r\n\r", |e, end| seen.push((matches!(e, SseEvent::Tail), end)));
        p.feed(b"\ndata: b\r\n\r\n", |e, end| {
            seen.push((matches!(e, SseEvent::Tail), end))
        });
        assert_eq!(seen, [(false, 10), (true, 1), (false, 12)]);
    }

    #[test]
    fn sse_event_without_blank_line_is_partial() {
        let mut p = SseParser::default();
        p.feed(b"data: a\n", |_, _| panic!("not complete"));
        assert!(p.has_partial_event());
    }

    #[test]
    fn sse_reports_event_end_offsets() {
        let mut p = SseParser::default();
        let mut ends = Vec::new();
        p.feed(b"data: a\n\ndata: b\r\n\r\nda", |_, end| ends.push(end));
        assert_eq!(ends, [9, 20]);
    }

    #[test]
    fn cutter_passes_whole_events_through_as_the_same_bytes() {
        let mut c = EventCutter::default();
        let chunk = bytes::Bytes::from_static(b"data: a\n\n");
        let out = c.cut(chunk.clone(), &[(9, true)]).unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn cutter_inserts_before_an_event() {
        let mut c = EventCutter::default();
        let out = c
            .cut_inserting(
                bytes::Bytes::from_static(b"data: a\n\ndata: [DONE]\n\n"),
                &[(9, true), (23, true)],
                &[(1, bytes::Bytes::from_static(b"data: x\n\n"))],
            )
            .unwrap();
        assert_eq!(out, &b"data: a\n\ndata: x\n\ndata: [DONE]\n\n"[..]);
    }

    #[test]
    fn cutter_removes_an_event_split_across_chunks() {
        let mut c = EventCutter::default();
        assert_eq!(
            c.cut(bytes::Bytes::from_static(b"data: a\n\ndata: u"), &[(9, true)])
                .unwrap(),
            &b"data: a\n\n"[..]
        );
        assert_eq!(
            c.cut(
                bytes::Bytes::from_static(b"sage\n\ndata: [DONE]\n\n"),
                &[(6, false), (20, true)]
            )
            .unwrap(),
            &b"data: [DONE]\n\n"[..]
        );
        assert!(c.finish().is_none());
    }

    const FIXTURE: &str = include_str!("../../tests/fixtures/openai-chat-completion-stream.sse");
    const ANTHROPIC_FIXTURE: &str = include_str!("../../tests/fixtures/anthropic-message-stream.sse");
    const RESPONSES_FIXTURE: &str = include_str!("../../tests/fixtures/openai-response-stream.sse");

    /// The `(type, data)` of each event of a recorded stream written `event: T`, `data: D`.
    fn recorded_events(stream: &str) -> Vec<(String, String)> {
        stream
            .split("\n\n")
            .filter_map(|event| {
                let (event, data) = event.strip_prefix("event: ")?.split_once("\ndata: ")?;
                Some((event.to_owned(), data.to_owned()))
            })
            .collect()
    }

    /// The data of the recorded stream's events.
    fn fixture_data() -> Vec<&'static [u8]> {
        FIXTURE
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::as_bytes)
            .collect()
    }

    #[test]
    fn a_warm_typed_delta_read_whole_is_checked_for_utf8() {
        for (api, stream, delta_type) in [
            (Api::AnthropicMessages, ANTHROPIC_FIXTURE, "content_block_delta"),
            (Api::Responses, RESPONSES_FIXTURE, "response.output_text.delta"),
        ] {
            let events = recorded_events(stream);
            let first_delta = events.iter().position(|(t, _)| t == delta_type).unwrap();
            let mut o = StreamObserver::for_api(Instant::now(), api);
            for (t, d) in &events[..=first_delta] {
                o.observe_all(format!("event: {t}\ndata: {d}\n\n").as_bytes());
            }
            let delta = &events[first_delta].1;
            let outcome = |o: &mut StreamObserver, data: &[u8]| {
                let chunk = [format!("event: {delta_type}\ndata: ").as_bytes(), data, b"\n\n"].concat();
                let mut seen = vec![];
                o.observe_typed(&chunk, |outcome, end, frame| {
                    seen.push((
                        outcome,
                        end == chunk.len(),
                        frame.map(|f| (f.event.to_vec(), f.data.to_vec())),
                    ))
                });
                seen
            };
            let read_as =
                |outcome, data: &[u8]| vec![(outcome, true, Some((delta_type.as_bytes().to_vec(), data.to_vec())))];
            // ASCII, then other UTF-8: content, nothing more.
            let text = delta.replace("Hi", "Hi there").replace("Hello", "Hello there");
            assert_eq!(
                outcome(&mut o, text.as_bytes()),
                read_as(EventOutcome::Chunk, text.as_bytes())
            );
            let text = delta.replace("Hi", "Hé 👋").replace("Hello", "Hé 👋");
            assert_eq!(
                outcome(&mut o, text.as_bytes()),
                read_as(EventOutcome::Chunk, text.as_bytes())
            );
            assert_eq!(o.error, None, "{api:?}");
            // Both were framed without the parser.
            assert_eq!(o.head.bytes, format!("event: {delta_type}\ndata: ").as_bytes());
            // A byte that is not UTF-8 in the text: not readable, and the stream's fault.
            let mut bad = delta.clone().into_bytes();
            bad[delta.find("\"H").unwrap() + 2] = 0xff;
            assert_eq!(
                outcome(&mut o, &bad),
                read_as(EventOutcome::Unreadable, &bad),
                "{api:?}"
            );
            assert_eq!(o.error, Some(StreamFault::Decode), "{api:?}");
        }
    }

    #[test]
    fn warm_deltas_of_the_recorded_stream_are_known_by_their_shape() {
        let data = fixture_data();
        let (last_delta, deltas) = (data.len() - 3, 2..data.len() - 3);
        assert!(deltas.len() >= 3, "the fixture has content deltas");
        let mut shape = DeltaShape::default();
        shape.learn(data[1]);
        for chunk in &data[deltas] {
            assert!(shape.matches(chunk), "{}", String::from_utf8_lossy(chunk));
        }
        // The finish chunk, the usage chunk and `[DONE]` are not.
        for chunk in &data[last_delta..] {
            assert!(!shape.matches(chunk), "{}", String::from_utf8_lossy(chunk));
        }
        // The first chunk (with `role`) has another shape.
        assert!(!shape.matches(data[0]));
    }

    #[test]
    fn a_shape_is_learned_from_content_or_tool_call_arguments_only() {
        let mut shape = DeltaShape::default();
        shape.learn(
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a"}}]}}]}"#,
        );
        assert!(shape.matches(
            br#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\":1}"}}]}}]}"#
        ));
        shape.learn(br#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#);
        assert!(!shape.matches(br#"{"choices":[{"index":0,"delta":{"refusal":"no"}}]}"#));
        assert!(!DeltaShape::default().matches(b"{}"));
    }

    #[test]
    fn a_chunk_of_the_same_shape_is_checked_in_its_text_and_in_what_follows() {
        let data = fixture_data();
        let mut shape = DeltaShape::default();
        shape.learn(data[2]);
        let text = |t: &str| with_text(data[2], t);
        // Escapes and other languages are text.
        assert!(shape.matches(&text(r#"line\n\"quoted\" \u00e9 é 😀"#)));
        // A quote ends the text: what follows is not the known delta's.
        assert!(!shape.matches(&text(r#"x","usage":{"total_tokens":1},"y":""#)));
        // A bad escape, a control character, bytes that are not UTF-8.
        assert!(!shape.matches(&text(r"\x")));
        assert!(!shape.matches(&text("a\u{1}b")));
        let mut latin1 = text("caf");
        let at = latin1.iter().position(|&b| b == b'f').unwrap() + 1;
        latin1.insert(at, 0xe9);
        assert!(!shape.matches(&latin1));
        // Padding that differs per chunk after the text: searched, and plain.
        let tail = |from: &str, to: &str| {
            String::from_utf8(data[2].to_vec())
                .unwrap()
                .replace(from, to)
                .into_bytes()
        };
        assert!(shape.matches(&tail(r#""usage":null}"#, r#""usage":null,"obfuscation":"k3Zq"}"#)));
        assert!(!shape.matches(&tail(r#""usage":null}"#, r#""usage":{"total_tokens":1}}"#)));
        assert!(!shape.matches(&tail(r#""finish_reason":null"#, r#""finish_reason":"stop""#)));
        assert!(!shape.matches(&tail(r#""usage":null}"#, r#""usage":null"#)));
    }

    #[test]
    fn a_whole_event_of_the_shape_is_known_without_the_parser_and_only_then() {
        let data = fixture_data();
        let mut shape = DeltaShape::default();
        shape.learn(data[2]);
        let event = |d: &[u8], before: &str, after: &str| [before.as_bytes(), d, after.as_bytes()].concat();
        for delta in &data[2..data.len() - 3] {
            assert_eq!(shape.whole_event(&event(delta, "data: ", "\n\n")), Some(*delta));
            // Other spellings of the same event go through the parser.
            assert_eq!(shape.whole_event(&event(delta, "data:", "\n\n")), None);
            assert_eq!(shape.whole_event(&event(delta, "data: ", "\r\n\r\n")), None);
            assert_eq!(shape.whole_event(&event(delta, "data: ", "\n")), None);
            assert_eq!(shape.whole_event(&event(delta, "data: ", "\n\ndata: {}\n\n")), None);
        }
        // A line break after the text, where the bytes differ from the learned ones.
        let padded = String::from_utf8(data[2].to_vec()).unwrap();
        let broken = padded.replace(r#""usage":null}"#, "\"usage\":null,\n\"x\":1}");
        assert!(shape.matches(broken.as_bytes()), "a JSON line break is plain");
        assert_eq!(shape.whole_event(&event(broken.as_bytes(), "data: ", "\n\n")), None);
        // A shape learned from data on two lines never matches a whole event.
        shape.learn(broken.as_bytes());
        assert!(shape.matches(broken.as_bytes()));
        assert_eq!(shape.whole_event(&event(broken.as_bytes(), "data: ", "\n\n")), None);
    }

    /// `chunk` with its content text replaced by `text` (written as is).
    fn with_text(chunk: &[u8], text: &str) -> Vec<u8> {
        let chunk = std::str::from_utf8(chunk).unwrap();
        let start = chunk.find(r#""content":""#).unwrap() + r#""content":""#.len();
        let len = scan::string_body(&chunk.as_bytes()[start..]).unwrap();
        format!("{}{text}{}", &chunk[..start], &chunk[start + len..]).into_bytes()
    }

    mod shape_property {
        use super::*;
        use crate::parse::scan::differential::edit;
        use proptest::prelude::*;

        /// Edits after the text: a usage, a finish reason, padding, an error.
        const REPLACEMENTS: [(&str, &str); 4] = [
            (
                r#""usage":null"#,
                r#""usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#,
            ),
            (r#""finish_reason":null"#, r#""finish_reason":"length""#),
            (r#""usage":null"#, r#""usage":null,"obfuscation":"aZ0""#),
            (r#""logprobs":null"#, r#""logprobs":null,"error":{"message":"x"}"#),
        ];

        /// What an observer made of a stream: each event's outcome, type and data (tails of
        /// events ended in an earlier chunk left out: where a chunk ends is not the stream's),
        /// then the record's facts.
        type Reading = (
            Vec<(EventOutcome, Vec<u8>, Vec<u8>)>,
            u32,
            ResponseFacts,
            Option<Usage>,
            bool,
            Option<StreamFault>,
        );

        fn read(pieces: impl IntoIterator<Item = Vec<u8>>) -> Reading {
            read_api(Api::ChatCompletions, pieces)
        }

        fn read_api(api: Api, pieces: impl IntoIterator<Item = Vec<u8>>) -> Reading {
            let mut o = StreamObserver::for_api(Instant::now(), api);
            let mut events = Vec::new();
            for piece in pieces {
                o.observe_typed(&piece, |outcome, _, frame| {
                    if let Some(f) = frame {
                        events.push((outcome, f.event.to_vec(), f.data.to_vec()));
                    }
                });
            }
            (events, o.chunks, o.facts, o.usage, o.done, o.error)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]
            /// A stream whose chunks are whole events (most of them taking the observer's
            /// shortcut past the SSE parser) reads as the same bytes fed one at a time (every
            /// byte through the parser): the recorded stream with new content texts, an edit
            /// after one text, and events written as `data: `, `data:`, with CRLF, two to a
            /// chunk, or with an `event:` line in the same chunk or the one before.
            #[test]
            fn whole_events_read_as_the_parser_reads_them(
                texts in proptest::collection::vec(any::<String>(), 1..8),
                styles in proptest::collection::vec(0u8..6, 12),
                kind: u8,
                at: usize,
            ) {
                let data = fixture_data();
                let mut events: Vec<Vec<u8>> = data[..2].iter().map(|d| d.to_vec()).collect();
                for (i, text) in texts.iter().enumerate() {
                    let escaped = serde_json::to_string(text).unwrap();
                    let delta = with_text(data[2], &escaped[1..escaped.len() - 1]);
                    events.push(match i {
                        1 => edit(std::str::from_utf8(&delta).unwrap(), kind, at, &REPLACEMENTS).into_bytes(),
                        _ => delta,
                    });
                }
                events.extend(data[data.len() - 3..].iter().map(|d| d.to_vec()));
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                for (i, d) in events.iter().enumerate() {
                    let d = String::from_utf8_lossy(d);
                    let event = match styles[i % styles.len()] {
                        1 => format!("data:{d}\n\n"),
                        2 => format!("data: {d}\r\n\r\n"),
                        3 => format!("event: x\ndata: {d}\n\n"),
                        4 if !chunks.is_empty() => {
                            chunks.last_mut().unwrap().extend_from_slice(format!("data: {d}\n\n").as_bytes());
                            continue;
                        }
                        5 => {
                            chunks.push(b"event: y\n".to_vec());
                            format!("data: {d}\n\n")
                        }
                        _ => format!("data: {d}\n\n"),
                    };
                    chunks.push(event.into_bytes());
                }
                let bytes: Vec<u8> = chunks.concat();
                let whole = read(chunks);
                let by_byte = read(bytes.iter().map(|b| vec![*b]));
                prop_assert_eq!(whole, by_byte);
            }

            /// A stream with event types (Anthropic Messages, the Responses API) whose chunks are
            /// whole events, most of them framed without the SSE parser, reads as the same bytes
            /// fed one at a time: the recorded stream with new content texts (any Unicode, or a
            /// byte that is not UTF-8), an edit in one event's data (a line break in it, a cut, a
            /// stray quote), and events written as `event: T`, `event:T`, with CRLF, without
            /// their type, two to a chunk, with the type in the chunk before, after a comment,
            /// with their data on two lines, or after a chunk that leaves a data line or part of
            /// a line waiting.
            #[test]
            fn whole_typed_events_read_as_the_parser_reads_them(
                responses: bool,
                texts in proptest::collection::vec(any::<String>(), 1..8),
                not_utf8 in proptest::option::of(0usize..8),
                styles in proptest::collection::vec(0u8..10, 16),
                edited: usize,
                kind: u8,
                at: usize,
            ) {
                let (api, stream, delta_type, key) = if responses {
                    (Api::Responses, RESPONSES_FIXTURE, "response.output_text.delta", r#""delta":""#)
                } else {
                    (Api::AnthropicMessages, ANTHROPIC_FIXTURE, "content_block_delta", r#""text":""#)
                };
                let recorded = recorded_events(stream);
                let first_delta = recorded.iter().position(|(t, _)| t == delta_type).unwrap();
                let deltas = recorded.iter().filter(|(t, _)| t == delta_type).count();
                let template = recorded[first_delta].1.clone();
                let mut events: Vec<(String, Vec<u8>)> =
                    recorded[..first_delta].iter().map(|(t, d)| (t.clone(), d.clone().into_bytes())).collect();
                for (i, text) in texts.iter().enumerate() {
                    let escaped = serde_json::to_string(text).unwrap();
                    let start = template.find(key).unwrap() + key.len();
                    let len = scan::string_body(&template.as_bytes()[start..]).unwrap();
                    let mut data = template.as_bytes()[..start].to_vec();
                    data.extend_from_slice(&escaped.as_bytes()[1..escaped.len() - 1]);
                    if not_utf8 == Some(i) {
                        data.push(0xff);
                    }
                    data.extend_from_slice(&template.as_bytes()[start + len..]);
                    events.push((delta_type.to_owned(), data));
                }
                events.extend(recorded[first_delta + deltas..].iter().map(|(t, d)| (t.clone(), d.clone().into_bytes())));
                let edited = edited % events.len();
                if let Ok(text) = std::str::from_utf8(&events[edited].1) {
                    events[edited].1 = edit(text, kind, at, &[]).into_bytes();
                }
                let mut chunks: Vec<Vec<u8>> = Vec::new();
                for (i, (t, d)) in events.iter().enumerate() {
                    let d = d.as_slice();
                    // The spelling the shortcut takes, after `before`.
                    let typed = |before: &str| [format!("{before}event: {t}\ndata: ").as_bytes(), d, b"\n\n"].concat();
                    let event: Vec<u8> = match styles[i % styles.len()] {
                        1 => [format!("event:{t}\ndata: ").as_bytes(), d, b"\n\n"].concat(),
                        2 => [format!("event: {t}\r\ndata: ").as_bytes(), d, b"\r\n\r\n"].concat(),
                        3 => [b"data: ", d, b"\n\n"].concat(),
                        4 if !chunks.is_empty() => {
                            chunks.last_mut().unwrap().extend_from_slice(&typed(""));
                            continue;
                        }
                        5 => {
                            chunks.push(format!("event: {t}\n").into_bytes());
                            [b"data: ", d, b"\n\n"].concat()
                        }
                        6 => typed(": keep-alive\n"),
                        7 => {
                            let half = d.len() / 2;
                            [format!("event: {t}\ndata: ").as_bytes(), &d[..half], b"\ndata: ", &d[half..], b"\n\n"].concat()
                        }
                        // A data line, or a line cut short, waits in the parser.
                        8 => {
                            chunks.push(b"data: {}\n".to_vec());
                            typed("")
                        }
                        9 => {
                            chunks.push(b": cut".to_vec());
                            typed("")
                        }
                        _ => typed(""),
                    };
                    chunks.push(event);
                }
                let bytes: Vec<u8> = chunks.concat();
                let whole = read_api(api, chunks);
                let by_byte = read_api(api, bytes.iter().map(|b| vec![*b]));
                prop_assert_eq!(whole, by_byte);
            }

            /// Whatever the shape takes for a plain delta, the full parse reads as a delta that
            /// leaves the facts as the known delta left them, or the whole-chunk check
            /// ([`is_plain_delta`], which the shape's tail check narrows) takes for one too.
            #[test]
            fn what_the_shape_takes_for_a_plain_delta_is_one(content: String, kind: u8, at: usize) {
                let data = fixture_data();
                let mut shape = DeltaShape::default();
                shape.learn(data[2]);
                let (mut known, mut usage) = (ResponseFacts::default(), None);
                prop_assert!(matches!(apply_chunk(data[2], &mut known, &mut usage), Ok(ChunkKind::Delta)));
                let escaped = serde_json::to_string(&content).unwrap();
                let chunk = with_text(data[2], &escaped[1..escaped.len() - 1]);
                let chunk = edit(std::str::from_utf8(&chunk).unwrap(), kind, at, &REPLACEMENTS);
                if shape.matches(chunk.as_bytes()) {
                    let mut facts = known.clone();
                    let parsed = apply_chunk(chunk.as_bytes(), &mut facts, &mut usage);
                    prop_assert!(
                        (matches!(parsed, Ok(ChunkKind::Delta)) && facts == known && usage.is_none())
                            || is_plain_delta(chunk.as_bytes()),
                        "{}: {:?}", chunk, parsed
                    );
                }
            }
        }
    }
}
