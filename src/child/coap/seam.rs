//! A lossy link at the CoAP network's socket seam, seeded: loss,
//! duplication, reordering and delay of the datagrams between the network
//! task and its UDP socket, in both directions.
//!
//! smoltcp's habit (docs STYLE, "fault injection at the seam"): the fault
//! injector wraps the device, not the protocol code. The network task hands
//! every datagram it reads and every datagram it would send through
//! [`Seam::pass`] and acts on what [`Seam::due`] gives back; the peer engine
//! never knows. Without faults ([`super::NetworkOptions::faults`] `None`)
//! the task does not build a seam and datagrams go straight through.
//!
//! Every random choice comes from [`LinkFaults::seed`], so a lossy run is
//! repeatable as far as the order of datagrams on the loopback allows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use otabridge_codecs::rng::Rng;
use otabridge_codecs::time::Instant;

/// What the lossy link does to each datagram, in each direction.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkFaults {
    /// Datagrams dropped, in percent.
    pub loss_pct: f64,
    /// Datagrams delivered twice, in percent.
    pub duplicate_pct: f64,
    /// Datagrams held back by a random extra delay of up to
    /// `20 ms + 2 * delay`, so that later ones overtake them, in percent.
    pub reorder_pct: f64,
    /// Delay added to every datagram.
    pub delay: Duration,
    /// Seed of every choice.
    pub seed: u64,
}

impl LinkFaults {
    /// `loss_pct` percent loss each way, nothing else.
    pub fn loss(loss_pct: f64, seed: u64) -> Self {
        LinkFaults {
            loss_pct,
            duplicate_pct: 0.0,
            reorder_pct: 0.0,
            delay: Duration::ZERO,
            seed,
        }
    }
}

/// Which way a datagram crosses the seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// From the socket to the network task.
    In,
    /// From the network task to the socket.
    Out,
}

/// Counters of what the seam did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeamStats {
    /// Datagrams dropped.
    pub dropped: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Datagrams delayed past later ones.
    pub reordered: u64,
}

/// A datagram in the seam: due time, sequence (ties keep their order),
/// direction, peer, bytes.
type Queued = Reverse<(Instant, u64, Dir, SocketAddr, Vec<u8>)>;

/// The lossy link (see the module doc).
#[derive(Debug)]
pub struct Seam {
    faults: LinkFaults,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Queued>,
    stats: SeamStats,
}

impl Seam {
    /// A link with `faults`.
    pub fn new(faults: LinkFaults) -> Self {
        Seam {
            rng: Rng::new(faults.seed),
            faults,
            seq: 0,
            queue: BinaryHeap::new(),
            stats: SeamStats::default(),
        }
    }

    /// A datagram enters the link at `now`: dropped, duplicated, delayed.
    pub fn pass(&mut self, dir: Dir, peer: SocketAddr, bytes: Vec<u8>, now: Instant) {
        let f = &self.faults;
        if self.rng.next_f64() * 100.0 < f.loss_pct {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.next_f64() * 100.0 < f.duplicate_pct {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.faults.delay;
            if self.rng.next_f64() * 100.0 < self.faults.reorder_pct {
                self.stats.reordered += 1;
                let hi = 20 + 2 * self.faults.delay.as_millis() as u64;
                delay += Duration::from_millis(self.rng.range_inclusive(1, hi));
            }
            self.seq += 1;
            self.queue
                .push(Reverse((now + delay, self.seq, dir, peer, bytes.clone())));
        }
    }

    /// The next datagram due at `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Option<(Dir, SocketAddr, Vec<u8>)> {
        if self.queue.peek().is_some_and(|Reverse(e)| e.0 <= now) {
            let Reverse((_, _, dir, peer, bytes)) = self.queue.pop()?;
            return Some((dir, peer, bytes));
        }
        None
    }

    /// The next datagram due at `now` if it goes `dir`; `None` when the
    /// oldest due one goes the other way (it keeps its place).
    pub fn due_going(&mut self, dir: Dir, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self
            .queue
            .peek()
            .is_some_and(|Reverse(e)| e.0 <= now && e.2 == dir)
        {
            let Reverse((_, _, _, peer, bytes)) = self.queue.pop()?;
            return Some((peer, bytes));
        }
        None
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(e)| e.0)
    }

    /// What the seam did so far.
    pub fn stats(&self) -> SeamStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:5683".parse().unwrap()
    }

    fn run(faults: LinkFaults, n: u8) -> (Vec<u8>, SeamStats) {
        let mut s = Seam::new(faults);
        for i in 0..n {
            s.pass(
                Dir::Out,
                peer(),
                vec![i],
                Instant::from_millis(u64::from(i)),
            );
        }
        let mut got = Vec::new();
        let mut t = 0;
        while let Some(d) = s.next_due() {
            t = t.max(d.as_millis());
            while let Some((_, _, b)) = s.due(Instant::from_millis(t)) {
                got.push(b[0]);
            }
        }
        (got, s.stats())
    }

    #[test]
    fn a_clean_link_delivers_everything_in_order_after_the_delay() {
        let mut f = LinkFaults::loss(0.0, 1);
        f.delay = Duration::from_millis(5);
        let mut s = Seam::new(f.clone());
        s.pass(Dir::In, peer(), vec![1], Instant::ZERO);
        assert_eq!(s.due(Instant::from_millis(4)), None);
        assert_eq!(
            s.due(Instant::from_millis(5)),
            Some((Dir::In, peer(), vec![1]))
        );
        let (got, stats) = run(f, 50);
        assert_eq!(got, (0..50).collect::<Vec<u8>>());
        assert_eq!(stats, SeamStats::default());
    }

    #[test]
    fn faults_are_seeded_and_happen() {
        let f = LinkFaults {
            loss_pct: 20.0,
            duplicate_pct: 10.0,
            reorder_pct: 10.0,
            delay: Duration::from_millis(1),
            seed: 7,
        };
        let (a, sa) = run(f.clone(), 200);
        let (b, sb) = run(f.clone(), 200);
        assert_eq!((a.clone(), sa), (b, sb), "same seed, same link");
        assert!(
            sa.dropped > 10 && sa.duplicated > 3 && sa.reordered > 3,
            "{sa:?}"
        );
        assert_eq!(a.len() as u64, 200 - sa.dropped + sa.duplicated);
        assert!(a.windows(2).any(|w| w[0] > w[1]), "some overtaken");
        let (c, _) = run(LinkFaults { seed: 8, ..f }, 200);
        assert_ne!(a, c);
    }
}
