//! The download plan's answers to response heads, as a table: the state
//! before (bytes here, size, validator), the head, and what the plan
//! decides (empty the file, size learnt, what follows, or a failure) with
//! the state after. Each case says why it is there (RFC 9110 sections, or
//! the server behaviour it stands for).

use std::time::Duration;

use otabridge_codecs::download::{
    Config, End, Head, Interruption, Journaled, Plan, PlanError, Start, Then, MAX_REDIRECTS,
};
use otabridge_codecs::time::Instant;

/// What the plan is expected to say.
#[derive(Debug)]
enum Want {
    /// `(restart, learnt_size, then)`, then `(received, size, validator)`.
    Act(
        bool,
        Option<u64>,
        Then,
        (u64, Option<u64>, Option<&'static str>),
    ),
    Fail(PlanError),
}

struct Case {
    why: &'static str,
    /// Bytes here, the size, the validator of those bytes.
    have: (u64, Option<u64>, Option<&'static str>),
    head: Head<'static>,
    want: Want,
}

fn head(status: u16) -> Head<'static> {
    Head {
        status,
        ..Head::default()
    }
}

fn retry(why: Interruption) -> Then {
    Then::End(End::Interrupted(why))
}

fn cases() -> Vec<Case> {
    use Want::*;
    let etag = Some("\"e1\"");
    vec![
        Case {
            why: "a fresh download: 200 with the announced length",
            have: (0, Some(1000), None),
            head: Head { content_length: Some("1000"), etag, ..head(200) },
            want: Act(false, None, Then::ReadBody, (0, Some(1000), etag)),
        },
        Case {
            why: "a fresh download of unknown size learns it from Content-Length",
            have: (0, None, None),
            head: Head { content_length: Some("1000"), ..head(200) },
            want: Act(false, Some(1000), Then::ReadBody, (0, Some(1000), None)),
        },
        Case {
            why: "RFC 9110 §13.1.5: a weak ETag is no validator; Last-Modified is",
            have: (0, Some(10), None),
            head: Head { etag: Some("W/\"w\""), last_modified: Some("Tue, 15 Nov 1994 12:45:26 GMT"), ..head(200) },
            want: Act(false, None, Then::ReadBody, (0, Some(10), Some("Tue, 15 Nov 1994 12:45:26 GMT"))),
        },
        Case {
            why: "a 200 to a range request: the server ignored Range (or If-Range failed); start over",
            have: (400, Some(1000), etag),
            head: Head { content_length: Some("1000"), etag: Some("\"e2\""), ..head(200) },
            want: Act(true, None, Then::ReadBody, (0, Some(1000), Some("\"e2\""))),
        },
        Case {
            why: "a Content-Length that disagrees with file_size is refused",
            have: (0, Some(1000), None),
            head: Head { content_length: Some("999"), ..head(200) },
            want: Fail(PlanError::LengthMismatch { expected: 1000, detail: "Content-Length says 999 bytes".into() }),
        },
        Case {
            why: "an unknown size above the configured limit is refused before any byte",
            have: (0, None, None),
            head: Head { content_length: Some("1000001"), ..head(200) },
            want: Fail(PlanError::TooLarge { size: 1_000_001, max: 1_000_000 }),
        },
        Case {
            why: "RFC 9110 §14.4: the resume, where it was asked, keeps the validator",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 400-999/1000"), content_length: Some("600"), etag, ..head(206) },
            want: Act(false, None, Then::ReadBody, (400, Some(1000), etag)),
        },
        Case {
            why: "a 206 whose complete length is * says nothing of the size",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 400-999/*"), ..head(206) },
            want: Act(false, None, Then::ReadBody, (400, Some(1000), etag)),
        },
        Case {
            why: "a 206 teaches an unknown size",
            have: (400, None, etag),
            head: Head { content_range: Some("bytes 400-999/1000"), ..head(206) },
            want: Act(false, Some(1000), Then::ReadBody, (400, Some(1000), etag)),
        },
        Case {
            why: "a 206 that does not start where asked cannot be placed: start over, drop the validator",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 0-999/1000"), etag, ..head(206) },
            want: Act(true, None, retry(Interruption::RangeStart(0)), (0, Some(1000), None)),
        },
        Case {
            why: "a 206 without Content-Range (or an unreadable one) is retried",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes */1000"), ..head(206) },
            want: Act(false, None, retry(Interruption::NoContentRange), (400, Some(1000), etag)),
        },
        Case {
            why: "a 206 whose total disagrees with file_size is refused",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 400-1099/1100"), ..head(206) },
            want: Fail(PlanError::LengthMismatch { expected: 1000, detail: "Content-Range total says 1100 bytes".into() }),
        },
        Case {
            why: "a 206 that ends beyond file_size is refused",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 400-1000/*"), ..head(206) },
            want: Fail(PlanError::LengthMismatch { expected: 1000, detail: "Content-Range ends at byte 1000".into() }),
        },
        Case {
            why: "a 206 whose Content-Length disagrees with its own Content-Range is refused",
            have: (400, Some(1000), etag),
            head: Head { content_range: Some("bytes 400-999/1000"), content_length: Some("500"), ..head(206) },
            want: Fail(PlanError::LengthMismatch { expected: 1000, detail: "Content-Length 500 disagrees with Content-Range 400-999".into() }),
        },
        Case {
            why: "RFC 9110 §15.5.17: 416 with every byte here confirms a complete file",
            have: (1000, Some(1000), etag),
            head: head(416),
            want: Act(false, None, Then::End(End::Complete), (1000, Some(1000), etag)),
        },
        Case {
            why: "416 while bytes are missing: the part is not this content; start over",
            have: (400, Some(1000), etag),
            head: head(416),
            want: Act(true, None, retry(Interruption::RangeNotSatisfiable), (0, Some(1000), None)),
        },
        Case {
            why: "docs/protocols/iotda.md §4.7: 401 is a refused token (counted, retried)",
            have: (0, Some(1000), None),
            head: head(401),
            want: Act(false, None, retry(Interruption::TokenRefused(401)), (0, Some(1000), None)),
        },
        Case {
            why: "403: an expired token (counted, retried)",
            have: (400, Some(1000), etag),
            head: head(403),
            want: Act(false, None, retry(Interruption::TokenRefused(403)), (400, Some(1000), etag)),
        },
        Case {
            why: "5xx is transient",
            have: (400, Some(1000), etag),
            head: head(503),
            want: Act(false, None, retry(Interruption::Status(503)), (400, Some(1000), etag)),
        },
        Case {
            why: "408 and 429 are transient",
            have: (0, Some(1000), None),
            head: head(429),
            want: Act(false, None, retry(Interruption::Status(429)), (0, Some(1000), None)),
        },
        Case {
            why: "404 (and any other status) will not get better",
            have: (0, Some(1000), None),
            head: head(404),
            want: Fail(PlanError::HttpStatus { status: 404 }),
        },
        Case {
            why: "204 has no package in it",
            have: (0, Some(1000), None),
            head: head(204),
            want: Fail(PlanError::HttpStatus { status: 204 }),
        },
        Case {
            why: "RFC 9110 §15.4: 301/302/303/307/308 are followed",
            have: (400, Some(1000), etag),
            head: Head { location: Some("https://cdn.example/p?sig=1"), ..head(307) },
            want: Act(false, None, Then::Redirect("https://cdn.example/p?sig=1".into()), (400, Some(1000), etag)),
        },
        Case {
            why: "a redirect without Location cannot be followed",
            have: (0, Some(1000), None),
            head: head(302),
            want: Fail(PlanError::Redirect("HTTP 302 without a Location".into())),
        },
        Case {
            why: "304 is not a redirect to follow",
            have: (0, Some(1000), None),
            head: Head { location: Some("/x"), ..head(304) },
            want: Fail(PlanError::HttpStatus { status: 304 }),
        },
    ]
}

fn config() -> Config {
    Config {
        checkpoint_bytes: 4 << 20,
        checkpoint_interval: Duration::from_secs(2),
        auth_attempts: 3,
        max_redirects: MAX_REDIRECTS,
        max_bytes: 1_000_000,
    }
}

/// A plan holding `have` (as after a restart of the gateway).
fn plan(have: (u64, Option<u64>, Option<&str>)) -> Plan {
    let (len, size, validator) = have;
    let row = Journaled {
        size,
        durable_len: len,
        validator,
    };
    let start = Start::resume(size, (len > 0).then_some(row), len);
    assert_eq!(start.offset, len);
    Plan::new(config(), start, Instant::ZERO)
}

#[test]
fn response_heads_table() {
    let cases = cases();
    for c in &cases {
        let mut p = plan(c.have);
        let req = p.start_attempt().expect("an attempt");
        // The request for the state before: Range and If-Range only when
        // bytes are here.
        let expect_range = (c.have.0 > 0).then(|| format!("bytes={}-", c.have.0));
        assert_eq!(req.range, expect_range, "{}", c.why);
        assert_eq!(
            req.if_range.as_deref(),
            c.have.0.gt(&0).then_some(c.have.2).flatten(),
            "{}",
            c.why
        );
        let got = p.handle_head(Instant::from_millis(5), &c.head);
        match (&c.want, got) {
            (Want::Act(restart, learnt, then, after), Ok(a)) => {
                assert_eq!(
                    (a.restart, a.learnt_size, &a.then),
                    (*restart, *learnt, then),
                    "{}",
                    c.why
                );
                assert_eq!((p.received(), p.size(), p.validator()), *after, "{}", c.why);
                if *restart {
                    assert_eq!(p.durable(), 0, "{}", c.why);
                }
            }
            (Want::Fail(e), Err(got)) => assert_eq!(&got, e, "{}", c.why),
            (want, got) => panic!("{}: want {want:?}, got {got:?}", c.why),
        }
    }
    assert!(cases.len() >= 25);
}

/// A body's chunks against the size: bytes beyond it are refused, a short
/// body is an interruption at the byte reached.
#[test]
fn bodies_table() {
    /// The size, the chunks, how the body ends.
    type BodyCase = (Option<u64>, &'static [u64], Result<End, PlanError>);
    let cases: &[BodyCase] = &[
        (Some(10), &[4, 6], Ok(End::Complete)),
        (
            Some(10),
            &[4, 5],
            Ok(End::Interrupted(Interruption::ShortBody {
                at: 9,
                size: 10,
            })),
        ),
        (
            Some(10),
            &[4, 7],
            Err(PlanError::LengthMismatch {
                expected: 10,
                detail: "the server sent more than 10 bytes".into(),
            }),
        ),
        (None, &[4, 7], Ok(End::Complete)),
        (
            None,
            &[999_999, 2],
            Err(PlanError::TooLarge {
                size: 1_000_001,
                max: 1_000_000,
            }),
        ),
        (Some(0), &[], Ok(End::Complete)),
    ];
    for (size, chunks, want) in cases {
        let mut p = plan((0, *size, None));
        p.start_attempt().unwrap();
        let a = p.handle_head(Instant::ZERO, &head(200)).unwrap();
        assert_eq!(a.then, Then::ReadBody);
        let got = chunks
            .iter()
            .try_for_each(|n| p.handle_data(Instant::ZERO, *n))
            .map(|()| p.handle_body_end());
        assert_eq!(&got, want, "{size:?} {chunks:?}");
        if let Ok(End::Complete) = got {
            assert_eq!(p.size(), Some(chunks.iter().sum()));
        }
    }
}

/// A whole download as the driver sees it: cut twice, resumed with Range
/// and the validator, checkpoints in between; the plan's numbers never
/// exceed what was made durable.
#[test]
fn a_download_cut_twice_resumes_where_each_cut_was() {
    let mut p = plan((0, Some(10_000_000), None));
    let mut t = 0;
    let mut now = || {
        t += 1;
        Instant::from_millis(t)
    };
    let mut durable_reports = 0;
    let cuts = [3_000_001u64, 7_654_321];
    let mut served = 0u64;
    for attempt in 0..3 {
        let req = p.start_attempt().unwrap();
        if attempt == 0 {
            assert_eq!(req.range, None);
            let a = p
                .handle_head(
                    now(),
                    &Head {
                        content_length: Some("10000000"),
                        etag: Some("\"x\""),
                        ..head(200)
                    },
                )
                .unwrap();
            assert_eq!(a.then, Then::ReadBody);
        } else {
            assert_eq!(req.range, Some(format!("bytes={served}-")));
            assert_eq!(req.if_range.as_deref(), Some("\"x\""));
            let cr = format!("bytes {served}-9999999/10000000");
            let cr: &'static str = Box::leak(cr.into_boxed_str());
            let a = p
                .handle_head(
                    now(),
                    &Head {
                        content_range: Some(cr),
                        etag: Some("\"x\""),
                        ..head(206)
                    },
                )
                .unwrap();
            assert_eq!(a.then, Then::ReadBody);
        }
        let stop = cuts.get(attempt).copied().unwrap_or(10_000_000);
        while served < stop {
            let n = (stop - served).min(65_536);
            p.handle_data(now(), n).unwrap();
            served += n;
            if let Some(cp) = p.poll_checkpoint(now()) {
                assert!(cp.len <= served && cp.len > p.durable());
                p.handle_durable(cp.epoch, cp.len);
                durable_reports += 1;
            }
        }
        let end = if stop < 10_000_000 {
            End::Interrupted(Interruption::ConnectionLost {
                at: served,
                detail: "reset".into(),
            })
        } else {
            p.handle_body_end()
        };
        if let Some(cp) = p.poll_final_checkpoint(now()) {
            p.handle_durable(cp.epoch, cp.len);
        }
        assert_eq!(p.durable(), served);
        match p.handle_end(end).unwrap() {
            otabridge_codecs::download::Next::Complete => {
                assert_eq!(attempt, 2);
                break;
            }
            otabridge_codecs::download::Next::Retry { progressed } => assert!(progressed),
        }
    }
    assert_eq!(p.received(), 10_000_000);
    assert_eq!(p.attempts(), 3);
    // Only the second attempt carries 4 MiB (3 000 001 to 7 654 321); the
    // others end with a final checkpoint, and 2 s never pass.
    assert_eq!(durable_reports, 1);
}
