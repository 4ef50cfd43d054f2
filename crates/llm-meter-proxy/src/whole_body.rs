//! Reading a whole body: a request the proxy must parse before sending it on, an answer it
//! must observe before relaying it.
//!
//! Unlike `http_body_util`'s `collect`, reading stops at the frame after which the body says it
//! is at its end, instead of polling once more for a `None`: for a body of known length that
//! last poll waits for the sending side to close (for an answer, hyper's client connection task
//! has to run first). A failed read and a body over the limit are told apart.

use std::convert::Infallible;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// Why a whole body was not read: longer than allowed (`L`, the limit), or failed mid-way.
#[derive(Debug)]
pub(crate) enum ReadError<E, L = usize> {
    /// The body is longer than the limit (in bytes).
    TooLarge(L),
    /// The body failed mid-way.
    Failed(E),
}

/// The whole of `body`, at most `limit` bytes.
pub(crate) async fn read_within<B>(body: B, limit: usize) -> Result<Bytes, ReadError<B::Error>>
where
    B: Body<Data = Bytes> + Unpin,
{
    read_frames(body, |len| if len > limit { Err(limit) } else { Ok(()) }).await
}

/// The whole of `body`, however long.
pub(crate) async fn read_whole<B>(body: B) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    read_frames(body, |_| Ok::<(), Infallible>(()))
        .await
        .map_err(|e| match e {
            ReadError::Failed(e) => e,
            ReadError::TooLarge(never) => match never {},
        })
}

/// Reads frames until the body is at its end, `admit` checking the length so far after each
/// one. A body that came in one frame is returned without a copy; trailers are ignored.
async fn read_frames<B, L>(mut body: B, admit: impl Fn(usize) -> Result<(), L>) -> Result<Bytes, ReadError<B::Error, L>>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0usize;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else { break };
        let Ok(data) = frame.map_err(ReadError::Failed)?.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        admit(len).map_err(ReadError::TooLarge)?;
        if let Some(all) = &mut joined {
            all.extend_from_slice(&data);
        } else if let Some(head) = first.take() {
            let rest = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let mut all = BytesMut::with_capacity(len.saturating_add(rest));
            all.extend_from_slice(&head);
            all.extend_from_slice(&data);
            joined = Some(all);
        } else {
            first = Some(data);
        }
    }
    Ok(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};

    /// Frames given in advance; `None` ends the body. Counts its polls, and fails a poll after
    /// the end when it says it is at its end (the poll `read_whole` must not make).
    struct Frames {
        frames: Vec<Result<Frame<Bytes>, &'static str>>,
        polls: usize,
        says_end: bool,
    }

    impl Frames {
        fn new(chunks: &[&'static [u8]], says_end: bool) -> Self {
            let frames = chunks
                .iter()
                .rev()
                .map(|c| Ok(Frame::data(Bytes::from_static(c))))
                .collect();
            Frames {
                frames,
                polls: 0,
                says_end,
            }
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.polls += 1;
            if self.frames.is_empty() && self.says_end {
                return Poll::Ready(Some(Err("polled after its end")));
            }
            Poll::Ready(self.frames.pop())
        }

        fn is_end_stream(&self) -> bool {
            self.says_end && self.frames.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }

    fn read(body: &mut Frames, limit: usize) -> Result<Bytes, ReadError<&'static str>> {
        futures_util::FutureExt::now_or_never(read_within(body, limit)).expect("ready")
    }

    #[test]
    fn a_body_at_its_end_is_not_polled_again() {
        let mut body = Frames::new(&[b"{\"a\":", b"1}"], true);
        assert_eq!(read(&mut body, 100).unwrap(), &b"{\"a\":1}"[..]);
        assert_eq!(body.polls, 2);
    }

    #[test]
    fn a_body_of_unknown_end_is_read_until_none() {
        let mut body = Frames::new(&[b"ab", b"", b"cd", b"e"], false);
        assert_eq!(read(&mut body, 5).unwrap(), &b"abcde"[..]);
        assert_eq!(body.polls, 5);
        let mut empty = Frames::new(&[], false);
        assert_eq!(read(&mut empty, 0).unwrap(), Bytes::new());
        let mut unbounded = Frames::new(&[b"ab", b"cd"], true);
        let whole = futures_util::FutureExt::now_or_never(read_whole(&mut unbounded)).expect("ready");
        assert_eq!(whole.unwrap(), &b"abcd"[..]);
    }

    #[test]
    fn one_frame_comes_back_without_a_copy() {
        static ONE: &[u8] = b"{\"whole\":true}";
        let mut body = Frames::new(&[ONE], true);
        let bytes = read(&mut body, ONE.len()).unwrap();
        assert_eq!(bytes.as_ptr(), ONE.as_ptr());
    }

    #[test]
    fn a_body_over_the_limit_is_refused() {
        let mut body = Frames::new(&[b"abc", b"de"], true);
        assert!(matches!(read(&mut body, 4), Err(ReadError::TooLarge(4))));
        let mut one = Frames::new(&[b"abcde"], true);
        assert!(matches!(read(&mut one, 4), Err(ReadError::TooLarge(4))));
    }

    #[test]
    fn a_failing_body_says_so() {
        let mut body = Frames {
            frames: vec![Err("reset"), Ok(Frame::data(Bytes::from_static(b"a")))],
            polls: 0,
            says_end: false,
        };
        assert!(matches!(read(&mut body, 10), Err(ReadError::Failed("reset"))));
    }

    #[test]
    fn trailers_are_skipped() {
        let mut body = Frames {
            frames: vec![
                Ok(Frame::trailers(http::HeaderMap::new())),
                Ok(Frame::data(Bytes::from_static(b"x"))),
            ],
            polls: 0,
            says_end: false,
        };
        assert_eq!(read(&mut body, 10).unwrap(), &b"x"[..]);
    }
}
