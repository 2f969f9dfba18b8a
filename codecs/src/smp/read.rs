//! A one-request read (OP read, empty map body, one answer) as an engine:
//! the image state read ([`super::state`]) and the slot info read
//! ([`super::slot_info`]) are this engine with their own [`Command`].
//!
//! The request goes through [`super::exchange::Exchange`]: a lost request or
//! answer is resent identically, with the same sequence number, so a late
//! answer to the first attempt counts (as mcumgr-toolkit does,
//! `src/connection.rs`); an answer with another sequence number is not
//! ours and is ignored.
//!
//! # Call order
//! Like [`super::upload::Upload`]: [`Read::new`] queues the request; then
//! loop on [`Read::poll_transmit`], [`Read::poll_event`],
//! [`Read::handle_message`] / [`Read::handle_timeout`] at
//! [`Read::poll_timeout`], until [`ReadEvent::Answer`] or
//! [`ReadEvent::Failed`].

use super::exchange::{Exchange, Timeout};
use super::header::{group, Op, SmpVersion};
use super::message::{self, SmpErr};
use super::BodyError;
use crate::engine::Engine;
use crate::time::Instant;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

/// Read settings; [`Default`] gives the values documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConfig {
    /// Header version (v2).
    pub version: SmpVersion,
    /// Wait per attempt: 2.5 s, smpclient's `timeout_s`.
    pub timeout: Duration,
    /// Extra attempts after a timeout: 4.
    pub retries: u32,
    /// Sequence number of the request.
    pub first_seq: u8,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            version: SmpVersion::V2,
            timeout: Duration::from_millis(2500),
            retries: 4,
            first_seq: 0,
        }
    }
}

/// One read command of the image group: its id, its name in errors, and
/// the decoder of its answer.
pub trait Command {
    /// What a good answer carries.
    type Answer: std::fmt::Debug;
    /// The command id in group 1 (image).
    const ID: u8;
    /// Its name in errors: `"image state"`, `"slot info"`.
    const NAME: &'static str;
    /// Decodes an answer body: the device's error, or the answer.
    fn decode(body: &[u8]) -> Result<Result<Self::Answer, SmpErr>, BodyError>;
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No answer after every attempt.
    #[error("no answer to the {read} read after {attempts} attempts")]
    Timeout {
        /// The read ([`Command::NAME`]).
        read: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// The device answered with an error (ENOTSUP: not compiled in).
    #[error("device error: {0}")]
    Device(SmpErr),
    /// The answer does not decode.
    #[error("malformed {read} answer: {error}")]
    Malformed {
        /// The read ([`Command::NAME`]).
        read: &'static str,
        /// What is wrong with it.
        error: BodyError,
    },
}

/// What a read reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent<T> {
    /// The decoded answer.
    Answer(T),
    /// The read failed.
    Failed(ReadError),
}

/// One read of command `C`; see the module doc for the call order.
#[derive(Debug)]
pub struct Read<C: Command> {
    exchange: Exchange,
    finished: bool,
    events: VecDeque<ReadEvent<C::Answer>>,
    command: PhantomData<C>,
}

impl<C: Command> Read<C> {
    /// Queues the read, sent at `now`.
    pub fn new(config: ReadConfig, now: Instant) -> Self {
        let mut exchange = Exchange::new(config.version, config.first_seq);
        exchange.request(
            Op::Read,
            group::IMAGE,
            C::ID,
            &message::empty_body(),
            config.timeout,
            config.retries,
            now,
        );
        Read {
            exchange,
            finished: false,
            events: VecDeque::new(),
            command: PhantomData,
        }
    }

    /// Whether the read ended (answered or failed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Requests sent again after a timeout so far.
    pub fn retries(&self) -> u64 {
        self.exchange.retransmits()
    }

    /// A message from the device; anything but the answer to the request
    /// (another command, another sequence number, a second answer) is
    /// ignored.
    pub fn handle_message(&mut self, msg: &[u8], _now: Instant) {
        let Some(body) = self.exchange.handle_message(msg) else {
            return;
        };
        let ev = match C::decode(body) {
            Ok(Ok(answer)) => ReadEvent::Answer(answer),
            Ok(Err(e)) => ReadEvent::Failed(ReadError::Device(e)),
            Err(error) => ReadEvent::Failed(ReadError::Malformed {
                read: C::NAME,
                error,
            }),
        };
        self.finish(ev);
    }

    /// Call when `now` reaches [`Read::poll_timeout`]; earlier does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Timeout::Exhausted { attempts } = self.exchange.handle_timeout(now) {
            self.finish(ReadEvent::Failed(ReadError::Timeout {
                read: C::NAME,
                attempts,
            }));
        }
    }

    /// The next message to write to the device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.exchange.poll_transmit()
    }

    /// When to call [`Read::handle_timeout`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchange.poll_timeout()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ReadEvent<C::Answer>> {
        self.events.pop_front()
    }

    fn finish(&mut self, ev: ReadEvent<C::Answer>) {
        self.exchange.cancel();
        self.finished = true;
        self.events.push_back(ev);
    }
}

impl<C: Command> Engine for Read<C> {
    type Event = ReadEvent<C::Answer>;

    fn handle_input(&mut self, msg: &[u8], now: Instant) {
        self.handle_message(msg, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Read::handle_timeout(self, now);
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        Read::poll_event(self)
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        Read::poll_transmit(self)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Read::poll_timeout(self)
    }

    fn is_finished(&self) -> bool {
        Read::is_finished(self)
    }

    fn retries(&self) -> u64 {
        Read::retries(self)
    }

    fn next_seq(&self) -> Option<u8> {
        Some(self.exchange.next_seq())
    }
}
