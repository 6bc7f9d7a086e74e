use proptest::prelude::*;

use super::*;

#[test]
fn push_respects_the_limit() {
    let mut b = TraceBuffer::new(10);
    assert_eq!(b.push(b"hello"), 5);
    assert_eq!(b.push(b"world, again"), 5);
    assert_eq!(b.room(), 0);
    assert_eq!(b.push(b"x"), 0);
    assert_eq!((b.pending(), b.appended()), (10, 10));
}

#[test]
fn the_output_checksum_is_the_crc32_of_every_byte_appended_in_any_pieces() {
    let mut b = TraceBuffer::new(4);
    assert_eq!(
        b.output(),
        TraceOutput {
            checksum: "crc32:00000000".into(),
            bytesize: 0
        }
    );
    let mut rest: &[u8] = b"hello world";
    while !rest.is_empty() {
        let n = b.push(rest);
        rest = &rest[n..];
        let c = b.chunk(4).unwrap();
        b.acknowledge(c.start, c.bytes.len());
    }
    // CRC-32/IEEE("hello world"), as `crc32` of zlib and Go's hash/crc32 give it.
    assert_eq!(
        b.output(),
        TraceOutput {
            checksum: "crc32:0d4a1185".into(),
            bytesize: 11
        }
    );
}

#[test]
fn chunks_start_at_the_acknowledged_offset() {
    let mut b = TraceBuffer::new(100);
    b.push(b"0123456789");
    let c = b.chunk(4).unwrap();
    assert_eq!((c.start, c.bytes.as_slice()), (0, &b"0123"[..]));
    b.acknowledge(c.start, c.bytes.len());
    let c = b.chunk(100).unwrap();
    assert_eq!((c.start, c.bytes.as_slice()), (4, &b"456789"[..]));
    b.acknowledge(c.start, c.bytes.len());
    assert_eq!(b.chunk(100), None);
    assert_eq!(b.acknowledged(), 10);
}

#[test]
fn stale_acknowledgements_are_harmless() {
    let mut b = TraceBuffer::new(100);
    b.push(b"0123456789");
    b.acknowledge(0, 6);
    b.acknowledge(0, 4);
    assert_eq!(b.acknowledged(), 6);
    b.acknowledge(2, 6);
    assert_eq!(b.acknowledged(), 8);
    assert_eq!(b.chunk(10).unwrap().bytes, b"89");
}

#[test]
fn resync_after_a_lost_response_skips_what_gitlab_has() {
    let mut b = TraceBuffer::new(100);
    b.push(b"0123456789");
    assert_eq!(b.resync(0), Resync::InSync);
    assert_eq!(b.resync(7), Resync::Skipped(7));
    assert_eq!(
        b.chunk(10).unwrap(),
        Chunk {
            start: 7,
            bytes: b"789".to_vec()
        }
    );
}

#[test]
fn resync_when_gitlab_is_ahead_or_behind() {
    let mut b = TraceBuffer::new(100);
    b.push(b"0123456789");
    b.acknowledge(0, 5);
    assert_eq!(b.resync(3), Resync::GitlabLost(2));
    assert_eq!(
        b.chunk(10).unwrap(),
        Chunk {
            start: 3,
            bytes: b"56789".to_vec()
        }
    );
    assert_eq!(b.resync(20), Resync::GitlabAhead(12));
    assert_eq!(b.chunk(10), None);
    assert_eq!(b.acknowledged(), 20);
}

#[test]
fn debug_shows_counts_not_bytes() {
    let mut b = TraceBuffer::new(100);
    b.push(b"visible-secret-ish-log");
    let c = b.chunk(100).unwrap();
    assert!(!format!("{b:?}{c:?}").contains("secret"));
}

/// What a GitLab trace endpoint does with a PATCH, in the model below.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Stores and answers 202.
    Accept,
    /// Fails before storing (5xx, timeout before the request arrived).
    Fail,
    /// Stores, but the answer never arrives (timeout, connection reset, proxy 502).
    AcceptLost,
    /// Answers 416 whatever the range.
    Force416,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Accept),
        1 => Just(Answer::Fail),
        1 => Just(Answer::AcceptLost),
        1 => Just(Answer::Force416),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<u8>),
    Send(usize, Answer),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::Push),
        (1usize..30, answer()).prop_map(|(max, a)| Op::Send(max, a)),
    ]
}

/// GitLab's rule (Rails' append service): a body starting at the stored size is appended,
/// anything else is refused with 416 and the stored size.
fn patch(server: &mut Vec<u8>, chunk: &Chunk, answer: Answer) -> Option<Result<(), u64>> {
    let size = server.len() as u64;
    match answer {
        Answer::Fail => None,
        Answer::Force416 => Some(Err(size)),
        Answer::Accept | Answer::AcceptLost if chunk.start != size => Some(Err(size)),
        Answer::Accept => {
            server.extend(&chunk.bytes);
            Some(Ok(()))
        }
        Answer::AcceptLost => {
            server.extend(&chunk.bytes);
            None
        }
    }
}

proptest! {
    /// Whatever mix of failures, lost responses and forced 416s, GitLab ends up with exactly
    /// the bytes that were accepted, in order, each once.
    #[test]
    fn gitlab_gets_every_byte_exactly_once(
        ops in proptest::collection::vec(op(), 0..200),
        limit in 1usize..64,
    ) {
        let mut buf = TraceBuffer::new(limit);
        let mut server = Vec::new();
        let mut accepted = Vec::new();
        let apply = |buf: &mut TraceBuffer, server: &mut Vec<u8>, max: usize, a: Answer| {
            if let Some(chunk) = buf.chunk(max) {
                match patch(server, &chunk, a) {
                    Some(Ok(())) => buf.acknowledge(chunk.start, chunk.bytes.len()),
                    Some(Err(size)) => {
                        let r = buf.resync(size);
                        assert!(!matches!(r, Resync::GitlabLost(_) | Resync::GitlabAhead(_)));
                    }
                    None => {}
                }
            }
        };
        for op in ops {
            match op {
                Op::Push(bytes) => {
                    let n = buf.push(&bytes);
                    prop_assert!(buf.pending() <= limit);
                    accepted.extend_from_slice(&bytes[..n]);
                }
                Op::Send(max, a) => apply(&mut buf, &mut server, max, a),
            }
            prop_assert!(buf.acknowledged() <= server.len() as u64);
        }
        // Flush: GitLab behaves from now on.
        while buf.pending() > 0 {
            apply(&mut buf, &mut server, 7, Answer::Accept);
        }
        prop_assert_eq!(buf.acknowledged(), accepted.len() as u64);
        prop_assert_eq!(server, accepted);
    }
}
