//! One outstanding request at a time: sequence numbers, response matching,
//! timeouts and retransmission, shared by the engines.
//!
//! A response matches when its OP is the request's OP + 1 and its group, id
//! and sequence number equal the request's (smp_protocol.rst: "the response
//! echoes the sequence number"). A retry resends the identical message with
//! the same sequence number, as mcumgr-toolkit does (`src/connection.rs`):
//! Zephyr echoes the number, so a late answer to the first attempt is as
//! good as the answer to the retry; a stale answer for an older request
//! carries an older number and is ignored.

use super::header::{build_message, split_message, Op, SmpVersion};
use crate::time::Instant;
use std::time::Duration;

#[derive(Debug)]
struct Pending {
    op: Op,
    group: u16,
    id: u8,
    seq: u8,
    msg: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    attempts: u32,
    max_attempts: u32,
}

/// What a timeout did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// Nothing was due.
    NotDue,
    /// The request was sent again.
    Retried,
    /// The last attempt timed out; the request is abandoned.
    Exhausted {
        /// Attempts made.
        attempts: u32,
    },
}

#[derive(Debug)]
pub(crate) struct Exchange {
    version: SmpVersion,
    next_seq: u8,
    pending: Option<Pending>,
    transmit: Option<Vec<u8>>,
    retransmits: u64,
}

impl Exchange {
    pub(crate) fn new(version: SmpVersion, first_seq: u8) -> Self {
        Exchange {
            version,
            next_seq: first_seq,
            pending: None,
            transmit: None,
            retransmits: 0,
        }
    }

    /// Sends a request; `retries` more attempts follow on timeouts.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn request(
        &mut self,
        op: Op,
        group: u16,
        id: u8,
        body: &[u8],
        timeout: Duration,
        retries: u32,
        now: Instant,
    ) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let msg = build_message(op, self.version, group, seq, id, body);
        self.transmit = Some(msg.clone());
        self.pending = Some(Pending {
            op,
            group,
            id,
            seq,
            msg,
            deadline: now + timeout,
            timeout,
            attempts: 1,
            max_attempts: retries.saturating_add(1),
        });
    }

    /// The body of `msg` if it answers the outstanding request (which is
    /// then complete); `None` for anything else, which callers ignore.
    pub(crate) fn handle_message<'a>(&mut self, msg: &'a [u8]) -> Option<&'a [u8]> {
        let (h, body) = split_message(msg).ok()?;
        let p = self.pending.as_ref()?;
        if Some(h.op) != p.op.response() || h.group != p.group || h.id != p.id || h.seq != p.seq {
            return None;
        }
        self.pending = None;
        Some(body)
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Timeout {
        let Some(p) = self.pending.as_mut() else {
            return Timeout::NotDue;
        };
        if now < p.deadline {
            return Timeout::NotDue;
        }
        if p.attempts >= p.max_attempts {
            let attempts = p.attempts;
            self.pending = None;
            return Timeout::Exhausted { attempts };
        }
        p.attempts += 1;
        p.deadline = now + p.timeout;
        self.retransmits += 1;
        self.transmit = Some(p.msg.clone());
        Timeout::Retried
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.take()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }

    /// Takes the next sequence number, for a request the caller tracks itself.
    pub(crate) fn take_seq(&mut self) -> u8 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// The sequence number the next request will carry.
    pub(crate) fn next_seq(&self) -> u8 {
        self.next_seq
    }

    /// The header version requests carry.
    pub(crate) fn version(&self) -> SmpVersion {
        self.version
    }

    /// Requests sent again after a timeout so far.
    pub(crate) fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// Abandons the outstanding request.
    pub(crate) fn cancel(&mut self) {
        self.pending = None;
        self.transmit = None;
    }
}
